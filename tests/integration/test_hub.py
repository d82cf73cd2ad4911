"""The hub on a real Redis: joins without gaps or duplicates, bounded slow
clients, reconnects (and their backoff), and no channel left subscribed,
however a client leaves."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
async def hub(redis_url, store):
    pool = ConnectionPool.from_url(redis_url, client_name="tokenfan-test-hub")
    hub = Hub(pool.make_connection, store, queue_size=8, keepalive_s=1.0)
    await hub.start()
    await asyncio.wait_for(hub.connected.wait(), 5)
    yield hub
    await hub.stop()


class Writer:
    """Plays a worker: appends numbered tokens to one chat."""

    def __init__(self, store, chat_id: str) -> None:
        self.store = store
        self.chat_id = chat_id
        self.attempt = 0

    @classmethod
    async def start(cls, store) -> Writer:
        writer = cls(store, await new_chat(store))
        writer.attempt = (await store.claim(writer.chat_id, 60_000)).attempt
        return writer

    async def tokens(self, first: int, last: int, pause: float = 0.0) -> None:
        for i in range(first, last + 1):
            await self.store.append(self.chat_id, self.attempt, [("token", {"text": f"{i} "})])
            if pause:
                await asyncio.sleep(pause)  # pacing the simulated worker, not synchronising

    async def done(self) -> None:
        done = ("done", {"finish_reason": "stop", "usage": {}})
        await self.store.append(self.chat_id, self.attempt, [done], {"status": "done"})
        await self.store.release_lease(self.chat_id)


async def read_all(hub: Hub, chat_id: str, after: int = 0, timeout: float = 10) -> list[int]:
    seqs = []
    async with hub.subscribe(chat_id, after) as sub, asyncio.timeout(timeout):
        async for event in sub:
            seqs.append(event.seq)
    return seqs


async def test_a_client_gets_the_log_then_live_events_then_stops_at_done(hub, store):
    writer = await Writer.start(store)
    await writer.tokens(1, 5)
    reader = asyncio.create_task(read_all(hub, writer.chat_id))
    await eventually(lambda: hub.client_count == 1)
    await writer.tokens(6, 10)
    await writer.done()
    assert await reader == list(range(1, 12))


async def test_clients_joining_at_random_moments_get_the_exact_sequence(hub, store):
    writer = await Writer.start(store)
    rng = random.Random(7)

    async def late_reader(after: int) -> list[int]:
        await asyncio.sleep(rng.uniform(0, 0.3))  # join at a random point of the stream
        return await read_all(hub, writer.chat_id, after)

    afters = [0] * 30 + [rng.randint(0, 50) for _ in range(10)]
    readers = [asyncio.create_task(late_reader(after)) for after in afters]
    await writer.tokens(1, 200, pause=0.0015)
    await writer.done()
    results = await asyncio.gather(*readers)
    for after, seqs in zip(afters, results, strict=True):
        assert seqs == list(range(after + 1, 202))


async def test_a_slow_client_is_bounded_and_catches_up_from_the_log(hub, store):
    writer = await Writer.start(store)
    slow = await hub.join(writer.chat_id, 0)
    fast = asyncio.create_task(read_all(hub, writer.chat_id))
    await eventually(lambda: hub.client_count == 2)

    max_queued = 0
    for i in range(1, 101):
        await writer.tokens(i, i)
        max_queued = max(max_queued, len(slow._queue))
    await writer.done()

    assert await fast == list(range(1, 102))  # not held up by the slow one
    assert max_queued <= hub.queue_size
    assert slow.overflows >= 1
    seqs = []
    async for event in slow:
        seqs.append(event.seq)
    hub.leave(slow)
    assert seqs == list(range(1, 102))


async def test_clients_catch_up_after_the_pubsub_connection_is_killed(hub, store, redis):
    writer = await Writer.start(store)
    readers = [asyncio.create_task(read_all(hub, writer.chat_id)) for _ in range(5)]
    await eventually(lambda: hub.client_count == 5)
    await writer.tokens(1, 20)
    reconnects = hub.reconnects

    killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    await writer.tokens(21, 40)  # some of these are published while nobody listens
    await eventually(lambda: hub.reconnects > reconnects)
    await writer.tokens(41, 60)
    await writer.done()

    for reader in readers:
        assert await reader == list(range(1, 62))


async def test_a_missed_live_event_is_filled_from_the_log(hub, store, redis):
    writer = await Writer.start(store)
    reader = asyncio.create_task(read_all(hub, writer.chat_id))
    await eventually(lambda: hub.client_count == 1)
    await writer.tokens(1, 3)
    # Event 4 reaches the log but its PUBLISH is lost.
    await redis.hincrby(keys.meta(writer.chat_id), "last_seq", 1)
    await redis.xadd(keys.log(writer.chat_id), {"t": "token", "d": b'{"text":"4 "}'}, id="4-0")
    await writer.tokens(5, 6)
    await writer.done()
    assert await reader == list(range(1, 8))


async def test_the_last_client_leaving_unsubscribes(hub, store, redis):
    writer = await Writer.start(store)
    channel = keys.live(writer.chat_id)
    subs = [await hub.join(writer.chat_id, 0) for _ in range(3)]
    assert dict(await redis.pubsub_numsub(channel))[channel.encode()] == 1  # one per process, not per client

    for sub in subs:
        hub.leave(sub)

    async def unsubscribed():
        return dict(await redis.pubsub_numsub(channel))[channel.encode()] == 0

    await eventually(unsubscribed)
    assert hub.channel_count == 0


async def test_one_connection_serves_every_client(hub, store, redis):
    writers = [await Writer.start(store) for _ in range(20)]
    subs = [await hub.join(w.chat_id, 0) for w in writers for _ in range(5)]
    clients = await redis.client_list()
    assert sum(1 for c in clients if c["name"] == "tokenfan-test-hub") == 1
    for sub in subs:
        hub.leave(sub)


async def test_a_client_joining_as_the_last_one_leaves_keeps_receiving(hub, store, redis):
    """Found in review: an UNSUBSCRIBE sent after a later SUBSCRIBE left the
    new client confirmed but deaf, its stream stalled for good."""
    writer = await Writer.start(store)
    first = await hub.join(writer.chat_id, 0)
    rejoin = asyncio.create_task(hub.join(writer.chat_id, 0))  # in the same loop turn as the leave
    hub.leave(first)
    second = await rejoin
    channel = keys.live(writer.chat_id)
    assert dict(await redis.pubsub_numsub(channel))[channel.encode()] == 1
    reader = asyncio.create_task(_seqs(second))
    await writer.tokens(1, 3)
    await writer.done()
    assert await asyncio.wait_for(reader, 5) == [1, 2, 3, 4]
    hub.leave(second)


async def _seqs(sub) -> list[int]:
    return [event.seq async for event in sub]


# --- leaving while the join waits (issue 12 item 1) -----------------------------
# Issue 12 item 1: a client that goes away while its join waits for the
# SUBSCRIBE confirmation is unregistered, and its channel unsubscribed, like one
# that leaves later. Driven through the relay, the code path of every stream.


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
    async for _ in relay(hub, chat_id, 0, retry_ms=1000):
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


# --- the reconnect backoff (issue 12 item 13) -------------------------------------
# Issue 12 item 13: the hub's reconnect backoff starts again from its
# minimum once a connection has worked, so a process that saw a few drops over
# its life does not wait 2 s after every later one.


DROPS = 8  # the old backoff reached its 2 s cap after six


def _live(hub: Hub) -> bool:
    """Connected, and the home channel's SUBSCRIBE confirmed."""
    return hub.connected.is_set() and not hub._unconfirmed


