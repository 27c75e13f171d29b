"""What keeps requests from hurting the server: a body-size bound, only /compare callable by
name, short echoes of bad input, one event at a time.

* :class:`RequestGuard` (ASGI middleware, installed through ``launch(app_kwargs=...)``) answers
  413 to a request body over ``MAX_BODY_BYTES`` before the application reads it (a declared
  ``Content-Length`` is refused unread; a chunked body is read at most that far), and 404 to a
  POST on ``/gradio_api/{call,call/v2,run,api}/<name>`` for any endpoint that is not public.
  Gradio's own ``max_file_size`` covers uploads only, and its ``api_visibility="private"`` only
  hides an endpoint from the docs and the Python client: the named routes still run it.
* FastAPI's 422 answer to a malformed body repeats the body; ours keeps a short prefix.
* :func:`harden` makes every UI event private (the designed API is what ``gr.api`` declares:
  ``/compare``, ``/inside``; those stay public), bounds the echo of rejected component values
  (Gradio's dropdown error repeats the whole choice list: 1,682 titles) and puts every event
  on one concurrency id with limit 1, so the server runs at most one handler at a time.

What stays reachable, as in every Gradio app: the page's own protocol (``/gradio_api/queue/join``
with a session hash and an event index). Every handler behind it validates its input, and the
body bound applies there too.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    import gradio as gr

MAX_BODY_BYTES = 64 * 1024  # the page's largest request (a scoring call) is ~2 KB; /compare's < 1 KB
ECHO_CHARS = 60  # at most this much of a rejected value is repeated in an error message
CONCURRENCY_ID = "model"  # the one queue every event waits in
_NAMED_CALL = re.compile(r"/gradio_api/(?:call/v2|call|run|api)/([^/]+)/?")


def _respond(status: int, detail: str):
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]

    async def send_response(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return send_response


def _public_names(scope: Scope) -> set[str]:
    """Endpoints of the running Blocks that are public (those ``gr.api`` declared), read per request."""
    app = scope.get("app")
    blocks = app.get_blocks() if app is not None and hasattr(app, "get_blocks") else None
    if blocks is None:
        return set()
    return {fn.api_name for fn in blocks.fns.values() if fn.api_visibility == "public" and fn.api_name}


def is_designed_api(fn) -> bool:
    """An endpoint declared with ``gr.api`` (no component triggers it), as opposed to a UI event."""
    return fn.fn is not None and not fn.targets


class RequestGuard:
    """ASGI middleware: bounded request bodies, named calls for public endpoints only."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        named = _NAMED_CALL.fullmatch(scope.get("path", ""))
        if method == "POST" and named:
            public = _public_names(scope)
            if named.group(1) not in public:
                listed = ", ".join(f"/{name}" for name in sorted(public)) or "none"
                await _respond(404, f"no public endpoint /{named.group(1)[:ECHO_CHARS]}: this app's API is "
                                    f"{listed}")(send)
                return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await _respond(413, f"request body over {self.max_bytes} bytes")(send)
                return
            await self.app(scope, receive, send)  # the server stops at the declared length
            return
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read at most max_bytes, then replay what was read.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await _respond(413, f"request body over {self.max_bytes} bytes")(send)
                return
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shorten(value, limit: int = ECHO_CHARS) -> str:
    """repr() of a value, cut to ``limit`` characters with the full length stated."""
    return _cut(repr(value), limit)


_CHOICE_ERROR = re.compile(r"Value: (.*?) (?:\(type: .*?\) )?is not in the list of choices: ", re.DOTALL)


def short_input_error(message: str) -> str:
    """A component's complaint about a value, without the choice list it would repeat."""
    found = _CHOICE_ERROR.match(message)
    if found:
        return f"Value {_cut(found.group(1))} is not one of this menu's choices"  # already a repr()
    return message if len(message) <= 2 * ECHO_CHARS + 40 else message[: 2 * ECHO_CHARS] + "… (cut)"


def harden(demo: gr.Blocks) -> None:
    """Private UI events, short input errors, one event at a time (see the module docstring)."""
    import gradio as gr

    for fn in demo.fns.values():
        if not is_designed_api(fn):
            fn.api_visibility = "private"
        # One shared model: a single queue for every event, so a mixed burst never runs two
        # handlers at once (default_concurrency_limit=1 alone limits each event separately).
        fn.concurrency_id = CONCURRENCY_ID
        fn.concurrency_limit = 1

    preprocess = demo.preprocess_data

    async def preprocess_data(*args, **kwargs):
        try:
            return await preprocess(*args, **kwargs)
        except gr.Error as err:  # a component refusing a value: say so briefly, log nothing
            raise gr.Error(short_input_error(str(err.message)), print_exception=False) from None

    demo.preprocess_data = preprocess_data


async def _short_validation_error(request, exc):
    """FastAPI's 422 repeats the whole rejected body ("input"); keep what failed and a short prefix."""
    from starlette.responses import JSONResponse

    errors = [{"type": str(e.get("type", "")), "loc": [str(part) for part in e.get("loc", ())],
               "msg": str(e.get("msg", ""))[:200], "input": shorten(e.get("input"))} for e in exc.errors()[:5]]
    return JSONResponse({"detail": errors}, status_code=422)


def app_kwargs() -> dict:
    """What ``launch(app_kwargs=...)`` passes to the FastAPI app: the guard, and short 422 bodies."""
    from fastapi.exceptions import RequestValidationError
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(RequestGuard)],
            "exception_handlers": {RequestValidationError: _short_validation_error}}
