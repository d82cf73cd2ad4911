"""The one rule that ends streams whose chat can no longer finish.

A stream ends on its chat's terminal event. A chat that will never get one
would keep its streams open on heartbeats forever, so the hub checks the chats
its clients watch, every heartbeat (never per token), in one round trip:

- the chat's metadata is gone (expired, or lost with Redis's data): nothing
  can ever be appended; the hub ends its local streams with an ``error`` of
  code ``chat_expired`` (no ``id``: the log is gone too).
- the chat is not finished, yet nothing can run it: no arq job for it
  (``arq:job:<id>``: queued or running; the job id is the chat id), no arq
  in-progress key, and no live lease in ``tf:running``. arq dropped the job
  (``max_tries``, ``job_timeout``, the job key's expiry) or it was never
  enqueued. The API ends the chat itself with a terminal ``error`` event of
  code ``chat_stalled``, appended through the fenced append script as the
  attempt it saw: every stream, in every process, and ``GET /chat/{id}`` then
  agree, and if a worker claimed the chat meanwhile the append is refused.

A worker between arq's pickup and its claim holds the in-progress key, and
``POST /chat`` records a chat a moment before it enqueues it: a verdict is
acted on only when two consecutive checks agree on it, and a stalled one only
after it has held for ``grace_s`` as well.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared import keys
from shared.events import EventType
from shared.store import FINISHED, ChatStore, terminal_meta

log = logging.getLogger("tokenfan.api")

# Chats per MULTI: a process watching thousands never blocks Redis for long.
SNAPSHOT_CHATS = 500

CHAT_EXPIRED = "chat_expired"
CHAT_STALLED = "chat_stalled"


@dataclass(frozen=True, slots=True)
class _Suspect:
    verdict: str  # CHAT_EXPIRED or CHAT_STALLED
    attempt: int
    since: float  # monotonic, first check that saw it


class Liveness:
    def __init__(self, store: ChatStore, *, grace_s: float) -> None:
        self.store = store
        self.grace_s = grace_s
        self._suspects: dict[str, _Suspect] = {}

    async def check(self, chat_ids: list[str]) -> list[str]:
        """One check of these chats. Ends the stalled ones (appends their
        terminal error); returns the expired ones, whose streams the caller
        ends."""
        rows = []
        for start in range(0, len(chat_ids), SNAPSHOT_CHATS):
            rows += await self._snapshot(chat_ids[start : start + SNAPSHOT_CHATS])
        now = time.monotonic()
        previous, self._suspects = self._suspects, {}
        expired: list[str] = []
        for chat_id, (status, attempt, jobs, lease_until, now_ms) in zip(chat_ids, rows, strict=True):
            if status is None:
                verdict = CHAT_EXPIRED
            elif status.decode() in FINISHED or jobs or (lease_until is not None and lease_until >= now_ms):
                continue  # it ends, or something runs it
            else:
                verdict = CHAT_STALLED
            suspect = _Suspect(verdict, int(attempt or 0), now)
            seen = previous.get(chat_id)
            if seen is not None and (seen.verdict, seen.attempt) == (suspect.verdict, suspect.attempt):
                suspect = seen  # the same verdict on consecutive checks: keep when it was first seen
                if verdict == CHAT_EXPIRED:
                    expired.append(chat_id)
                    continue
                if now - seen.since >= self.grace_s:
                    await self._end_stalled(chat_id, suspect.attempt)
                    continue
            self._suspects[chat_id] = suspect
        return expired

    async def _snapshot(self, chat_ids: list[str]) -> list[tuple]:
        """(status, attempt, arq keys, lease expiry, Redis time in ms) per
        chat, read atomically (MULTI): a worker's claim is either wholly
        before it or wholly after it."""
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            for chat_id in chat_ids:
                pipe.hmget(keys.meta(chat_id), ["status", "attempt"])
                pipe.exists(keys.job(chat_id), keys.in_progress(chat_id))
                pipe.zscore(keys.RUNNING, chat_id)
            (seconds, micros), *replies = await pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        return [(*replies[i], replies[i + 1], replies[i + 2], now_ms) for i in range(0, len(replies), 3)]

    async def _end_stalled(self, chat_id: str, attempt: int) -> None:
        error = (
            EventType.ERROR,
            {"code": CHAT_STALLED, "message": "the chat can no longer finish: no job, no worker and no lease holds it"},
        )
        result = await self.store.append(chat_id, attempt, [error], terminal_meta(*error))
        if result.accepted:
            log.warning("chat %s: stalled (no job, no lease); ended with %s", chat_id, CHAT_STALLED)
        else:  # a worker claimed it, or it ended, meanwhile
            log.info("chat %s: stall check refused (%d)", chat_id, result.seq)
