"""Load test of /compare: many concurrent gradio_client clients against one app on loopback.

    python -m benchmarks.load_compare [--clients 16] [--requests 10] [--rounds 2] [--save]

Every request must succeed and equal the serial result for the same input (within 1e-5),
whatever else is queued and in whatever order requests arrive; the server's RSS must grow
by less than 150 MB over all requests. The figures are printed last; ``--save`` writes them
to benchmarks/results/load_compare.json and regenerates the table in docs/performance.md.
Run from the repository root (it imports tests/_launch.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests._launch import AppServer, rss_mb

INPUTS = [("1", "1, 50, 100"), ("13", "181, 258, 286, 294"), ("42", "7, 9"), ("7", "50"),
          ("92", "1, 2, 3, 4, 5, 6"), ("200", "172, 173, 174"), ("303", "50, 1"), ("450", "313, 300, 288"),
          ("1", "100, 50, 1"), ("655", "12, 22, 32, 42, 52")]


def max_diff(a: list[dict], b: list[dict]) -> float:
    assert [x["id"] for x in a] == [x["id"] for x in b], "items differ"
    diffs = [abs((x[k] or 0) - (y[k] or 0)) for x, y in zip(a, b) for k in ("score_text", "score_cf", "delta")]
    return max(diffs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log", default=None)
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/load_compare.json and regenerate docs/performance.md")
    args = parser.parse_args()
    with AppServer(log_path=args.log) as server:
        client = server.client()
        serial = {}
        for user, items in INPUTS:  # serial reference (and warm-up)
            serial[(user, items)] = client.predict(user, items, api_name="/compare")
        # the same scores for the same item whatever the order/company in the request
        by_item: dict[tuple, dict] = {}
        order_diff = 0.0
        for (user, _), result in serial.items():
            for row in result:
                key = (user, row["id"])
                if key in by_item:
                    order_diff = max(order_diff, abs(by_item[key]["score_cf"] - row["score_cf"]),
                                     abs(by_item[key]["score_text"] - row["score_text"]))
                by_item[key] = row
        rss_start = rss_mb(server.process.pid)
        failures, worst, latencies = [], 0.0, []

        def worker(seed: int) -> None:
            nonlocal worst
            rng = random.Random(seed)
            own = server.client()
            for _ in range(args.requests):
                user, items = rng.choice(INPUTS)
                start = time.perf_counter()
                try:
                    result = own.predict(user, items, api_name="/compare")
                except Exception as err:  # noqa: BLE001 - every failure is counted and shown
                    failures.append(repr(err)[:200])
                    continue
                latencies.append(time.perf_counter() - start)
                worst = max(worst, max_diff(result, serial[(user, items)]))

        started = time.perf_counter()
        total = 0
        for round_no in range(args.rounds):
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(worker, [round_no * 1000 + c for c in range(args.clients)]))
            total += args.clients * args.requests
        elapsed = time.perf_counter() - started
        rss_end = rss_mb(server.process.pid)
        peak = rss_mb(server.process.pid, "VmHWM")
    latencies.sort()
    ok = total - len(failures)
    print(f"\nclients {args.clients} x requests {args.requests} x rounds {args.rounds} = {total} requests "
          f"in {elapsed:.1f} s ({total / elapsed:.2f} req/s)")
    if latencies:
        print(f"latency median {latencies[len(latencies) // 2]:.2f} s, p95 {latencies[int(len(latencies) * 0.95) - 1]:.2f} s")
    for failure in failures[:5]:
        print("failure:", failure)
    print(f"succeeded: {ok}/{total}")
    print(f"max |score - serial score|: {worst:.2e} (must be <= 1e-5)")
    print(f"same item, other company/order in the request: max |diff| {order_diff:.2e}")
    print(f"server RSS: {rss_start:.0f} MB after warm-up -> {rss_end:.0f} MB after the load "
          f"(growth {rss_end - rss_start:+.0f} MB, must be < 150); peak {peak:.0f} MB")
    passed = ok == total and worst <= 1e-5 and rss_end - rss_start < 150
    print("LOAD TEST", "PASSED" if passed else "FAILED")
    if args.save:
        from benchmarks.report import save

        save("load_compare", {
            "clients": args.clients, "requests": args.requests, "rounds": args.rounds, "total": total, "ok": ok,
            "seconds": round(elapsed, 1), "requests_per_s": round(total / elapsed, 2),
            "latency_median_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "max_diff": worst, "order_diff": order_diff, "rss_start_mb": round(rss_start),
            "rss_end_mb": round(rss_end), "peak_rss_mb": round(peak), "passed": passed}, sys.argv[1:])
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
