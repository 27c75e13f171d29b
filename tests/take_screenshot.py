"""Take the README screenshot: the Recommend tab after the first example is scored.

    .venv/bin/python -m tests.take_screenshot [out.png]      # from the repository root; default assets/screenshot.png

Runs ``python app.py`` (``_launch.AppServer``) as configured like the app itself: the project's
checkpoints and assets unless ``COLLM_CHECKPOINTS`` etc. say otherwise. Not a test (no ``test_``
prefix); rerun it after real training.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests._launch import CHROMIUM, CHROMIUM_ARGS, ROOT, AppServer  # run as a module from the root


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with AppServer() as server, sync_playwright() as p:
        server.client()  # waits until the app listens
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_function("() => (document.querySelector('#summary')?.innerText || '').includes('Top picks')",
                               timeout=180_000)
        page.wait_for_selector("#delta-chart .js-plotly-plot", timeout=120_000)
        page.wait_for_timeout(1500)
        bottom = page.evaluate("() => { const r = document.querySelector('#delta-chart').getBoundingClientRect();"
                               " return r.bottom + window.scrollY + 16; }")
        page.set_viewport_size({"width": 1360, "height": int(bottom)})
        page.wait_for_timeout(1000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1360, "height": int(bottom)})
        # let the chained updates of the other tabs finish before the server stops
        page.wait_for_timeout(500)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0",
                               timeout=120_000)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets" / "screenshot.png")
