"""The stream of one chat for one client: what it sends, in what order, and
when it ends. One relay serves the native SSE stream and the OpenAI one; they
differ only in how events and failures are encoded (an ``Encoding``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from redis.exceptions import RedisError

from api import metrics
from api.errors import ApiError
from api.hub import Hub, HubUnavailable
from api.subscription import ChatEnded
from shared.events import Event, error_frame
from shared.store import FINISHED, LogExpired

log = logging.getLogger("tokenfan.api")


class Encoding(Protocol):
    def events(self, batch: list[Event]) -> bytes:
        """The bytes of events that are ready at once, written in one send."""
        ...

    def failure(self, code: str, message: str) -> bytes:
        """The last words of a stream that ends without its terminal event
        (b"": close silently). ``code`` is ``unavailable`` (transient: the
        client resumes), ``log_expired``, or a liveness code of the hub
        (``chat_expired``)."""
        ...


class NativeEncoding:
    """``GET /chat/{id}/stream``: the events' shared SSE frames. Transient
    failures close the stream without a terminal event: the client reconnects
    after ``retry`` ms with its Last-Event-ID and loses nothing."""

    def events(self, batch: list[Event]) -> bytes:
        return batch[0].frame if len(batch) == 1 else b"".join(e.frame for e in batch)

    def failure(self, code: str, message: str) -> bytes:
        return b"" if code == "unavailable" else error_frame(code, message)


NATIVE = NativeEncoding()


def check_last_event_id(after: int, meta: dict[str, str]) -> bool:
    """Validate a client's Last-Event-ID against its chat; True when the
    client already has the terminal event (nothing more to send)."""
    last_seq = int(meta["last_seq"])
    if after > last_seq:
        raise ApiError(
            400, "invalid_last_event_id", f"Last-Event-ID {after} is beyond this chat's last event ({last_seq})"
        )
    # Status and last_seq are set in the same atomic append as the terminal
    # event, so a finished chat at or below `after` has nothing more to send.
    return meta["status"] in FINISHED and after >= last_seq


async def relay_events(
    hub: Hub,
    chat_id: str,
    after: int,
    encoding: Encoding,
    meta: dict[str, str] | None = None,
    *,
    preamble: bytes = b"",
) -> AsyncIterator[bytes]:
    """``preamble``, then every event after ``after``, encoded, until a
    terminal one; or the encoding's failure when the stream cannot go on."""
    if preamble:
        yield preamble
    try:
        async with hub.subscribe(chat_id, after) as sub:
            stream = metrics.Stream(chat_id, after, meta)
            try:
                # The events ready at once go out in one write (see Subscription.batches).
                async for batch in sub.batches():
                    frames = encoding.events(batch)
                    if frames:
                        yield frames
                    for event in batch:
                        stream.sent(event)
                return
            except LogExpired as exc:
                stream.outcome = "log_expired"
                failure = encoding.failure("log_expired", str(exc))
            except ChatEnded as exc:
                stream.outcome = exc.code
                failure = encoding.failure(exc.code, exc.message)
            except RedisError as exc:
                stream.outcome = "redis_error"
                log.warning("chat %s: redis error while relaying (%s); closing so the client retries", chat_id, exc)
                failure = encoding.failure("unavailable", "Redis is unavailable")
            finally:
                stream.closed(sub.last_seq)
    except HubUnavailable:
        log.warning("chat %s: hub unavailable; closing so the client retries", chat_id)
        failure = encoding.failure("unavailable", "stream unavailable")
    if failure:
        yield failure


def relay(
    hub: Hub, chat_id: str, after: int, *, retry_ms: int, meta: dict[str, str] | None = None
) -> AsyncIterator[bytes]:
    """The native stream: ``retry``, then every event after ``after``, until a
    terminal one. (No generator of its own around relay_events: one hop less
    per write.)

    The ``retry:`` line has no blank line of its own: it belongs to the first
    event. A blank line after it would be an event without data, which
    fetch-event-source and httpx-sse hand to the application as an empty
    message (and ``JSON.parse("")`` fails); every parser applies ``retry``
    when it reads the line."""
    return relay_events(hub, chat_id, after, NATIVE, meta, preamble=b"retry: %d\n" % retry_ms)
