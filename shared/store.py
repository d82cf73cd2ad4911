"""A chat's state in Redis: its metadata, its append-only event log and the
scripts that change them. The API and the worker both go through here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from shared import keys, scripts
from shared.errors import TokenfanError
from shared.events import Event, EventType, encode
from shared.script_batch import ScriptBatch

FINISHED = frozenset({"done", "error"})

# Why an append was refused (the script's negative return values).
FENCED, MISSING, ALREADY_FINISHED = -1, -2, -3


class LogExpired(TokenfanError):
    """The events a reader asked for were trimmed from the log."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int  # the last seq written, or a negative refusal code
    cancelled: bool

    @property
    def accepted(self) -> bool:
        return self.seq >= 0


class QueueFull(TokenfanError):
    """Admission refused a chat: this many already wait for a worker."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} chats are waiting for a worker")
        self.waiting = waiting


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """An arq job as arq's ``enqueue_job`` writes it, for ``ChatStore.submit``."""

    queue_name: str
    payload: bytes  # arq.jobs.serialize_job(...)
    score_ms: int  # when it may run: its enqueue time
    expires_ms: int  # the job key's lifetime
    max_queued: int = 0  # admission: refuse when this many wait (0: no limit)


@dataclass(frozen=True, slots=True)
class Claim:
    previous_status: str  # "queued", "running", "done", "error" or "missing"
    attempt: int  # 0: nothing to run
    last_seq: int
    request: dict[str, Any] | None = None  # what to run (with attempt > 0)


