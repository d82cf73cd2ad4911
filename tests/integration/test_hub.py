"""The hub on a real Redis: joins without gaps or duplicates, bounded slow
clients, reconnects, and no channel left subscribed."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import ConnectionPool

from api.hub import Hub
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