@asynccontextmanager
async def live_hub(redis_url: str, store, name: str, keepalive_s: float) -> AsyncIterator[Hub]:
    """A hub of its own, connected and confirmed on entry, stopped on exit."""
    pool = ConnectionPool.from_url(redis_url, client_name=f"tokenfan-test-hub-{name}")
    hub = Hub(pool.make_connection, store, keepalive_s=keepalive_s)
    await hub.start()
    try:
        await eventually(lambda: _live(hub))
        yield hub
    finally:
        await hub.stop()
        await pool.aclose()


async def test_each_drop_of_a_working_connection_reconnects_quickly(redis_url, store, redis):
    async with live_hub(redis_url, store, "backoff", keepalive_s=1.0) as hub:
        took = []
        for _ in range(DROPS):
            reconnects = hub.reconnects
            started = time.monotonic()
            await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await eventually(lambda: hub.reconnects > reconnects and _live(hub), timeout=10)  # noqa: B023
            took.append(time.monotonic() - started)
        # A healthy connection's drop: minimum backoff plus a local reconnect.
        assert max(took[-3:]) < 1.0, [round(t, 2) for t in took]


async def test_a_silent_connection_is_presumed_dead_and_replaced(redis_url, store, redis):
    # A half-open connection answers nothing: Redis paused stands in for it.
    async with live_hub(redis_url, store, "silent", keepalive_s=0.3) as hub:
        writer = await Writer.start(store)
        reader = asyncio.create_task(read_all(hub, writer.chat_id))
        await eventually(lambda: hub.client_count == 1)
        await writer.tokens(1, 5)
        reconnects = hub.reconnects
        await redis.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # PINGs go unanswered for 2 s
        await eventually(lambda: hub.reconnects > reconnects, timeout=5)
        await writer.tokens(6, 10)
        await writer.done()
        assert await reader == list(range(1, 12))
