"""Start-up time and memory of the app.

    python benchmarks/bench_startup.py

Measures, from process start to the first answered /compare request:
  * first start: an empty conversion cache (the GGUF is dequantised into safetensors);
  * warm start: the converted cache exists (the normal case), twice.
The server's peak RSS (VmHWM) is read from /proc after the first request. Printed last.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._server import AppServer, rss_mb  # noqa: E402
from collm_demo import assets  # noqa: E402


def start_once(env: dict) -> tuple[float, float]:
    with AppServer(env=env) as server:
        client = server.client()
        client.predict("1", "1, 50, 100", api_name="/compare")
        elapsed = time.perf_counter() - server.started
        return elapsed, rss_mb(server.process.pid, "VmHWM")


def main() -> None:
    assets.require("llm"), assets.require("data")
    real_cache = assets.cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        # a cache holding the fetched files but no conversion: the first start converts
        fresh = Path(tmp) / "cache"
        for name in ("smollm2", "ml-100k"):
            shutil.copytree(real_cache / name, fresh / name)
        first, first_rss = start_once({"COLLM_CACHE": str(fresh)})
        print(f"first start (converts the GGUF): {first:.1f} s to the first answer, peak RSS {first_rss:.0f} MB",
              flush=True)
        warm = []
        for _ in range(2):
            elapsed, peak = start_once({"COLLM_CACHE": str(fresh)})
            warm.append((elapsed, peak))
            print(f"warm start: {elapsed:.1f} s to the first answer, peak RSS {peak:.0f} MB", flush=True)
    best = min(w[0] for w in warm)
    print(f"\nFIRST START {first:.1f} s | WARM START {best:.1f} s (goal < 10 s) | "
          f"PEAK RSS {max(w[1] for w in warm):.0f} MB (goal < 2500 MB), threads {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
