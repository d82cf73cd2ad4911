"""Issue 12 item 13: the hub's reconnect backoff starts again from its
minimum once a connection has worked, so a process that saw a few drops over
its life does not wait 2 s after every later one."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import ConnectionPool

from api.hub import Hub
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

DROPS = 8  # the old backoff reached its 2 s cap after six


def _live(hub: Hub) -> bool:
    """Connected, and the home channel's SUBSCRIBE confirmed."""
    return hub.connected.is_set() and not hub._unconfirmed


async def test_each_drop_of_a_working_connection_reconnects_quickly(redis_url, store, redis):
    pool = ConnectionPool.from_url(redis_url, client_name="tokenfan-test-hub-backoff")
    hub = Hub(pool.make_connection, store, keepalive_s=1.0)
    await hub.start()
    try:
        await eventually(lambda: _live(hub))
        took = []
        for _ in range(DROPS):
            reconnects = hub.reconnects
            started = time.monotonic()
            await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await eventually(lambda: hub.reconnects > reconnects and _live(hub), timeout=10)  # noqa: B023
            took.append(time.monotonic() - started)
        # A healthy connection's drop: minimum backoff plus a local reconnect.
        assert max(took[-3:]) < 1.0, [round(t, 2) for t in took]
    finally:
        await hub.stop()
        await pool.aclose()
