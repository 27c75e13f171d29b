"""What keeps requests from hurting the server: the one place that knows Gradio's HTTP routes.

Gradio 6.31 serves more than the page needs, and several of its routes skip what the app sets up
(the queue, ``api_visibility``). :class:`RequestGuard` (ASGI middleware, installed through
``launch(app_kwargs=...)``, see :func:`app_kwargs`) decides for every request before Gradio reads
it. Routes under ``/gradio_api``:

- ``POST queue/join``, the page's protocol (and gradio_client's): queued. ``fn_index`` must name
  an event of this app, a ``session_hash`` is 1 to 64 letters, digits, ``-`` or ``_``, and the
  event gets a value for each of its inputs (else 400 with a message; nothing is queued).
- ``POST call/<name>``, ``call/v2/<name>``: public endpoints only (``gr.api``: ``/compare``,
  ``/inside``, ``/same_films``; else 404); queued. The arguments are checked against the function's signature and
  omitted optional ones filled in (else 400); a ``fn_index`` in the body is refused.
- ``POST run/<name>``, ``api/<name>``: 404 with a message pointing to ``call/<name>``. Gradio
  runs these outside the queue (no limit, no max size) and takes the handler from the body's
  ``fn_index``, so a public name could run a private handler.
- ``POST upload``: 404, the app takes no files (Gradio would write them to its temporary folder
  and serve them back).
- ``POST cancel``, ``reset``: passed (they only stop the caller's own events).
- Any other ``POST``, ``PUT``, ``PATCH``, ``DELETE`` (component_server, stream,
  process_recording, run-history/connect, vibe-*, login, ...): 404. Nothing here uses them, and
  an allow-list also refuses a route a later Gradio adds.
- ``GET deep_link``: 404 (it writes the session's whole page state to disk).
- Any other ``GET`` or ``HEAD``: passed (the page, its assets, the result streams).

Everywhere: a request body over ``MAX_BODY_BYTES`` gets 413 before the application reads it (a
declared ``Content-Length`` is refused unread; a chunked body is read at most that far).
Every refusal is JSON ``{"detail": "<message>"}``; a message repeats at most ``ECHO_CHARS`` of
any input.

Sessions: Gradio makes a session for every new ``session_hash`` (~0.8 MB each here) and keeps
up to 10,000. ``sessions.SessionStore`` replaces its store at start-up (the lifespan in
:func:`app_kwargs`): lean sessions, at most ``SESSION_CAPACITY``; requests the guard refuses
create none.

:func:`harden` makes every UI event private (the designed API is what ``gr.api`` declares:
``/compare``, ``/inside``, ``/same_films``), bounds the echo of rejected component values (Gradio's dropdown error
repeats the whole choice list: 1,682 titles) and turns any other input-processing failure into a
short message instead of a traceback that repeats the input; it puts every event on one
concurrency id with limit 1 (one handler at a time) and enables the queue with its size bound,
whose refusal says ``QUEUE_FULL``.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # the page's largest request (a scoring call) is ~2 KB; /compare's < 1 KB
ECHO_CHARS = 60  # at most this much of a rejected value is repeated in an error message
CONCURRENCY_ID = "model"  # the one queue every event waits in
# Sessions kept (least recently used dropped first): far more visitors than one model serves at
# once (a class of 40 keeps its results), and ~12 MB for sessions nobody uses (a loop of fresh
# ids: an empty session is ~12 KB here; Gradio's own ~0.8 MB, up to 10,000 of them).
SESSION_CAPACITY = 1000
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # uuid4 (gradio_client), base-36 (the page)
QUEUE_FULL = "The app is busy: its queue is full. Please try again in a minute."
API = "/gradio_api"
_NAMED = re.compile(API + r"/(call/v2|call|run|api)/([^/]+)/?")


@dataclass(frozen=True)
class Route:
    """What the guard does with one request: ``kind`` is "pass", "refuse" (``status``,
    ``detail``), "join" (the queue protocol) or "call"/"call_v2" (``name``: a public endpoint)."""

    kind: str
    status: int = 0
    detail: str = ""
    name: str = ""


PASS = Route("pass")
_POST_PASSED = {API + "/cancel", API + "/reset", API + "/reset/"}  # only stop the caller's own events
_GET_REFUSED = {API + "/deep_link": "deep links are off in this app"}


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shorten(value, limit: int = ECHO_CHARS) -> str:
    """repr() of a value, cut to ``limit`` characters with the full length stated."""
    return _cut(repr(value), limit)


def is_designed_api(fn) -> bool:
    """An endpoint declared with ``gr.api`` (no component triggers it), as opposed to a UI event."""
    return fn.fn is not None and not fn.targets


def _public(blocks) -> dict[str, Any]:
    """The public endpoints of the running Blocks (those ``gr.api`` declared) by name, read per request."""
    if blocks is None:
        return {}
    return {fn.api_name: fn for fn in blocks.fns.values() if fn.api_visibility == "public" and fn.api_name}


def _blocks(scope: Scope):
    app = scope.get("app")
    try:
        return app.get_blocks() if app is not None and hasattr(app, "get_blocks") else None
    except ValueError:  # no Blocks configured yet
        return None


def route(method: str, path: str, public: dict[str, Any]) -> Route:
    """The guard's decision for ``method`` on ``path`` (the module docstring's table)."""
    named = _NAMED.fullmatch(path)
    if method == "POST" and named:
        kind, name = named.groups()
        if name not in public:
            listed = ", ".join(f"/{n}" for n in sorted(public)) or "none"
            return Route("refuse", 404, f"no public endpoint /{_cut(name)}: this app's API is {listed}")
        if kind in ("run", "api"):
            return Route("refuse", 404, f"{API}/{kind}/{name} is off in this app (it would skip the queue): "
                                        f"POST the same body to {API}/call/{name}, then GET "
                                        f"{API}/call/{name}/<event_id> for the result (or use gradio_client)")
        return Route("call_v2" if kind == "call/v2" else "call", name=name)
    if method == "POST" and path == API + "/queue/join":
        return Route("join")
    if method == "POST" and path in (API + "/upload", API + "/upload/"):
        return Route("refuse", 404, "this app takes no uploads")
    if method in ("POST", "PUT", "PATCH", "DELETE") and path not in _POST_PASSED:
        return Route("refuse", 404, f"{method} {_cut(path)} is not served by this app")
    if path in _GET_REFUSED:
        return Route("refuse", 404, _GET_REFUSED[path])
    return PASS


class BadRequest(Exception):
    """A body the guard refuses with 400 and this message."""


def signature(fn) -> list[inspect.Parameter]:
    """The parameters of a ``gr.api`` function, one per input, in order."""
    return list(inspect.signature(fn.fn).parameters.values())


def _takes(name: str, params: list[inspect.Parameter]) -> str:
    """E.g. "/compare takes user_id, item_ids and optionally cf_model"."""
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    parts = required + ([f"optionally {' and '.join(optional)}"] if optional else [])
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts) or "nothing"
    return f"/{name} takes {listed}"


def designed_arguments(fn, data: list) -> list:
    """``data`` for a ``gr.api`` endpoint with omitted optional arguments filled in; BadRequest
    when too few or too many are given (Gradio would log them all and answer ``{"error": null}``,
    or ignore the extra ones)."""
    params = signature(fn)
    required = sum(p.default is inspect.Parameter.empty for p in params)
    if not required <= len(data) <= len(params):
        raise BadRequest(f"{_takes(fn.api_name, params)} (got {len(data)} value{'s' * (len(data) != 1)})")
    return data if len(data) == len(params) else list(data) + [p.default for p in params[len(data):]]


def event_arguments(fn, data: list) -> list:
    """``data`` for any event: a ``gr.api`` endpoint's as above; a UI event needs a value for
    each of its inputs (Gradio's own refusal logs every value it was given)."""
    if is_designed_api(fn):
        return designed_arguments(fn, data)
    if len(data) < len(fn.inputs):
        raise BadRequest(f"this event takes {len(fn.inputs)} values (got {len(data)})")
    return data


def _session_id(body: dict) -> None:
    session = body.get("session_hash")
    if session is not None and not (isinstance(session, str) and SESSION_ID.fullmatch(session)):
        raise BadRequest(f"session_hash {shorten(session)} is not 1 to 64 letters, digits, '-' or '_'")


def checked_body(decision: Route, body: Any, blocks) -> Any:
    """The body Gradio gets for a queued route (arguments completed), or BadRequest. A body that
    is not a JSON object with a list as ``data`` is left to Gradio's own validation (a short 422)."""
    if not isinstance(body, dict):
        return body
    public = _public(blocks)
    if decision.kind == "call_v2":  # the body is the arguments by name
        fn = public[decision.name]
        params = signature(fn)
        names = [p.name for p in params]
        unknown = [key for key in body if key not in names]
        missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in body]
        if unknown or missing:
            what = f"unknown argument {shorten(unknown[0])}" if unknown else f"missing {', '.join(missing)}"
            raise BadRequest(f"{what}: {_takes(decision.name, params)}")
        return body
    _session_id(body)
    data = body.get("data")
    if decision.kind == "call":
        if body.get("fn_index") is not None:
            raise BadRequest(f"a named call takes no fn_index: {API}/call/{decision.name} runs /{decision.name}")
        fn = public[decision.name]
    else:  # queue/join: the page names its event by index
        index = body.get("fn_index")
        if index is None:
            return body  # Gradio: 400 "No function index provided."
        if isinstance(index, bool) or not isinstance(index, int) or index not in blocks.fns:
            raise BadRequest(f"fn_index {shorten(index)} names no event of this app")
        fn = blocks.fns[index]
    if not isinstance(data, list) or fn.fn is None:
        return body
    completed = event_arguments(fn, data)
    return body if completed is data else {**body, "data": completed}