class ChatStore:
    def __init__(self, redis: Redis, *, ttl_s: int, maxlen: int, page_size: int = 200) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        self.page_size = page_size
        self._append = ScriptBatch(redis, scripts.APPEND)  # group commit across chats
        self._claim = redis.register_script(scripts.CLAIM)
        self._renew = redis.register_script(scripts.RENEW)
        self._reap = redis.register_script(scripts.REAP)
        self._finish_job = redis.register_script(scripts.FINISH_JOB)
        self._submit = redis.register_script(scripts.SUBMIT)
        self._release = redis.register_script(scripts.RELEASE)

    # --- metadata ----------------------------------------------------------
    def _new_meta(self, request: dict[str, Any], model: str, owner: str) -> dict[str, bytes | str | int]:
        return {
            "status": "queued",
            "created_at": f"{time.time():.3f}",
            "model": model,
            "owner": owner,
            "attempt": 0,
            "last_seq": 0,
            "request": orjson.dumps(request),
        }

    async def create(self, chat_id: str, request: dict[str, Any], *, model: str, owner: str = "") -> None:
        """Record a chat without enqueueing it (tests, tools); ``submit`` does both."""
        key = keys.meta(chat_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=self._new_meta(request, model, owner))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def submit(self, chat_id: str, request: dict[str, Any], job: QueuedJob, *, model: str, owner: str) -> None:
        """Record a chat and enqueue its job at once (shared/lua/submit.lua);
        ``QueueFull`` when ``job.max_queued`` chats already wait."""
        args: list[bytes | str | int] = [
            *(chat_id, job.max_queued, self.ttl_s, job.payload, job.expires_ms, job.score_ms, keys.WORKERS_CHANNEL),
            *(x for pair in self._new_meta(request, model, owner).items() for x in pair),
        ]
        verdict, waiting = await self._submit(
            keys=[keys.meta(chat_id), keys.job(chat_id), keys.result(chat_id), job.queue_name, keys.RUNNING], args=args
        )
        if verdict == b"queue_full":
            raise QueueFull(int(waiting))
        if verdict != b"ok":  # a job of that id exists: cannot happen with fresh random ids
            raise RuntimeError(f"chat {chat_id}: its job already exists")

    async def meta(self, chat_id: str) -> dict[str, str] | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.meta(chat_id))  # type: ignore[misc]
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    # --- writing (worker, and the API's cancel of a queued chat) -------------
    async def append(
        self,
        chat_id: str,
        attempt: int,
        events: Iterable[tuple[str, dict[str, Any]]],
        meta: dict[str, str] | None = None,
        *,
        lease_ms: int = 0,
    ) -> AppendResult:
        """``lease_ms`` > 0: renew the attempt's lease too (in the same script)."""
        events = list(events)
        args: list[Any] = [attempt, self.ttl_s, self.maxlen, lease_ms, chat_id, len(events)]
        for etype, data in events:
            args += (etype, encode(data))
        for field, value in (meta or {}).items():
            args += (field, value)
        seq, cancelled = await self._append(
            keys=[
                keys.meta(chat_id),
                keys.log(chat_id),
                keys.live(chat_id),
                keys.cancel(chat_id),
                keys.RUNNING,
                keys.in_progress(chat_id),
            ],
            args=args,
        )
        return AppendResult(int(seq), bool(cancelled))

    async def claim(self, chat_id: str, lease_ms: int) -> Claim:
        status, attempt, last_seq, *request = await self._claim(
            keys=[keys.meta(chat_id), keys.RUNNING, keys.in_progress(chat_id)], args=[chat_id, lease_ms]
        )
        stored = orjson.loads(request[0]) if request and request[0] else None
        return Claim(status.decode(), int(attempt), int(last_seq), stored)

    async def renew_leases(self, held: Iterable[tuple[str, int]], lease_ms: int, queue_name: str) -> list[str]:
        """Renew the leases of ``(chat_id, attempt)`` pairs (attempt 0: picked
        up, not claimed yet); returns the chats another attempt owns now."""
        script_keys, args = renew_arguments(held, lease_ms, queue_name)
        if len(script_keys) == 2:
            return []
        return [i.decode() for i in await self._renew(keys=script_keys, args=args)]

    async def finish_job(self, queue_name: str, job_id: str, attempt: int, incr_score: int = 0) -> int:
        """arq's end of one run of a chat's job, fenced on the attempt
        (scripts.FINISH_JOB): 0 left to the attempt that owns it, 1 finished,
        2 handed back."""
        return int(
            await self._finish_job(
                keys=[
                    keys.meta(job_id),
                    keys.in_progress(job_id),
                    keys.job(job_id),
                    keys.retry(job_id),
                    queue_name,
                    keys.ARQ_ABORTS,
                ],
                args=[job_id, attempt, incr_score],
            )
        )

    async def release_lease(self, chat_id: str, attempt: int | None = None) -> None:
        """Drop the chat's lease; with ``attempt``, only while that attempt owns the chat."""
        if attempt is None:
            await self.redis.zrem(keys.RUNNING, chat_id)
        else:
            await self._release(keys=[keys.meta(chat_id), keys.RUNNING], args=[chat_id, attempt])

    async def reap_lapsed(self, limit: int = 100) -> list[str]:
        """Take the chats whose lease lapsed off the running set, and drop
        their jobs' in-progress keys, so that the next worker poll starts them."""
        ids = [i.decode() for i in await self._reap(keys=[keys.RUNNING], args=[limit])]
        if ids:
            await self.redis.delete(*(keys.in_progress(i) for i in ids))
        return ids

    async def request_cancel(self, chat_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.cancel(chat_id), 1, ex=self.ttl_s)
            pipe.publish(keys.WORKERS_CHANNEL, f"cancel {chat_id}")
            await pipe.execute()

    async def cancel_requested(self, chat_id: str) -> bool:
        return bool(await self.redis.exists(keys.cancel(chat_id)))

    # --- reading -----------------------------------------------------------
    async def read_log(self, chat_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """The events after seq ``after``, in pages of ``page_size``.

        Raises LogExpired when the log no longer holds the event right after
        ``after`` (trimmed by MAXLEN): a silent partial replay is worse than
        an error."""
        key = keys.log(chat_id)
        expected = after + 1
        while True:
            entries = await self.redis.xrange(key, min=f"{expected}-0", max="+", count=self.page_size)
            if not entries:
                return
            page = [_event_of_entry(entry_id, fields) for entry_id, fields in entries]
            if page[0].seq != expected:
                raise LogExpired(f"events {expected}..{page[0].seq - 1} are no longer in the log")
            yield page
            if len(entries) < self.page_size:
                return
            expected = page[-1].seq + 1

    async def events(self, chat_id: str, after: int = 0) -> list[Event]:
        return [event async for page in self.read_log(chat_id, after) for event in page]


def renew_arguments(held: Iterable[tuple[str, int]], lease_ms: int, queue_name: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of scripts.RENEW (also called from a worker's renewal thread)."""
    script_keys: list[str] = [keys.RUNNING, queue_name]
    args: list[Any] = [lease_ms]
    for chat_id, attempt in held:
        script_keys += (keys.meta(chat_id), keys.in_progress(chat_id))
        args += (chat_id, attempt)
    return script_keys, args


def _event_of_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(int(entry_id.split(b"-", 1)[0]), fields[b"t"].decode(), fields[b"d"])


def terminal_meta(etype: str, data: dict[str, Any]) -> dict[str, str]:
    """The metadata a terminal event sets, in the same atomic append."""
    if etype == EventType.DONE:
        return {
            "status": "done",
            "finish_reason": data["finish_reason"],
            "usage": orjson.dumps(data.get("usage") or {}).decode(),
        }
    return {"status": "error", "error": orjson.dumps(data).decode()}


async def queue_depth(redis: Redis, queue_name: str) -> tuple[int, int]:
    """(waiting, running): chats waiting for a worker, and chats being generated.
    arq keeps a running job in its queue too, so waiting = entries - running."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue_name)
        pipe.zcard(keys.RUNNING)
        in_queue, running = await pipe.execute()
    return max(0, int(in_queue) - int(running)), int(running)
