"""The secret that signs stream tokens (api/tokens.py), shared by every API
process of a deployment through Redis when ``TOKENFAN_SECRET`` is unset.

The first process to start creates one (``SET NX``) and the others adopt it.
Redis can lose it (a restart without persistence, a failover to a replica
that never had it); a process started afterwards would then create another,
and the tokens the older processes had signed would get 401 there. So every
process puts its secret back within a second of it going missing (``SET NX``
again, from a background task), and a process that finds another secret in
Redis signs with that one from then on while still accepting tokens signed
with the ones it knew: every token issued in the last ``stream_token_ttl_s``
stays valid on every process. (Left open: a process that starts within that
second, before anybody put the secret back, has a secret of its own until the
others adopt it: tokens older processes signed before are refused there.)
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api import tokens
from shared import keys

log = logging.getLogger("tokenfan.api")

CHECK_S = 1.0


class StreamSecret:
    def __init__(self, redis: Redis, configured: str | None) -> None:
        self.redis = redis
        # Newest first: the first signs, every one verifies.
        self._known: list[bytes] = [configured.encode()] if configured else []
        self._configured = bool(configured)
        self._task: asyncio.Task | None = None

    async def current(self) -> bytes:
        """The secret to sign with."""
        if not self._known:
            await self._sync()
        return self._known[0]

    def current_is(self, secret: bytes) -> bool:
        return bool(self._known) and self._known[0] == secret

    async def verify(self, chat_id: str, token: str) -> bool:
        if not self._known:
            await self._sync()
        return any(tokens.verify(secret, chat_id, token) for secret in self._known)

    def start(self) -> None:
        if not self._configured and self._task is None:
            self._task = asyncio.create_task(self._keep(), name="tokenfan-stream-secret")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sync(self) -> None:
        """Put ours back if Redis lost it (or make one), then adopt what Redis holds."""
        mine = self._known[0] if self._known else secrets.token_hex(32).encode()
        await self.redis.set(keys.SECRET, mine, nx=True)
        shared = await self.redis.get(keys.SECRET)
        if shared is not None and shared not in self._known:
            if self._known:
                log.warning("the stream-token secret in Redis changed; signing with it, still accepting the old one")
            self._known.insert(0, shared)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            try:
                await self._sync()
            except (RedisError, OSError):
                pass  # Redis away: try again next second