def _respond(status: int, detail: str):
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]

    async def send_response(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return send_response


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole request body, at most ``max_bytes`` (else _TooLarge); None if the client left."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > max_bytes:
            raise _TooLarge
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return replay.pop() if replay else await receive()
    return replayed


class RequestGuard:
    """ASGI middleware: each request refused, checked or passed as the module docstring's table says."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix: route on what follows it
            path = path[len(root):]
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _respond(413, f"request body over {self.max_bytes} bytes")(send)
            return
        blocks = _blocks(scope)
        decision = route(method, path, _public(blocks))
        if decision.kind == "refuse":  # answered unread
            await _respond(decision.status, decision.detail)(send)
            return
        if decision.kind == "pass" and (length is not None or method not in ("POST", "PUT", "PATCH")):
            await self.app(scope, receive, send)  # the server stops at the declared length
            return
        # A queued route (checked below) or a chunked body: read at most max_bytes, then replay.
        try:
            body = await _read_body(receive, self.max_bytes)
        except _TooLarge:
            await _respond(413, f"request body over {self.max_bytes} bytes")(send)
            return
        if body is None:
            return
        if decision.kind != "pass" and blocks is not None:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # not JSON: FastAPI's (short) 422
            except RecursionError:  # "[[[[…" 64 KB deep: FastAPI's own parse would fail with 500
                await _respond(400, "request body nested too deeply")(send)
                return
            try:
                checked = checked_body(decision, parsed, blocks) if parsed is not None else None
            except BadRequest as err:
                await _respond(400, str(err))(send)
                return
            if checked is not parsed:  # arguments filled in: Gradio reads the completed body
                body = json.dumps(checked).encode()
                scope = dict(scope, headers=[(k, v) for k, v in scope.get("headers") or []
                                             if k not in (b"content-length", b"transfer-encoding")]
                             + [(b"content-length", str(len(body)).encode())])
        await self.app(scope, _replaying(body, receive), send)


@asynccontextmanager
async def _lifespan(app):
    from .sessions import install_session_store

    install_session_store(app, SESSION_CAPACITY)
    yield


# ---------------------------------------------------------------------------------- the Blocks

_CHOICE_ERROR = re.compile(r"Value: (.*?) (?:\(type: .*?\) )?is not in the list of choices: ", re.DOTALL)


def short_input_error(message: str) -> str:
    """A component's complaint about a value, without the choice list it would repeat."""
    found = _CHOICE_ERROR.match(message)
    if found:
        return f"Value {_cut(found.group(1))} is not one of this menu's choices"  # already a repr()
    return message if len(message) <= 2 * ECHO_CHARS + 40 else message[: 2 * ECHO_CHARS] + "… (cut)"


def _busy_words(push: Callable) -> Callable:
    """Queue.push whose queue-full refusal (HTTP 503) says ``QUEUE_FULL``; Gradio's own words
    are "Queue is full. Max size is 64 and size is 64."."""
    async def push_with_our_words(*args, **kwargs):
        success, detail, kind = await push(*args, **kwargs)
        return success, QUEUE_FULL if kind == "queue_full" else detail, kind
    return push_with_our_words


def harden(demo: gr.Blocks, max_queue: int) -> None:
    """Private UI events, short input errors, one event at a time, a queue of at most
    ``max_queue`` waiting events (see the module docstring). Call once, instead of ``demo.queue``."""
    import gradio as gr

    for fn in demo.fns.values():
        if not is_designed_api(fn):
            fn.api_visibility = "private"
        # One shared model: a single queue for every event, so a mixed burst never runs two
        # handlers at once (default_concurrency_limit=1 alone limits each event separately).
        fn.concurrency_id = CONCURRENCY_ID
        fn.concurrency_limit = 1

    preprocess = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        try:
            return await preprocess(block_fn, inputs, *args, **kwargs)
        except gr.Error as err:  # a component refusing a value: say so briefly, log nothing
            raise gr.Error(short_input_error(str(err.message)), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - any other failure to read an input is the input's
            # Gradio's messages here repeat the value (a count mismatch: every value in full); the
            # client would get {"error": null} and the log a traceback. One short line instead.
            if len(inputs) < len(block_fn.inputs):
                message = f"this event takes {len(block_fn.inputs)} values (got {len(inputs)})"
            else:
                message = f"an input could not be read ({type(err).__name__}: {short_input_error(str(err))})"
            log.warning("refused event %s: %s", block_fn.api_name or block_fn.name, message)
            raise gr.Error(message, print_exception=False) from None

    demo.preprocess_data = preprocess_data
    # api_open=False: should the guard ever be left out, Gradio itself refuses /run and /api
    # for queued events (the guard refuses them first, before any session is made).
    demo.queue(default_concurrency_limit=1, max_size=max_queue, api_open=False)
    demo._queue.push = _busy_words(demo._queue.push)


async def _short_validation_error(request, exc):
    """FastAPI's 422 repeats the whole rejected body ("input"); keep what failed and a short prefix."""
    from starlette.responses import JSONResponse

    errors = [{"type": str(e.get("type", "")), "loc": [str(part) for part in e.get("loc", ())],
               "msg": str(e.get("msg", ""))[:200], "input": shorten(e.get("input"))} for e in exc.errors()[:5]]
    return JSONResponse({"detail": errors}, status_code=422)


def app_kwargs() -> dict:
    """What ``launch(app_kwargs=...)`` passes to the FastAPI app: the guard, short 422 bodies and
    the lifespan that installs the bounded session store."""
    from fastapi.exceptions import RequestValidationError
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(RequestGuard)],
            "exception_handlers": {RequestValidationError: _short_validation_error},
            "lifespan": _lifespan}
