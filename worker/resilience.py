"""How a worker process rides out what happens around it.

**SIGTERM (a deploy).** arq's ``job_completion_wait`` is set to
``worker_shutdown_grace_s`` (5 s): on SIGTERM the worker stops taking jobs,
lets its running generations go on for up to that long (short ones finish
normally, their clients see nothing), then cancels the rest. arq requeues a
cancelled job (``retry_jobs``) and deletes its in-progress key; the
generation's ``finally`` releases its lease; and ``stopping`` (on shutdown) nudges
the other workers, so one of them claims the chat at once, bumps its attempt
and streams the answer again after a ``reset``. The grace period must stay
below the supervisor's own (Docker: 10 s, Kubernetes: 30 s) or the worker is
SIGKILLed mid-grace, which leases still recover from, only later. Every start
counts toward ``max_attempts``, handed-back ones included.

**Redis away (a restart, a failover).** Without this, arq's poll loop raises
``ConnectionError`` out of the worker's main task and the process exits, and
a generation whose append fails ends its arq job as *failed*: if Redis is
back by the time arq records that, the job is deleted while the chat is
still ``running``, and nobody ever finishes it. So:

- ``poll`` survives Redis errors in the poll loop (logged, retried after a
  short pause);
- ``run_generation`` turns a Redis error inside a generation into arq's
  ``Retry``: it first waits (up to ``REDIS_WAIT_S``) for Redis to answer, so
  that arq can requeue the job, and the next attempt resumes the chat with a
  ``reset``. If Redis stays away longer, the chat's lease lapses and the
  reaper hands the job on when Redis is back.

**Two attempts at once.** The reaper hands a chat on when its lease lapses;
if the worker that held it was only stalled (a long pause, a network
partition, a SIGSTOP), it wakes up and is fenced out by the new attempt: its
next append is refused, or its lease renewal finds another attempt owning the
chat. Both runs are runs of one arq job (the job id is the chat id), and
share its keys (queue entry, job key, in-progress key). So arq's end of a
run is fenced on the attempt (``TokenfanWorker.finish_job``,
shared/scripts.py ``FINISH_JOB``): a run whose attempt no longer owns the
chat leaves the job's keys alone (they belong to the run that took over), and
a run that owns the chat never deletes the job while the chat has not ended
(an arq ``job_timeout``, a failure): it hands it back. So a job lives exactly
as long as its chat runs, whatever mix of stalls, SIGTERMs and SIGKILLs its
runs meet, and every hand-on goes through arq's own queue: one run, one
attempt. arq's ``max_tries`` is kept well above ``max_attempts``
(``arq_max_tries``): a start that dies before its claim counts for arq but
not for our attempts, and arq giving up first would drop the job without
ending the chat.

**Abandoned chats** (``abandon_after_s`` > 0, off by default): every second,
one ``PUBSUB NUMSUB`` tells how many API processes are subscribed to each
running chat's channel. A hub is subscribed exactly while it has a client for
the chat (a stream or a waiting non-streamed completion), so a count of 0 for
``abandon_after_s`` (counted from when this worker started the chat) means
nobody is reading: the generation is cancelled and ends with ``done`` /
``finish_reason: "cancelled"``, as a ``DELETE`` would end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq.worker import Retry, Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.settings import Settings

log = logging.getLogger("tokenfan.worker")

REDIS_WAIT_S = 30.0
POLL_ERROR_PAUSE_S = 0.5
ABANDON_CHECK_S = 1.0


def arq_options(settings: Settings) -> dict[str, Any]:
    return {"job_completion_wait": settings.worker_shutdown_grace_s}


def arq_max_tries(settings: Settings) -> int:
    """arq's limit on starts: far enough above ``max_attempts`` that our own
    attempt limit (an ``error`` event on attempt ``max_attempts + 1``) always
    comes first."""
    return 2 * settings.max_attempts + 5


# --- Redis away ------------------------------------------------------------------


async def poll(worker: Worker) -> None:
    """One arq poll iteration that a Redis outage does not end the worker with."""
    try:
        await worker._poll_iteration()
    except (RedisError, ConnectionError) as exc:
        log.warning("poll failed (%s: %s); retrying", type(exc).__name__, exc)
        await asyncio.sleep(POLL_ERROR_PAUSE_S)


async def wait_for_redis(redis: Redis, timeout_s: float = REDIS_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await redis.ping()
            return True
        except (RedisError, OSError):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)


async def run_generation(ctx: dict[str, Any], chat_id: str) -> None:
    generator = ctx["generator"]
    try:
        await generator.run(chat_id)
    except (RedisError, OSError) as exc:
        log.warning("chat %s: Redis failed mid-generation (%r); handing the job back", chat_id, exc)
        back = await wait_for_redis(ctx["redis"])
        if not back:
            log.warning("chat %s: Redis still away; its lease will hand it on", chat_id)
        raise Retry(defer=0) from exc


# --- start and stop --------------------------------------------------------------


async def started(ctx: dict[str, Any], settings: Settings) -> None:
    if settings.abandon_after_s > 0:
        ctx["abandon_watch"] = asyncio.create_task(
            watch_abandoned(ctx["redis"], ctx["generator"], settings.abandon_after_s), name="tokenfan-abandon"
        )


async def stopping(ctx: dict[str, Any]) -> None:
    """After arq has handed back the jobs it cancelled: stop our tasks and
    nudge the other workers to take those jobs now rather than at their poll."""
    for name in ("abandon_watch",):
        task = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    try:
        await ctx["redis"].publish(keys.WORKERS_CHANNEL, "wake")
    except (RedisError, OSError):
        pass


# --- abandoned chats -------------------------------------------------------------


async def watch_abandoned(redis: Redis, generator: Any, after_s: float, interval_s: float = ABANDON_CHECK_S) -> None:
    watched_at: dict[str, float] = {}  # chat id -> last time a client was seen (or the chat started here)
    while True:
        await asyncio.sleep(interval_s)
        running = list(generator.running)
        now = time.monotonic()
        for chat_id in set(watched_at) - set(running):
            del watched_at[chat_id]
        if not running:
            continue
        for chat_id in running:
            watched_at.setdefault(chat_id, now)
        try:
            counts = await redis.pubsub_numsub(*(keys.live(c) for c in running))
        except (RedisError, OSError) as exc:
            log.warning("abandoned-chat check failed: %s", exc)
            continue
        for channel, subscribers in counts:
            if int(subscribers) > 0:
                name = channel.decode() if isinstance(channel, bytes) else channel
                watched_at[keys.chat_id_of_channel(name.encode())] = now
        for chat_id in running:
            if now - watched_at.get(chat_id, now) >= after_s:
                log.info("chat %s: no client for %.0f s; cancelling it (abandon_after_s)", chat_id, after_s)
                generator.cancel(chat_id)
