"""What ``POST /chat`` (and ``POST /v1/chat/completions``) refuses, and the
job it enqueues. Too many messages (413) and text that is not Unicode (422)
are refused before anything is written. A full queue (503 with
``Retry-After``) is refused by the script that records and enqueues the chat
(shared/lua/submit.lua), in the same atomic step: a refused request leaves no
trace, the limit is exact under concurrent requests, and a chat once accepted
(202) is in the queue and is never dropped.

Queue depth is "queued but not started": the arq queue's sorted set holds
every job until it ends, running ones included, and ``tf:running`` holds one
lease per running chat, so the difference is what waits. A chat whose worker
died counts as waiting again once its lease lapses.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from api.errors import ApiError
from shared.settings import Settings
from shared.store import QueuedJob

JOB_FUNCTION = "generate"  # worker/arq_worker.py


def admit(settings: Settings, messages: list[dict[str, str]], *texts: str | None) -> None:
    """Raise ``ApiError`` (413, 422) unless this chat may be accepted.
    ``texts``: the request's other strings (system prompt, model)."""
    for text in (*(m["content"] for m in messages), *texts):
        if text and not _encodable(text):
            # JSON can carry a lone surrogate (\ud800); UTF-8, Redis and every model cannot.
            raise ApiError(422, "invalid_request", "text must be valid Unicode (no lone surrogates)")
    if len(messages) > settings.max_messages:
        raise ApiError(413, "too_many_messages", f"{len(messages)} messages; the limit is {settings.max_messages}")


def queued_job(redis: ArqRedis, settings: Settings, chat_id: str) -> QueuedJob:
    """The chat's arq job, as ``ArqRedis.enqueue_job`` would write it (job id =
    chat id), and the queue-depth limit it is admitted under."""
    now_ms = timestamp_ms()
    payload = serialize_job(JOB_FUNCTION, (chat_id,), {}, None, now_ms, serializer=redis.job_serializer)
    return QueuedJob(settings.queue_name, payload, now_ms, redis.expires_extra_ms, settings.max_queued)


def queue_full(settings: Settings, waiting: int) -> ApiError:
    return ApiError(
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
