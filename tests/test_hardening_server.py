"""Requests that cannot hurt the server (issue 17): only /compare callable by name, bounded request
bodies and memory, short echoes of bad input, strict ids and seeds, one event at a time.

Raw HTTP (httpx) against the session's app (``app_url``: ``app.demo`` served in this process,
so its memory is this process's)."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from _launch import rss_mb

pytestmark = [pytest.mark.integration, pytest.mark.api]
MB = 1 << 20


@pytest.fixture(scope="module")
def demo(app_url):
    return sys.modules["app"].demo


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _fn_index(demo, handler_name: str) -> int:
    return next(i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == handler_name)


def page_event(app_url: str, fn_index: int, data: list, timeout: float = 300) -> dict:
    """Run one event the way the page does (queue/join + the SSE stream); the completion message."""
    session = uuid.uuid4().hex
    joined = httpx.post(app_url + "gradio_api/queue/join", timeout=timeout,
                        json={"data": data, "fn_index": fn_index, "session_hash": session,
                              "event_data": None, "trigger_id": None})
    joined.raise_for_status()
    with httpx.stream("GET", app_url + "gradio_api/queue/data", params={"session_hash": session},
                      timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


# ----------------------------------------------------------------- only the documented API

def test_ui_events_are_not_callable_by_name(app_url, demo):
    names = [fn.api_name for fn in demo.fns.values() if fn.fn is not None and fn.targets]  # UI events
    assert len(names) >= 10 and "compare" not in names
    for name in names:
        assert demo.fns[next(i for i, f in demo.fns.items() if f.api_name == name)].api_visibility == "private"
        for route in ("call", "call/v2", "run", "api"):
            response = httpx.post(f"{app_url}gradio_api/{route}/{name}", json={"data": []}, timeout=30)
            assert response.status_code == 404, (route, name, response.text[:200])
            assert "/compare" in response.json()["detail"]
    # and the designed API (the gr.api endpoints) still is
    designed = [fn.api_name for fn in demo.fns.values() if fn.fn is not None and not fn.targets]
    assert "compare" in designed
    for name in designed:
        assert httpx.post(f"{app_url}gradio_api/call/{name}", json={"data": ["1", "50", ""]},
                          timeout=30).status_code == 200
    response = httpx.post(app_url + "gradio_api/call/compare", json={"data": ["1", "1, 50", ""]}, timeout=30)
    assert response.status_code == 200
    event = response.json()["event_id"]
    with httpx.stream("GET", f"{app_url}gradio_api/call/compare/{event}", timeout=300) as stream:
        text = "".join(stream.iter_text())
    assert "event: complete" in text and "Toy Story" in text


# ----------------------------------------------------------------- bounded request size

@pytest.mark.parametrize("route", ["gradio_api/call/compare", "gradio_api/queue/join", "gradio_api/upload"])
def test_a_large_body_is_refused_unread(app_url, route):
    body = json.dumps({"data": ["1", "1, " * (MB // 3), ""], "fn_index": 0, "session_hash": "x"})
    response = httpx.post(app_url + route, content=body, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 413


def test_a_large_chunked_body_is_refused(app_url):
    def chunks():
        for _ in range(16):
            yield b" " * 65536

    response = httpx.post(app_url + "gradio_api/call/compare", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413

    def small():  # a chunked body within the bound is read and replayed to the app
        yield b'{"data": ["1", '
        yield b'"1, 50", ""]}'

    response = httpx.post(app_url + "gradio_api/call/compare", content=small(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 200 and response.json()["event_id"]


def test_memory_stays_flat_under_100_requests_of_1_mb(app_url):
    import os

    body = json.dumps({"data": ["1", "1, " * (MB // 3), ""]}).encode()
    with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as http:
        http.post(app_url + "gradio_api/call/compare", content=body)  # warm-up
        before = rss_mb(os.getpid())
        codes = {http.post(app_url + "gradio_api/call/compare", content=body).status_code for _ in range(100)}
    grown = rss_mb(os.getpid()) - before
    assert grown < 50, f"server memory grew by {grown:.0f} MB over 100 requests of 1 MB"
    assert codes == {413}


# ----------------------------------------------------------------- short echoes of bad input

def test_a_rejected_dropdown_value_is_echoed_briefly(app_url, demo, capfd):
    """Gradio's dropdown error repeats the whole choice list (943 users here); ours names the value."""
    message = page_event(app_url, _fn_index(demo, "on_user"), ["user", "no such user " * 5000])
    error = message["output"]["error"]
    assert message["success"] is False and "not one of this menu's choices" in error
    assert len(error) < 200 and "no such user" in error
    logged = capfd.readouterr()
    assert len(logged.err) + len(logged.out) < 2000  # nothing long in the log either


