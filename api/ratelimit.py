"""A per-key token bucket in Redis, shared by every API process.

Each key (an API key's owner id) has a bucket of ``burst`` tokens refilled at
``rate`` tokens per second; a request takes one. One Lua script reads,
refills, takes and writes the bucket atomically on Redis's clock (so the API
processes' clocks do not matter), and sets the bucket's TTL to the time it
takes to fill up again: an idle key leaves nothing behind. A refused request
learns how long until a token is there (``Retry-After``).

Token bucket rather than a sliding window: it allows short bursts (a page
that opens several chats at once) while holding the long-run rate, and costs
one hash of two fields per key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys, scripts

TAKE = scripts.RATELIMIT_TAKE


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int  # whole seconds, at least 1 when refused


class RateLimiter:
    def __init__(self, redis: Redis, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._take = redis.register_script(TAKE)

    async def take(self, key: str, cost: int = 1) -> Verdict:
        allowed, wait_ms = await self._take(keys=[keys.ratelimit(key)], args=[self.rate, self.burst, cost])
        if int(allowed):
            return Verdict(True, 0)
        return Verdict(False, max(1, math.ceil(int(wait_ms) / 1000)))
