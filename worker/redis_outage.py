"""A worker and Redis going away (a restart, a failover).

Without this, arq's poll loop raises
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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq.worker import Retry, Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("tokenfan.worker")

REDIS_WAIT_S = 30.0
POLL_ERROR_PAUSE_S = 0.5


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
