"""Start `python app.py` on loopback for tests, benchmarks and tools; read its memory from /proc.

Tests import it as ``_launch`` (pytest puts tests/ on sys.path); benchmarks and
``tests/take_screenshot.py`` as ``tests._launch`` (run them from the repository root:
``python -m benchmarks.NAME``). Tests never import benchmarks/. Also the headless Chromium that
the browser test and the screenshot tool drive.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmRSS now, or VmHWM = peak) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AppServer:
    def __init__(self, env: dict | None = None, log_path: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        environment = os.environ | {"GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1",
                                    "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"} | (env or {})
        self.log = open(log_path or os.devnull, "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=environment,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def client(self, timeout: float = 300):
        from gradio_client import Client

        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.process.returncode}")
            try:
                return Client(self.url, verbose=False)
            except Exception:  # not listening yet
                if time.time() > deadline:
                    raise
                time.sleep(0.25)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
