"""The SSE stream of one chat for one client: what it sends, in what order,
and when it ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from api import metrics
from api.hub import Hub, HubUnavailable
from shared.events import error_frame
from shared.store import LogExpired

log = logging.getLogger("tokenfan.api")


async def relay(
    hub: Hub, chat_id: str, after: int, *, retry_ms: int, already_complete: bool, meta: dict[str, str] | None = None
) -> AsyncIterator[bytes]:
    """``retry``, then every event after ``after``, until a terminal one.

    Transient failures (Redis away) close the stream without a terminal event:
    the client reconnects after ``retry`` ms with its Last-Event-ID and loses
    nothing. Only an unrecoverable state gets an ``error`` event."""
    yield b"retry: %d\n\n" % retry_ms
    if already_complete:
        return  # the client already has the terminal event
    try:
        sub = await hub.join(chat_id, after)
    except HubUnavailable:
        log.warning("chat %s: hub unavailable; closing so the client retries", chat_id)
        return
    stream = metrics.Stream(chat_id, after, meta)
    try:
        # The events ready at once go out in one write (see Subscription.batches).
        async for batch in sub.batches():
            yield batch[0].frame if len(batch) == 1 else b"".join(e.frame for e in batch)
            for event in batch:
                stream.sent(event)
    except LogExpired as exc:
        stream.outcome = "log_expired"
        yield error_frame("log_expired", str(exc))
    except RedisError as exc:
        stream.outcome = "redis_error"
        log.warning("chat %s: redis error while relaying (%s); closing so the client retries", chat_id, exc)
    finally:
        hub.leave(sub)
        stream.closed(sub.last_seq)
