"""Start-up time and memory of the app.

    python -m benchmarks.bench_startup [--save]

Measures, from process start to the first answered /compare request:
  * first start: an empty conversion cache (the GGUF is dequantised into safetensors);
  * warm start: the converted cache exists (the normal case), twice.
The server's peak RSS (VmHWM) is read from /proc after the first request. Printed last;
``--save`` writes benchmarks/results/bench_startup.json and regenerates the table in
docs/performance.md. Run from the repository root (it imports tests/_launch.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from collm_demo import assets
from tests._launch import AppServer, rss_mb


def start_once(env: dict) -> tuple[float, float]:
    with AppServer(env=env) as server:
        client = server.client()
        client.predict("1", "1, 50, 100", api_name="/compare")
        elapsed = time.perf_counter() - server.started
        return elapsed, rss_mb(server.process.pid, "VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/bench_startup.json and regenerate docs/performance.md")
    args = parser.parse_args()
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
    if args.save:
        from benchmarks.report import save

        save("bench_startup", {
            "first_start_s": round(first, 1), "warm_start_s": round(best, 1),
            "warm_starts_s": [round(w[0], 1) for w in warm],
            "warm_peak_rss_gb": round(max(w[1] for w in warm) / 1000, 2),
            "first_start_peak_rss_gb": round(first_rss / 1000, 2)}, sys.argv[1:])


if __name__ == "__main__":
    main()
