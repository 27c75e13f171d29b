"""Fixtures for the app tests (handlers, API, browser) on the real embedded LLM.

Which checkpoints: ``COLLM_TEST_CHECKPOINTS`` if set, else ``COLLM_CHECKPOINTS``, else the
project's ``checkpoints/``. If that folder has no CF model + projector, quick checkpoints are
trained once (``python -m collm_demo train --quick``, a minute or two) into a temporary folder.

The embedding-map layout and the results file: ``COLLM_TEST_LAYOUT`` / ``COLLM_TEST_RESULTS``
if set; else the project's assets when the checkpoints are the project's; else a quick layout
computed once for the chosen checkpoints, and a small results file written here (the UI only
renders it).

Everything expensive is memoised per process, so the three test files share one model load,
one training run and one server however pytest groups them. Test modules wrap these
functions in their own fixtures (``ui_support.state()``, ``ui_support.launch_server()``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "tests" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

_MEMO: dict = {}
_TMP = Path(tempfile.mkdtemp(prefix="collm_ui_tests_"))
atexit.register(shutil.rmtree, _TMP, True)  # registered first, so it runs after the server is closed


def _run(args: list[str], what: str, timeout: int = 1800) -> None:
    started = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"[ui tests] {what}: {time.time() - started:.0f} s", file=sys.stderr)


def _has_projector(folder: Path) -> bool:
    from collm_demo.cf import backend
    from collm_demo.config import DEFAULT_CF

    spec = backend(DEFAULT_CF)
    return (folder / spec.cf_file).exists() and (folder / spec.projector_file).exists()


def checkpoints_dir() -> Path:
    if "ckpt" not in _MEMO:
        from collm_demo.config import CHECKPOINT_DIR

        folder = Path(os.environ.get("COLLM_TEST_CHECKPOINTS") or os.environ.get("COLLM_CHECKPOINTS")
                      or CHECKPOINT_DIR)
        if not _has_projector(folder):
            folder = _TMP / "quick_checkpoints"
            _run([sys.executable, "-m", "collm_demo", "train", "--quick", "--checkpoints", str(folder)],
                 "quick training for the app tests")
        _MEMO["ckpt"] = folder
    return _MEMO["ckpt"]


def layout_path(ckpt: Path) -> Path:
    if "layout" not in _MEMO:
        from collm_demo.config import CHECKPOINT_DIR
        from collm_demo.embedding_map import LAYOUT_PATH

        if os.environ.get("COLLM_TEST_LAYOUT"):
            path = Path(os.environ["COLLM_TEST_LAYOUT"])
        elif ckpt.resolve() == Path(CHECKPOINT_DIR).resolve() and LAYOUT_PATH.exists():
            path = LAYOUT_PATH
        elif (ckpt / "embedding_map_quick.json").exists():
            path = ckpt / "embedding_map_quick.json"
        else:
            path = _TMP / "embedding_map_quick.json"
            code = ("from pathlib import Path; from collm_demo.embedding_map import run; "
                    f"run(Path({str(ckpt)!r}), quick=True, out=Path({str(path)!r}))")
            _run([sys.executable, "-c", code], "quick embedding-map layout for the app tests")
        _MEMO["layout"] = path
    return _MEMO["layout"]


FAKE_RESULTS = {
    "protocol": {"data": "ml-100k", "split": "test", "rows": 48, "subset": True, "llm": "test fixture",
                 "counts": {"rows": 9828, "warm": 1295, "cold": 8533}},
    "methods": {m: {s: {"auc": a + d, "uauc": a - 0.05 + d, "n": n, "uauc_users": 5}
                    for s, d, n in (("all", 0.0, 48), ("warm", 0.05, 8), ("cold", -0.02, 40))}
                for m, a in (("mf", 0.68), ("zero_shot", 0.56), ("text_only", 0.70), ("collm", 0.73))},
}


def results_path(ckpt: Path) -> Path:
    if "results" not in _MEMO:
        from collm_demo.config import CHECKPOINT_DIR, RESULTS_PATH

        if os.environ.get("COLLM_TEST_RESULTS"):
            path = Path(os.environ["COLLM_TEST_RESULTS"])
        elif ckpt.resolve() == Path(CHECKPOINT_DIR).resolve() and RESULTS_PATH.exists():
            path = RESULTS_PATH
        else:
            path = _TMP / "results_fixture.json"
            path.write_text(json.dumps(FAKE_RESULTS))
        _MEMO["results"] = path
    return _MEMO["results"]


def configure() -> dict:
    """Point the app (via its environment variables) at the test checkpoints and assets."""
    if "env" not in _MEMO:
        ckpt = checkpoints_dir()
        env = {"COLLM_CHECKPOINTS": str(ckpt), "COLLM_LAYOUT": str(layout_path(ckpt)),
               "COLLM_RESULTS": str(results_path(ckpt)), "GRADIO_ANALYTICS_ENABLED": "False"}
        os.environ.update(env)
        _MEMO["env"] = env
    return _MEMO["env"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _close_when_idle(demo, timeout: float = 120.0) -> None:
    """Let running events finish first: a worker thread still inside a torch call while the
    interpreter shuts down makes the whole process abort ("terminate called ...", rc 134)."""
    queue = getattr(demo, "_queue", None)
    deadline = time.time() + timeout
    while queue is not None and time.time() < deadline:
        if not any(job is not None for job in getattr(queue, "active_jobs", [])):
            break
        time.sleep(0.2)
    demo.close()


def launch_server() -> str:
    """Launch ``app.demo`` once per process on a free loopback port; returns its URL."""
    if "url" not in _MEMO:
        configure()
        import app
        from collm_demo.ui import launch_kwargs

        port = free_port()
        app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
        atexit.register(_close_when_idle, app.demo)
        _MEMO["url"] = f"http://127.0.0.1:{port}/"
    return _MEMO["url"]


def state():
    """The app's process-wide state, configured for the tests, with the model loaded."""
    configure()
    from collm_demo.ui import get_state

    app_state = get_state()
    app_state.pipeline()  # wait for the model
    return app_state
