"""What ``POST /chat`` (and ``POST /v1/chat/completions``) refuses before a
chat is recorded: too many messages (413), and a full queue (503 with
``Retry-After``). Called by ``routes.submit_chat`` before it writes anything,
so a refused request leaves no trace, and a chat once accepted (202) is in
the queue and is never dropped.

Queue depth is "queued but not started": the arq queue's sorted set holds
every job until it ends, running ones included, and ``tf:running`` holds one
lease per running chat, so the difference is what waits. A chat whose worker
died counts as waiting again once its lease lapses. The check and the enqueue
are not one atomic step: concurrent requests may overshoot the limit by at
most their number, which is what a soft admission limit is for.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from shared.store import queue_depth


async def admit(services: Any, messages: list[dict[str, str]], *texts: str | None) -> None:
    """Raise ``ApiError`` (413, 422, 503) unless this chat may be accepted.
    ``texts``: the request's other strings (system prompt, model)."""
    settings = services.settings
    for text in (*(m["content"] for m in messages), *texts):
        if text and not _encodable(text):
            # JSON can carry a lone surrogate (\ud800); UTF-8, Redis and every model cannot.
            raise ApiError(422, "invalid_request", "text must be valid Unicode (no lone surrogates)")
    if len(messages) > settings.max_messages:
        raise ApiError(413, "too_many_messages", f"{len(messages)} messages; the limit is {settings.max_messages}")
    if settings.max_queued:
        waiting, _ = await queue_depth(services.redis, settings.queue_name)
        if waiting >= settings.max_queued:
            raise ApiError(
                503,
                "queue_full",
                f"{waiting} chats are waiting for a worker; try again shortly",
                {"Retry-After": str(settings.queue_full_retry_after_s)},
            )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
