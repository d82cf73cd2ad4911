"""Cancelling the chats nobody reads any more.

(``abandon_after_s`` > 0, off by default): every second,
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

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys

log = logging.getLogger("tokenfan.worker")

ABANDON_CHECK_S = 1.0


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
