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

**A client that takes nothing** (``send_timeout``). sse-starlette puts a
cancel scope with a deadline around every send, and raises
``SendTimeoutError`` out of the app, which uvicorn logs as an exception in
the application. A cancel scope per send was 7 to 8% of the API's CPU in the
throughput profile (a timer, the current task, the async library looked up,
per event per client). Here a send just records when it started, and one
watchdog task per process (``_SendWatchdog``) looks at every open stream once
a second (or every half send timeout, when that is shorter), and cancels the
stream whose send has been stuck for longer than the timeout. That is the
normal end of a stream cut loose: the generator is closed (hub subscription
released), the connection is closed by uvicorn behind whatever the client has
not read yet, and the client, if it ever reads again, gets every complete
frame sent before and then the end of the connection, and resumes with
``Last-Event-ID``. (This overrides sse-starlette's ``_send_with_timeout``;
pyproject pins the major version it was written against.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sse_starlette
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
        self.cut_after_s: float | None = kwargs.pop("send_timeout", None)
        super().__init__(content, status_code, *args, **kwargs)
        self.farewell = farewell
        self.ended = ""  # "complete", "client_left", "shutdown" or "cut_loose"
        self.sending_since = 0.0  # monotonic start of the oldest send in progress; 0: none
        self._in_flight = 0
        self._scope: anyio.CancelScope | None = None

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # Replaces sse-starlette's cancel scope per send (see the module docstring).
        # A heartbeat may be sent while an event is: the oldest send counts.
        if not self._in_flight:
            self.sending_since = time.monotonic()
        self._in_flight += 1
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self.sending_since = 0.0

    def cut_loose(self) -> None:
        """Called by the watchdog: the send in progress has been stuck too long."""
        self.ended = "cut_loose"
        self._send_interrupted = True
        if self._scope is not None:
            self._scope.cancel()

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

        watched = self.cut_after_s is not None
        try:
            with anyio.CancelScope() as self._scope:
                if watched:
                    _SendWatchdog.watch(self)
                await super().__call__(scope, receive, tracking)
        finally:
            self._scope = None
            if watched:
                _SendWatchdog.forget(self)
        if self.ended == "cut_loose":
            log.info("%s: the client read nothing for %s s; stream cut loose", scope.get("path"), self.cut_after_s)
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


class _SendWatchdog:
    """One task per event loop, watching the sends of every open stream."""

    _streams: weakref.WeakSet[EventSourceResponse] = weakref.WeakSet()
    _task: asyncio.Task | None = None

    @classmethod
    def watch(cls, stream: EventSourceResponse) -> None:
        cls._streams.add(stream)
        if cls._task is None or cls._task.done() or cls._task.get_loop() is not asyncio.get_running_loop():
            cls._task = asyncio.get_running_loop().create_task(cls._run(), name="tokenfan-send-watchdog")

    @classmethod
    def forget(cls, stream: EventSourceResponse) -> None:
        cls._streams.discard(stream)

    @classmethod
    async def _run(cls) -> None:
        while cls._streams:
            shortest = min((s.cut_after_s or 1.0 for s in list(cls._streams)), default=1.0)
            await asyncio.sleep(min(1.0, shortest / 2))
            now = time.monotonic()
            for stream in list(cls._streams):
                since = stream.sending_since
                if since and stream.cut_after_s is not None and now - since > stream.cut_after_s:
                    stream.cut_loose()
        cls._task = None


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
