"""Connection pools under load (issue 12, item 7): a caller that finds every
connection of a bounded pool in use waits for one; waiting costs time, never
an error (which became a worker_lost reset in the worker, a 503 in the API)."""

from __future__ import annotations

import asyncio

import pytest

from api.services import Services
from shared.settings import Settings
from tests.waiting import eventually
from worker.arq_worker import connect

pytestmark = pytest.mark.anyio

HOLD_S = 1.0  # a slow user of every connection: longer than redis_timeout_s below


async def _hold_every_connection(pool, released: asyncio.Event) -> None:
    connections = [await pool.get_connection() for _ in range(pool.max_connections)]
    await released.wait()
    for connection in connections:
        await pool.release(connection)


async def _waits_for_a_connection(client) -> None:
    pool = client.connection_pool
    released = asyncio.Event()
    holder = asyncio.create_task(_hold_every_connection(pool, released))
    await eventually(lambda: len(pool._in_use_connections) == pool.max_connections)
    pings = asyncio.gather(*(client.ping() for _ in range(3)))
    loop = asyncio.get_running_loop()
    loop.call_later(HOLD_S, released.set)  # the slow user lets go after a while
    assert await asyncio.wait_for(pings, timeout=30) == [True, True, True]
    await holder


async def test_the_workers_pool_makes_callers_wait(redis_url):
    client = connect(Settings(redis_url=redis_url, redis_timeout_s=0.2))
    try:
        await _waits_for_a_connection(client)
    finally:
        await client.aclose(close_connection_pool=True)


async def test_the_apis_pool_makes_callers_wait(redis_url):
    services = Services.create(Settings(redis_url=redis_url, redis_timeout_s=0.2, api_redis_connections=1))
    try:
        await _waits_for_a_connection(services.redis)
    finally:
        await services.redis.aclose(close_connection_pool=True)
