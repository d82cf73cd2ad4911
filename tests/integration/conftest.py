"""In-process tests against the session's real redis-server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.store import ChatStore


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis: Redis) -> ChatStore:
    # Small pages, so that every read here crosses page boundaries.
    return ChatStore(redis, ttl_s=120, maxlen=10_000, page_size=7)


async def new_chat(store: ChatStore, prompt: str = "hello", max_tokens: int = 50) -> str:
    chat_id = keys.new_chat_id()
    request = {"messages": [{"role": "user", "content": prompt}], "model": "simulated", "max_tokens": max_tokens}
    await store.create(chat_id, request, model="simulated")
    return chat_id
