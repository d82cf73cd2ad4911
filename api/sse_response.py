"""sse-starlette's ``EventSourceResponse``, ending cleanly in the two cases
where it otherwise cuts a stream short with an error.

**Server shutdown (a deploy).** On SIGTERM uvicorn stops accepting
connections and waits (``timeout_graceful_shutdown``) for the open ones;
sse-starlette notices the shutdown (it polls every 0.5 s) and cancels the
stream's generator, which leaves the HTTP response unfinished: uvicorn then
drops the connection in the middle of a chunked body, and a client sees a
protocol error. Here, once the generator is cancelled (its ``finally`` has
run: the hub subscription is released), the response gets a last frame and a
proper end. The last frame is ``retry: <shutdown_retry_ms>`` for native
streams, so an EventSource reconnects almost at once, to another API process
behind the load balancer, with its ``Last-Event-ID``; routes whose clients
cannot take ``retry:`` (the OpenAI stream) pass their own ``farewell``.

**A client that takes nothing** (``send_timeout``). sse-starlette raises
``SendTimeoutError`` out of the app, which uvicorn logs as an exception in
the application. Here it is the normal end of a stream that was cut loose:
the generator has been closed by then (hub subscription released), the
connection is closed by uvicorn behind whatever the client has not read yet,
and the client, if it ever reads again, gets every complete frame sent before
and then the end of the connection, and resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sse_starlette
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("tokenfan.api")

DEFAULT_SHUTDOWN_RETRY_MS = 250
FAREWELL_SEND_TIMEOUT_S = 1.0
# A comment line with no blank line after it: it keeps proxies from timing the
# connection out and dispatches nothing in any SSE parser. ``: ping\n\n`` is an
# event without data to fetch-event-source, httpx-sse and the OpenAI SDKs
# (after the first id: they hand it on as an empty message, which JSON.parse
# and the SDKs' decoders fail on).
HEARTBEAT = b": ping\n"


# sse-starlette >= 3.7.1 ends a stream it cancelled for a shutdown with the
# closing empty body itself; it tells us through ``shutdown_event``.
_HAS_SHUTDOWN_EVENT = "shutdown_event" in inspect.signature(sse_starlette.EventSourceResponse.__init__).parameters


class EventSourceResponse(sse_starlette.EventSourceResponse):
    # status_code is spelled out: FastAPI reads its default for the OpenAPI schema.
    def __init__(self, content: Any, status_code: int = 200, *args: Any, farewell: bytes | None = None, **kwargs: Any):
        self._shutdown: anyio.Event | None = None
        if _HAS_SHUTDOWN_EVENT:
            self._shutdown = kwargs.setdefault("shutdown_event", anyio.Event())
        super().__init__(content, status_code, *args, **kwargs)
        self.farewell = farewell
        self.ended = ""  # "complete", "client_left", "shutdown" or "cut_loose"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False

        async def tracking(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                if self._shutdown is not None and self._shutdown.is_set():
                    # sse-starlette cancelled the stream for a shutdown and ends
                    # the response itself: our farewell goes just before its end.
                    # (A stream that ended by itself in the same instant gets it
                    # too: a retry: after its end, or an error after [DONE],
                    # which clients ignore; watching the content for that would
                    # cost a generator hop per write.)
                    self.ended = "shutdown"
                    farewell = self.farewell if self.farewell is not None else _retry_frame(scope)
                    if farewell:
                        await send({"type": "http.response.body", "body": farewell, "more_body": True})
                completed = True
            await send(message)

        try:
            await super().__call__(scope, receive, tracking)
        except SendTimeoutError:
            self.ended = "cut_loose"
            log.info("%s: the client read nothing for %s s; stream cut loose", scope.get("path"), self.send_timeout)
            return
        if completed:
            self.ended = self.ended or "complete"
            return
        if not self.active:
            self.ended = "client_left"
            return
        # Neither finished nor left: sse-starlette cancelled the stream because
        # the server is shutting down. End the response properly.
        self.ended = "shutdown"
        farewell = self.farewell if self.farewell is not None else _retry_frame(scope)
        with anyio.move_on_after(FAREWELL_SEND_TIMEOUT_S):
            if farewell:
                await send({"type": "http.response.body", "body": farewell, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _retry_frame(scope: Scope) -> bytes:
    try:
        retry_ms = scope["app"].state.services.settings.shutdown_retry_ms
    except (KeyError, AttributeError):
        retry_ms = DEFAULT_SHUTDOWN_RETRY_MS
    return b"retry: %d\n" % retry_ms  # a line, not an event: see HEARTBEAT


def event_stream(
    body: AsyncIterator[bytes], settings: Any, chat_id: str, *, farewell: bytes | None = None
) -> EventSourceResponse:
    """A chat's SSE response, with the deployment's heartbeat and send timeout."""
    return EventSourceResponse(
        body,
        ping=settings.heartbeat_s,
        ping_message_factory=lambda: HEARTBEAT,  # bytes pass through sse-starlette untouched
        send_timeout=settings.send_timeout_s,
        headers={"X-Chat-Id": chat_id},
        farewell=farewell,
    )