def test_a_malformed_body_is_not_echoed_back(app_url):
    """FastAPI's 422 repeats the whole body it could not parse; ours a short prefix of it."""
    response = httpx.post(app_url + "gradio_api/call/compare", content=b"x" * 60_000, timeout=30)
    assert response.status_code == 422 and len(response.content) < 2000


def test_an_unknown_id_in_the_history_table_is_echoed_briefly(real_state):
    from collm_demo.ui import core, recommend
    from collm_demo.ui.core import InputError

    with pytest.raises(InputError, match="Unknown movie id") as err:
        core.profile_from_inputs(real_state, "composed", None, [["7" * 20_000, "", "", "", True, ""]])
    assert len(str(err.value)) < 200
    with pytest.raises(InputError, match="Unknown movie id") as err:
        recommend.add_to_history(real_state, [], ["x" * 20_000], "liked")
    assert len(str(err.value)) < 200


# ----------------------------------------------------------------- /compare: strict ids

@pytest.mark.parametrize("user_id, item_ids, field", [
    ("1", "²", "item_ids"), ("1", "①", "item_ids"), ("1", "１３", "item_ids"), ("1", "1" * 5000, "item_ids"),
    ("1", "12345678", "item_ids"), ("²", "1", "user_id"), ("１３", "1", "user_id"), ("9" * 5000, "1", "user_id"),
])
def test_compare_takes_only_ascii_digit_ids(client, user_id, item_ids, field):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(user_id=user_id, item_ids=item_ids, api_name="/compare")
    message = str(err.value)
    assert f"{field}" in message and "not a numeric" in message and len(message) < 300
    bad = item_ids if field == "item_ids" else user_id
    assert repr(bad[:40]) in message  # names the bad token (cut when long)


def test_compare_refuses_a_list_as_the_user(app_url):
    response = httpx.post(app_url + "gradio_api/call/compare", json={"data": [["1", "2"], "1, 50", ""]},
                          timeout=30)
    event = response.json()["event_id"]
    with httpx.stream("GET", f"{app_url}gradio_api/call/compare/{event}", timeout=300) as stream:
        text = "".join(stream.iter_text())
    assert "event: error" in text and "user_id must be one id" in text


# ----------------------------------------------------------------- the simulator's seed

@pytest.mark.parametrize("seed", [-1, 2**32, 2**80, 1.5, "x"])
def test_simulator_seed_is_bounded(real_state, seed):
    from collm_demo.ui import warm_cold
    from collm_demo.ui.core import InputError

    if not real_state.pipeline().has_projector:
        pytest.skip("the simulator needs a projector")
    item = warm_cold.simulator_items(real_state)[0][1]
    with pytest.raises(InputError, match="seed .* is not a whole number from 0 to 4294967295"):
        warm_cold.simulate(real_state, None, item, seed)


# ----------------------------------------------------------------- one model, one at a time

def test_every_event_waits_in_one_queue_of_one(app_url, demo, client):
    queued = [fn for fn in demo.fns.values() if fn.fn is not None and fn.queue]
    assert queued and {(fn.concurrency_id, fn.concurrency_limit) for fn in queued} == {("model", 1)}
    client.predict("1", "1", api_name="/compare")
    page_event(app_url, _fn_index(demo, "on_user"), ["user", "1"])
    assert set(demo._queue.event_queue_per_concurrency_id) == {"model"}
    assert demo._queue.event_queue_per_concurrency_id["model"].concurrency_limit == 1


def test_a_mixed_burst_runs_one_handler_at_a_time(app_url, demo):
    """/compare calls and the page's Score event at once, each uncached (fresh candidates): the
    queue never has two jobs running (before: one per event, so a mixed burst ran two)."""
    from collm_demo.ui.core import HISTORY_COLUMNS

    rng = random.Random(17)
    fresh = [", ".join(str(i) for i in rng.sample(range(1, 1683), 3)) for _ in range(4)]
    history = {"headers": HISTORY_COLUMNS, "data": [["1", "Toy Story", "1995", "", True, ""]], "metadata": None}
    score = _fn_index(demo, "on_score")
    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], sum(job is not None for job in demo._queue.active_jobs))
            time.sleep(0.001)

    def via_api(items: str) -> str:
        event = httpx.post(app_url + "gradio_api/call/compare", json={"data": ["1", items, ""]},
                           timeout=30).json()["event_id"]
        with httpx.stream("GET", f"{app_url}gradio_api/call/compare/{event}", timeout=300) as stream:
            return "".join(stream.iter_text())

    def via_page(items: str) -> dict:
        return page_event(app_url, score, ["composed", None, history, items.split(", "), None])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda job: job[0](job[1]),
                                    [(via_api, fresh[0]), (via_page, fresh[1]), (via_api, fresh[2]),
                                     (via_page, fresh[3])]))
    finally:
        stop.set()
        watcher.join()
    assert "event: complete" in results[0] and "event: complete" in results[2]
    assert results[1]["success"] and results[3]["success"], (results[1], results[3])
    assert most[0] == 1
