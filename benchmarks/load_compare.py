"""Load test of /compare: many concurrent gradio_client clients against one app on loopback.

    python -m benchmarks.load_compare [--clients 16] [--requests 10] [--rounds 2] [--large 100] [--save]
    python -m benchmarks.load_compare --only-large     # just the 1 MB requests (~1 min)

Every request must succeed and equal the serial result for the same input (within 1e-5),
whatever else is queued and in whatever order requests arrive; the server's RSS must grow
by less than 150 MB over all requests. Then ``--large`` requests of 1 MB each are sent to
/compare: each must be refused (413, before the body is read) and the server's RSS must grow
by less than 50 MB over them (before the request guard: +245 to +566 MB per 100). The figures
are printed last; ``--save`` writes them to benchmarks/results/load_compare.json and
regenerates the table in docs/performance.md. Run from the repository root (it imports
tests/_launch.py).
"""

from __future__ import annotations

import argparse
import json
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


def large_requests(server: AppServer, count: int, size: int = 1 << 20) -> dict:
    """``count`` POSTs of ``size`` bytes to /compare (valid JSON, a huge item list): status codes
    and the server's RSS before and after (settled for 2 s)."""
    import httpx

    body = json.dumps({"data": ["1", "1, " * (size // 3), ""]}).encode()
    url = server.url + "gradio_api/call/compare"
    with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as http:
        http.post(url, content=body)  # warm-up: the first refusal's own allocations
        before = rss_mb(server.process.pid)
        started = time.perf_counter()
        codes: dict[int, int] = {}
        for _ in range(count):
            code = http.post(url, content=body).status_code
            codes[code] = codes.get(code, 0) + 1
        seconds = time.perf_counter() - started
    time.sleep(2)
    after = rss_mb(server.process.pid)
    return {"count": count, "bytes": len(body), "codes": codes, "seconds": round(seconds, 2),
            "rss_before_mb": round(before), "rss_after_mb": round(after), "growth_mb": round(after - before, 1),
            "passed": codes == {413: count} and after - before < 50}


def print_large(large: dict) -> None:
    print(f"{large['count']} requests of {large['bytes'] / (1 << 20):.1f} MB to /compare in {large['seconds']:.1f} s: "
          f"status codes {large['codes']} (must all be 413); server RSS {large['rss_before_mb']} -> "
          f"{large['rss_after_mb']} MB (growth {large['growth_mb']:+.1f} MB, must be < 50)")
    print("LARGE REQUESTS", "PASSED" if large["passed"] else "FAILED")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large", type=int, default=100, help="requests of 1 MB sent after the load")
    parser.add_argument("--only-large", action="store_true", help="skip the load; only the 1 MB requests")
    parser.add_argument("--log", default=None)
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/load_compare.json and regenerate docs/performance.md")
    args = parser.parse_args()
    with AppServer(log_path=args.log) as server:
        client = server.client()
        if args.only_large:
            client.predict("1", "1, 50", api_name="/compare")  # the model is loaded and warm
            large = large_requests(server, args.large)
            print_large(large)
            return 0 if large["passed"] else 1
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
        large = large_requests(server, args.large) if args.large else None
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
    if large:
        print_large(large)
    passed = ok == total and worst <= 1e-5 and rss_end - rss_start < 150 and (large is None or large["passed"])
    print("LOAD TEST", "PASSED" if passed else "FAILED")
    if args.save:
        from benchmarks.report import save

        save("load_compare", {
            "clients": args.clients, "requests": args.requests, "rounds": args.rounds, "total": total, "ok": ok,
            "seconds": round(elapsed, 1), "requests_per_s": round(total / elapsed, 2),
            "latency_median_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "max_diff": worst, "order_diff": order_diff, "rss_start_mb": round(rss_start),
            "rss_end_mb": round(rss_end), "peak_rss_mb": round(peak), "large_requests": large,
            "passed": passed}, sys.argv[1:])
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
