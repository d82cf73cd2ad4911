"""Issue 12 item 1: a client that goes away while its join waits for the
SUBSCRIBE confirmation is unregistered, and its channel unsubscribed, like one
that leaves later. Driven through the relay, the code path of every stream."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from api.hub import Hub
from api.relay import relay
from shared import keys
from tests.integration.conftest import new_chat
from tests.waiting import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hub_and_switch(redis_url, store):
    """A hub whose reconnects can be refused (``switch["down"] = True``), as
    while Redis restarts."""
    pool = ConnectionPool.from_url(redis_url, client_name="tokenfan-test-hub-leave")
    switch = {"down": False}

    def connection():
        if switch["down"]:
            raise RedisConnectionError("refused by the test")
        return pool.make_connection()

    hub = Hub(connection, store, queue_size=8, keepalive_s=1.0)
    await hub.start()
    await asyncio.wait_for(hub.connected.wait(), 5)
    yield hub, switch
    switch["down"] = False
    await hub.stop()


async def _consume(hub: Hub, chat_id: str) -> None:
    async for _ in relay(hub, chat_id, 0, retry_ms=1000, already_complete=False):
        pass


async def _numsub(redis, chat_id: str) -> int:
    channel = keys.live(chat_id)
    return dict(await redis.pubsub_numsub(channel))[channel.encode()]


async def test_clients_cancelled_while_their_confirmation_is_held_leave_no_trace(hub_and_switch, store, redis):
    hub, _ = hub_and_switch
    chat_id = await new_chat(store)
    channel = keys.live(chat_id).encode()
    dispatch = hub._dispatch

    def without_confirmations(response):  # the confirmation never arrives
        if response[0] == b"subscribe" and response[1] == channel:
            return
        dispatch(response)

    hub._dispatch = without_confirmations
    clients = [asyncio.create_task(_consume(hub, chat_id)) for _ in range(3)]
    await eventually(lambda: hub.client_count == 3)
    await eventually(lambda: _numsub(redis, chat_id))  # Redis did subscribe; only the answer is held
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    hub._dispatch = dispatch

    assert hub.client_count == 0 and hub.channel_count == 0
    await eventually(lambda: _numsub_is(redis, chat_id, 0))


async def test_clients_that_give_up_while_the_hub_reconnects_are_not_resubscribed(hub_and_switch, store, redis):
    hub, switch = hub_and_switch
    chat_id = await new_chat(store)
    reconnects = hub.reconnects
    switch["down"] = True
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await eventually(lambda: hub.reconnects > reconnects and not hub.connected.is_set())

    clients = [asyncio.create_task(_consume(hub, chat_id)) for _ in range(3)]
    await eventually(lambda: hub.client_count == 3)
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    assert hub.client_count == 0 and hub.channel_count == 0

    switch["down"] = False
    await eventually(hub.connected.is_set)
    # The hub's new connection subscribed its home channel only.
    await eventually(lambda: _home_confirmed(hub))
    assert await _numsub(redis, chat_id) == 0
    assert hub.client_count == 0 and hub.channel_count == 0


def _home_confirmed(hub: Hub) -> bool:
    return hub.connected.is_set() and not hub._unconfirmed


async def _numsub_is(redis, chat_id: str, n: int) -> bool:
    return await _numsub(redis, chat_id) == n
