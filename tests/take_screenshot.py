"""Take the README screenshot: the Recommend tab after the first example is scored.

    .venv/bin/python -m tests.take_screenshot [out.png]      # from the repository root; default assets/screenshot.png

Uses the same configuration as the app tests (see ui_support: the project's checkpoints and
assets when present). Not a test (no ``test_`` prefix); rerun it after real training.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests import ui_support  # run as a module from the root: the root (app.py, collm_demo) is on sys.path


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    url = ui_support.launch_server()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ui_support.CHROMIUM, args=ui_support.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.goto(url, wait_until="domcontentloaded")
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
        # let the chained updates of the other tabs finish before the server closes
        page.wait_for_timeout(500)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0",
                               timeout=120_000)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ui_support.ROOT / "assets" / "screenshot.png")
