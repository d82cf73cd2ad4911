"""Issue 12 item 12: with ``TOKENFAN_SECRET`` unset, a stream token signed by
one API process is accepted by every other, also by one started after Redis
lost the shared secret."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from api import tokens
from api.stream_secret import StreamSecret
from shared import keys
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

CHAT = "a" * 32


@pytest.fixture
async def fresh(redis: Redis):
    await redis.delete(keys.SECRET)
    yield
    await redis.delete(keys.SECRET)


async def test_a_process_started_after_redis_lost_the_secret_accepts_older_tokens(redis, fresh):
    older = StreamSecret(redis, None)
    token = tokens.sign(await older.current(), CHAT, ttl_s=600)
    older.start()
    try:
        await redis.delete(keys.SECRET)  # Redis restarted without it
        await eventually(lambda: redis.exists(keys.SECRET), timeout=5)  # put back by the older process
        newer = StreamSecret(redis, None)
        assert await newer.verify(CHAT, token)
        assert await newer.current() == await older.current()
    finally:
        await older.stop()


async def test_a_process_that_finds_another_secret_signs_with_it_and_still_accepts_its_own(redis, fresh):
    process = StreamSecret(redis, None)
    own = tokens.sign(await process.current(), CHAT, ttl_s=600)
    process.start()
    try:
        await redis.set(keys.SECRET, b"made-by-a-process-that-started-meanwhile")
        await eventually(lambda: process.current_is(b"made-by-a-process-that-started-meanwhile"), timeout=5)
        assert await process.verify(CHAT, own)
        other = tokens.sign(b"made-by-a-process-that-started-meanwhile", CHAT, ttl_s=600)
        assert await process.verify(CHAT, other)
    finally:
        await process.stop()


async def test_a_configured_secret_is_used_as_it_is(redis, fresh):
    process = StreamSecret(redis, "configured")
    assert await process.current() == b"configured"
    assert await process.verify(CHAT, tokens.sign(b"configured", CHAT, ttl_s=60))
    assert not await redis.exists(keys.SECRET)
