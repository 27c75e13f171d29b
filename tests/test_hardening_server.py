"""Requests that cannot hurt the server (issues 17 and 24): only /compare and /inside callable by
name, every other Gradio route refused or queued (no /run, no uploads, no fn_index picking a
handler), bounded request bodies, sessions and memory, short echoes of bad input (in answers and
logs), strict ids and seeds, one event at a time, a full queue refused in the app's words.

Raw HTTP (httpx) against the session's app (``app_url``: ``app.demo`` served in this process,
so its memory is this process's)."""

from __future__ import annotations

import json
import os
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


def page_event(app_url: str, fn_index: int, data: list, timeout: float = 300, session: str | None = None) -> dict:
    """Run one event the way the page does (queue/join + the SSE stream); the completion message."""
    session = session or uuid.uuid4().hex
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
    from collm_demo.ui import simulator
    from collm_demo.ui.core import InputError

    if not real_state.pipeline().has_projector:
        pytest.skip("the simulator needs a projector")
    item = simulator.simulator_items(real_state)[0][1]
    with pytest.raises(InputError, match="seed .* is not a whole number from 0 to 4294967295"):
        simulator.simulate(real_state, None, item, seed)


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


# ----------------------------------------------------------------- every Gradio route refused or queued

def _detail(response: httpx.Response) -> str:
    return response.json()["detail"]


def _call(app_url: str, name: str, body: dict) -> tuple[int, str]:
    """POST /call/<name>: the refusal's status and message, or 200 and the event's SSE answer."""
    response = httpx.post(f"{app_url}gradio_api/call/{name}", json=body, timeout=60)
    if response.status_code != 200:
        return response.status_code, _detail(response)
    event = response.json()["event_id"]
    with httpx.stream("GET", f"{app_url}gradio_api/call/{name}/{event}", timeout=300) as stream:
        return 200, "".join(stream.iter_text())


def _wait_idle(demo, timeout: float = 120) -> None:
    """Until no event waits or runs (requests posted without reading their result)."""
    queue, deadline = demo._queue, time.time() + timeout
    while len(queue) or any(job is not None for job in queue.active_jobs):
        assert time.time() < deadline, "the queue never drained"
        time.sleep(0.05)


def test_run_and_api_routes_are_refused_with_a_pointer_to_call(app_url, demo):
    """Gradio runs /run/<name> and /api/<name> outside the queue (before: 20 concurrent calls all
    ran with COLLM_MAX_QUEUE=2); here they answer 404 and say what to use instead."""
    # The one other route that runs events outside the queue (heartbeat: "unload" events) has none to run.
    assert not any(event == "unload" for fn in demo.fns.values() for _, event in fn.targets)
    for route in ("run", "api"):
        for name in ("compare", "inside"):
            for slash in ("", "/"):
                response = httpx.post(f"{app_url}gradio_api/{route}/{name}{slash}", json={"data": ["1", "50", ""]},
                                      timeout=30)
                assert response.status_code == 404, (route, name, response.text[:200])
                detail = _detail(response)
                assert "skip the queue" in detail and f"/gradio_api/call/{name}" in detail


def test_a_fn_index_in_the_body_cannot_pick_a_private_handler(app_url, demo):
    """Before: {"data": [], "fn_index": <page load>} to /run/compare or /api/compare ran the private
    page-load handler (200); /call ignored the index. Now every named route refuses it."""
    load = _fn_index(demo, "on_load")
    for route in ("run", "api", "call"):
        response = httpx.post(f"{app_url}gradio_api/{route}/compare", json={"data": [], "fn_index": load}, timeout=30)
        assert response.status_code in (400, 404), (route, response.text[:200])
    response = httpx.post(app_url + "gradio_api/call/compare", json={"data": ["1", "50", ""], "fn_index": load},
                          timeout=30)
    assert response.status_code == 400 and _detail(response) == (
        "a named call takes no fn_index: /gradio_api/call/compare runs /compare")
    response = httpx.post(app_url + "gradio_api/call/v2/compare", timeout=30,
                          json={"user_id": "1", "item_ids": "50", "fn_index": load})
    assert response.status_code == 400 and _detail(response).startswith("unknown argument 'fn_index'")


