"""Fresh session ids and a full queue, against one app on loopback (``python app.py``).

    python -m benchmarks.load_sessions [--requests 1000] [--burst 20] [--max-queue 2] [--queued 150] [--save]

Part 1: ``--requests`` requests, each naming a new ``session_hash``, a quarter of each kind:
``/gradio_api/call/compare`` with a bad user id (queued, refused by the handler, its error
fetched); ``/compare`` through ``queue/join`` by index (gradio_client's protocol; its result is
never fetched); ``/gradio_api/run/compare`` (refused by the guard); a UI event through
``queue/join`` (the page's protocol, result read from ``queue/data``). One at a time, so every
queued one is accepted. The server's RSS is read after a warm-up of 40 such requests and again
after the run, each time once the queue has drained (goal: growth < 50 MB; before the session
store, each new id kept ~0.8 MB).

Part 2: the app runs with ``COLLM_MAX_QUEUE=--max-queue``; ``--burst`` concurrent /compare
requests (each uncached) go to ``/run``, ``/api`` and ``/call`` in turn: the status codes
and the refusals' messages are printed (goal: /run and /api never run outside the queue, a
full queue says ``guard.QUEUE_FULL``).

Part 3: a second app (``COLLM_MAX_QUEUE`` = ``--queued``) gets ``--queued`` concurrent uncached
/compare requests (3 candidates each, each from a new session, all waiting in the queue at once):
every one must succeed; the server's RSS before and after (settled) and its peak are printed
(goal: growth < 150 MB, the load test's bound; issue 24 measured +195 MB in bf16 before).

``--save`` writes benchmarks/results/load_sessions.json (the figures are quoted in
docs/operations.md). Run from the repository root (it
imports tests/_launch.py); ``--root`` runs another checkout's app.py (e.g. a worktree of an
older commit, for the "before" figures).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests import _launch
from tests._launch import AppServer, rss_mb

KINDS = ("call_refused", "join_unread", "run", "page_event")


def indices(url: str) -> dict[str, int]:
    """Event index by api_name, from the page's /config (what the page itself reads)."""
    config = httpx.get(url + "config", timeout=60).json()
    return {dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")}


def wait_idle(http: httpx.Client, url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while http.get(url + "gradio_api/queue/status").json().get("queue_size", 0):
        if time.time() > deadline:
            raise TimeoutError("the queue never drained")
        time.sleep(0.1)
    time.sleep(0.5)  # the last event finishing


def one_request(http: httpx.Client, url: str, kind: str, fns: dict[str, int], session: str) -> int:
    """One request of ``kind`` naming ``session``; its HTTP status (the POST's)."""
    if kind == "call_refused":
        response = http.post(url + "gradio_api/call/compare", json={"data": ["bad", "1", ""], "session_hash": session})
        if response.status_code == 200:
            event = response.json()["event_id"]
            with http.stream("GET", f"{url}gradio_api/call/compare/{event}") as stream:
                "".join(stream.iter_text())
        return response.status_code
    if kind == "join_unread":
        return http.post(url + "gradio_api/queue/join", json={
            "data": ["1", "50", ""], "fn_index": fns["compare"], "session_hash": session}).status_code
    if kind == "run":
        return http.post(url + "gradio_api/run/compare", json={"data": ["bad", "1", ""],
                                                                "session_hash": session}).status_code
    response = http.post(url + "gradio_api/queue/join", json={
        "data": ["user", str(1 + int(session[:6], 16) % 943)], "fn_index": fns["on_user"], "session_hash": session,
        "event_data": None, "trigger_id": None})
    if response.status_code == 200:
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                    break
    return response.status_code


def fresh_sessions(server: AppServer, count: int) -> dict:
    url, pid = server.url, server.process.pid
    fns = indices(url)
    codes: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
    with httpx.Client(timeout=300) as http:
        for i in range(40):  # warm-up: each kind's first allocations
            one_request(http, url, KINDS[i % 4], fns, uuid.uuid4().hex)
        wait_idle(http, url)
        before = rss_mb(pid)
        started = time.perf_counter()
        for i in range(count):
            kind = KINDS[i % 4]
            code = one_request(http, url, kind, fns, uuid.uuid4().hex)
            codes[kind][code] = codes[kind].get(code, 0) + 1
        seconds = time.perf_counter() - started
        wait_idle(http, url)
    time.sleep(2)
    after = rss_mb(pid)
    return {"requests": count, "seconds": round(seconds, 1), "codes": codes, "rss_before_mb": round(before),
            "rss_after_mb": round(after), "growth_mb": round(after - before, 1), "passed": after - before < 50}


def burst(server: AppServer, route: str, count: int, seed: int) -> dict:
    """``count`` concurrent uncached /compare requests to ``route``: status codes, one message each."""
    rng = random.Random(seed)
    bodies = [{"data": ["1", ", ".join(str(i) for i in rng.sample(range(1, 1683), 2)), ""]} for _ in range(count)]

    def post(body: dict) -> tuple[int, str]:
        response = httpx.post(f"{server.url}gradio_api/{route}/compare", json=body, timeout=600)
        return response.status_code, response.text[:200]

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(post, bodies))
    codes: dict[int, int] = {}
    messages: dict[int, str] = {}
    for code, text in answers:
        codes[code] = codes.get(code, 0) + 1
        if code != 200:
            messages.setdefault(code, text)
    return {"route": route, "codes": codes, "messages": messages}


def queued(count: int, log: str | None) -> dict:
    """``count`` concurrent uncached /compare requests, all queued at once, on an app whose queue
    takes them all: successes, seconds, the server's RSS before/after and peak."""
    rng = random.Random(24)
    bodies = [{"data": ["1", ", ".join(str(i) for i in rng.sample(range(1, 1683), 3)), ""],
               "session_hash": uuid.uuid4().hex} for _ in range(count)]
    with AppServer(env={"COLLM_MAX_QUEUE": str(count)}, log_path=log) as server:
        server.client().predict("1", "50", api_name="/compare")  # loaded and warm
        time.sleep(2)
        before = rss_mb(server.process.pid)

        def ask(body: dict) -> bool:
            response = httpx.post(server.url + "gradio_api/call/compare", json=body, timeout=60)
            if response.status_code != 200:
                return False
            with httpx.stream("GET", f"{server.url}gradio_api/call/compare/{response.json()['event_id']}",
                              timeout=3600) as stream:
                return "event: complete" in "".join(stream.iter_text())

        started = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            ok = sum(pool.map(ask, bodies))
        seconds = time.perf_counter() - started
        time.sleep(2)
        after, peak = rss_mb(server.process.pid), rss_mb(server.process.pid, "VmHWM")
    return {"requests": count, "ok": ok, "seconds": round(seconds, 1), "rss_before_mb": round(before),
            "rss_after_mb": round(after), "growth_mb": round(after - before, 1), "peak_rss_mb": round(peak),
            "passed": ok == count and after - before < 150}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--max-queue", type=int, default=2)
    parser.add_argument("--queued", type=int, default=150, help="part 3's concurrent requests (0: skip it)")
    parser.add_argument("--root", type=Path, default=None, help="another checkout whose app.py to run")
    parser.add_argument("--log", default=None)
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/load_sessions.json")
    args = parser.parse_args()
    if args.root is not None:
        _launch.ROOT = args.root.resolve()
    with AppServer(env={"COLLM_MAX_QUEUE": str(args.max_queue)}, log_path=args.log) as server:
        client = server.client()
        client.predict("1", "50", api_name="/compare")  # the model is loaded and warm
        sessions = fresh_sessions(server, args.requests)
        print(f"{sessions['requests']} requests with fresh session ids in {sessions['seconds']} s "
              f"(status codes by kind: {sessions['codes']})")
        print(f"server RSS {sessions['rss_before_mb']} -> {sessions['rss_after_mb']} MB "
              f"(growth {sessions['growth_mb']:+.1f} MB, goal < 50)")
        bursts = []
        for n, route in enumerate(("run", "api", "call")):
            bursts.append(burst(server, route, args.burst, seed=n))
            result = bursts[-1]
            print(f"{args.burst} concurrent /{route}/compare with COLLM_MAX_QUEUE={args.max_queue}: "
                  f"status codes {result['codes']}")
            for code, text in result["messages"].items():
                print(f"    {code}: {text}")
            with httpx.Client(timeout=300) as http:
                wait_idle(http, server.url)
    many = queued(args.queued, args.log and args.log + ".queued") if args.queued else None
    if many:
        print(f"{many['requests']} concurrent uncached /call/compare, all queued: {many['ok']} ok in "
              f"{many['seconds']} s; server RSS {many['rss_before_mb']} -> {many['rss_after_mb']} MB "
              f"(growth {many['growth_mb']:+.1f} MB, goal < 150), peak {many['peak_rss_mb']} MB")
    queue_ok = all(200 not in b["codes"] for b in bursts[:2]) and \
        bursts[2]["codes"].get(200, 0) <= args.max_queue + 1
    passed = sessions["passed"] and queue_ok and (many is None or many["passed"])
    print("SESSIONS AND QUEUE", "PASSED" if passed else "FAILED")
    if args.save:
        from benchmarks.report import save

        save("load_sessions", {"sessions": sessions, "bursts": bursts, "max_queue": args.max_queue,
                               "queued": many, "passed": passed}, sys.argv[1:], update_doc=False)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
