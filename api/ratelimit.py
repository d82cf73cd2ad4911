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

PREFIX = "tf:ratelimit:"

# KEYS: bucket   ARGV: rate (tokens/s), burst, cost
# Returns {allowed (0/1), ms until the cost is available}
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait_ms = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, wait_ms}
"""


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
        allowed, wait_ms = await self._take(keys=[PREFIX + key], args=[self.rate, self.burst, cost])
        if int(allowed):
            return Verdict(True, 0)
        return Verdict(False, max(1, math.ceil(int(wait_ms) / 1000)))