def test_uploads_are_refused_and_nothing_is_written(app_url, demo):
    """Before: POST /gradio_api/upload stored the file (served back by /file=, kept after exit)."""
    from pathlib import Path

    folder = Path(demo.server_app.uploaded_file_dir)
    marker = uuid.uuid4().hex
    for path in ("gradio_api/upload", "gradio_api/upload/"):
        response = httpx.post(app_url + path, files={"files": (f"{marker}.txt", b"hello" * 100)}, timeout=30)
        assert response.status_code == 404 and _detail(response) == "this app takes no uploads"
    assert not folder.exists() or not any(marker in path.name for path in folder.rglob("*"))


@pytest.mark.parametrize("method, path, detail", [
    ("POST", "gradio_api/component_server", "POST /gradio_api/component_server is not served by this app"),
    ("POST", "gradio_api/stream/abc", "POST /gradio_api/stream/abc is not served by this app"),
    ("POST", "gradio_api/process_recording", "POST /gradio_api/process_recording is not served by this app"),
    ("POST", "gradio_api/run-history/connect", "POST /gradio_api/run-history/connect is not served by this app"),
    ("POST", "gradio_api/vibe-edit", "POST /gradio_api/vibe-edit is not served by this app"),
    ("POST", "login", "POST /login is not served by this app"),
    ("PUT", "gradio_api/queue/join", "PUT /gradio_api/queue/join is not served by this app"),
    ("GET", "gradio_api/deep_link?session_hash=abc", "deep links are off in this app"),
])
def test_routes_the_app_does_not_use_are_refused(app_url, method, path, detail):
    """An allow-list: any POST the page does not need answers 404 with a message (deep_link, a GET,
    wrote the session's page state to disk)."""
    response = httpx.request(method, app_url + path, json={"data": [], "session_hash": "abc"}, timeout=30)
    assert response.status_code == 404 and _detail(response) == detail


@pytest.mark.parametrize("data", [[], ["x" * 60_000], ["1", "50", "", "extra"]])
def test_a_wrong_argument_count_gets_a_short_message_and_no_log(app_url, capfd, data):
    """Before: {"error": null} for the client and Gradio's "Received inputs" traceback in the log
    (61.5 kB for 60,000 characters); extra arguments were ignored."""
    capfd.readouterr()
    status, message = _call(app_url, "compare", {"data": data})
    assert status == 400
    assert message == (f"/compare takes user_id, item_ids and optionally cf_model "
                       f"(got {len(data)} value{'s' * (len(data) != 1)})")
    logged = capfd.readouterr()
    assert len(logged.out) + len(logged.err) < 500


def test_optional_arguments_can_be_omitted(app_url, demo):
    """cf_model is optional (documented so); before, leaving it out gave {"error": null}."""
    status, text = _call(app_url, "compare", {"data": ["1", "50"]})
    assert status == 200 and "event: complete" in text and "Star Wars" in text
    message = page_event(app_url, _fn_index(demo, "compare"), ["1", "50"])  # gradio_client's protocol
    assert message["success"] and message["output"]["data"][0][0]["title"] == "Star Wars"
    response = httpx.post(app_url + "gradio_api/call/v2/compare", json={"user_id": "1", "item_ids": "50"}, timeout=30)
    assert response.status_code == 200 and response.json()["event_id"]
    status, message = _call(app_url, "inside", {"data": ["1"]})
    assert (status, message) == (400, "/inside takes user_id, item_id and optionally cf_model (got 1 value)")


@pytest.mark.parametrize("body, detail", [
    ({"user_id": "1"}, "missing item_ids: /compare takes user_id, item_ids and optionally cf_model"),
    ({}, "missing user_id, item_ids: /compare takes user_id, item_ids and optionally cf_model"),
    ({"user_id": "1", "item_ids": "50", "x" * 5000: 1},
     f"unknown argument '{'x' * 59}… (5002 characters): /compare takes user_id, item_ids and optionally cf_model"),
])
def test_call_v2_names_what_is_missing_or_unknown(app_url, body, detail):
    """Before: a missing argument was an HTTP 500 with no message."""
    response = httpx.post(app_url + "gradio_api/call/v2/compare", json=body, timeout=30)
    assert response.status_code == 400 and _detail(response) == detail


def test_the_page_protocol_checks_event_index_session_and_values(app_url, demo, capfd):
    """queue/join: an unknown index was an HTTP 500; any session_hash was taken (a 60 KB one too);
    a UI event with too few values logged them all and answered {"error": null}."""
    compare, on_user = _fn_index(demo, "compare"), _fn_index(demo, "on_user")
    capfd.readouterr()
    cases = [
        ({"data": [], "fn_index": 9999, "session_hash": "abc"}, "fn_index 9999 names no event of this app"),
        ({"data": [], "fn_index": "1", "session_hash": "abc"}, "fn_index '1' names no event of this app"),
        ({"data": ["1", "50"], "fn_index": compare, "session_hash": "x" * 60_000},
         f"session_hash '{'x' * 59}… (60002 characters) is not 1 to 64 letters, digits, '-' or '_'"),
        ({"data": ["1", "50"], "fn_index": compare, "session_hash": "../x"},
         "session_hash '../x' is not 1 to 64 letters, digits, '-' or '_'"),
        ({"data": ["1", "50"], "fn_index": compare, "session_hash": 7}, "session_hash 7 is not 1 to 64 letters, "
                                                                        "digits, '-' or '_'"),
        ({"data": ["x" * 50_000], "fn_index": on_user, "session_hash": "abc"}, "this event takes 2 values (got 1)"),
        ({"data": ["1"], "fn_index": compare, "session_hash": "abc"},
         "/compare takes user_id, item_ids and optionally cf_model (got 1 value)"),
    ]
    for body, detail in cases:
        response = httpx.post(app_url + "gradio_api/queue/join", json=body, timeout=30)
        assert (response.status_code, _detail(response)) == (400, detail)
    logged = capfd.readouterr()
    assert len(logged.out) + len(logged.err) < 500
    response = httpx.post(app_url + "gradio_api/queue/join", content=b"[" * 60_000, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and _detail(response) == "request body nested too deeply"


def test_an_unreadable_value_gets_a_message_not_null(app_url, demo, capfd):
    """A value a component cannot read (a string as the history table): before, {"error": null}
    and a traceback in the log; now a short message, one short log line."""
    capfd.readouterr()
    message = page_event(app_url, _fn_index(demo, "on_score"), ["composed", None, "x" * 50_000, ["1"], None])
    error = message["output"]["error"]
    assert message["success"] is False and error and error.startswith("an input could not be read")
    assert len(error) < 300
    logged = capfd.readouterr()
    assert len(logged.out) + len(logged.err) < 500


def test_a_page_session_keeps_its_state_between_events(app_url, demo):
    """Sessions are lean (no copy of every component's configuration), not forgetful: the result a
    scoring stored in the session's gr.State is what the next event of that session sorts."""
    from collm_demo.ui.core import HISTORY_COLUMNS

    score, sort = _fn_index(demo, "on_score"), _fn_index(demo, "on_sort")
    history = {"headers": HISTORY_COLUMNS, "data": [["1", "Toy Story", "1995", "", True, ""]], "metadata": None}
    candidates = ["50", "100", "181", "258", "286"]
    session = uuid.uuid4().hex
    scored = page_event(app_url, score, ["composed", None, history, candidates, None], session=session)
    assert scored["success"], scored["output"]
    sort_by, inject = (getattr(block, "value", None) for block in demo.fns[sort].inputs[1:])
    for owner, rows in ((session, len(candidates)), (uuid.uuid4().hex, 0)):  # its own session, a new one
        sorted_ = page_event(app_url, sort, [None, sort_by, inject], session=owner)
        assert sorted_["success"], sorted_["output"]
        table = sorted_["output"]["data"][0]
        assert len(table.get("value", table)["data"]) == rows, table


def test_fresh_session_ids_do_not_grow_memory(app_url, demo):
    """Before: each new session_hash kept ~0.8 MB (a copy of every component's configuration),
    up to 10,000 of them, even when the handler refused the request (150 here: +118 MB)."""
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(timeout=60) as http:
        for i in range(20):  # warm-up: the refusal's own first allocations
            http.post(app_url + "gradio_api/call/compare", json={"data": ["bad", "1", ""], "session_hash": f"w{tag}{i}"})
        _wait_idle(demo)
        before = rss_mb(os.getpid())
        for i in range(150):
            http.post(app_url + "gradio_api/call/compare", json={"data": ["bad", "1", ""], "session_hash": f"{tag}{i}"})
        _wait_idle(demo)
    grown = rss_mb(os.getpid()) - before
    assert grown < 25, f"server memory grew by {grown:.0f} MB over 150 fresh session ids"
    from collm_demo.ui import guard
    from collm_demo.ui.sessions import SessionStore

    store = demo.server_app.state_holder
    assert isinstance(store, SessionStore) and store.capacity == guard.SESSION_CAPACITY


def test_sessions_are_bounded_and_refused_requests_make_none(app_url, demo, monkeypatch):
    """At most SESSION_CAPACITY sessions (here set to 30), the least recently used dropped first
    with the queue's uncollected results; a request the guard refuses makes no session."""
    store, queue = demo.server_app.state_holder, demo._queue
    monkeypatch.setattr(store, "capacity", 30)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(timeout=60) as http:
        for i in range(80):  # results never fetched
            http.post(app_url + "gradio_api/call/compare", json={"data": ["bad", "1", ""], "session_hash": f"{tag}-{i}"})
        _wait_idle(demo)
        http.post(app_url + "gradio_api/call/compare", json={"data": ["bad", "1", ""], "session_hash": f"{tag}-last"})
        _wait_idle(demo)
        assert len(store.session_data) <= 30
        assert not any(f"{tag}-{i}" in store.session_data for i in range(40))
        assert sum(s.startswith(tag) for s in queue.pending_messages_per_session) <= 30
        assert sum(s.startswith(tag) for s in queue.pending_event_ids_session) <= 30
        sessions = set(store.session_data)
        for i in range(20):
            refused = f"{tag}-refused-{i}"
            assert http.post(app_url + "gradio_api/run/compare", json={"data": ["1", "50", ""], "session_hash": refused}
                             ).status_code == 404
            assert http.post(app_url + "gradio_api/queue/join", json={"data": [], "fn_index": 9999,
                                                                      "session_hash": refused}).status_code == 400
            assert http.post(app_url + "gradio_api/call/compare", json={"data": ["1"], "session_hash": refused}
                             ).status_code == 400
            assert http.post(app_url + "gradio_api/call/secret", json={"data": [], "session_hash": refused}
                             ).status_code == 404
    assert set(store.session_data) == sessions


def test_a_full_queue_refuses_in_the_apps_words(app_url, demo, client, monkeypatch):
    """Before: Gradio's "Queue is full. Max size is 2 and size is 2."; now guard.QUEUE_FULL on both
    queued routes (gradio_client raises its own "Queue is full! Please try again.")."""
    from gradio_client.utils import QueueError

    from collm_demo.ui.guard import QUEUE_FULL

    assert QUEUE_FULL == "The app is busy: its queue is full. Please try again in a minute."  # docs quote it
    monkeypatch.setattr(demo._queue, "max_size", 0)  # full, whatever runs
    response = httpx.post(app_url + "gradio_api/call/compare", json={"data": ["1", "50", ""]}, timeout=30)
    assert (response.status_code, _detail(response)) == (503, QUEUE_FULL)
    response = httpx.post(app_url + "gradio_api/queue/join", timeout=30, json={
        "data": ["1", "50", ""], "fn_index": _fn_index(demo, "compare"), "session_hash": uuid.uuid4().hex})
    assert (response.status_code, _detail(response)) == (503, QUEUE_FULL)
    with pytest.raises(QueueError, match="Queue is full! Please try again."):
        client.predict("1", "50", api_name="/compare")
