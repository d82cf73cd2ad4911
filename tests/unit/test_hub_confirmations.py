"""The hub's bookkeeping of SUBSCRIBE confirmations, driven message by message."""

from __future__ import annotations

import asyncio

import pytest

from api.hub import Hub
from shared import keys
from shared.events import Event

pytestmark = pytest.mark.anyio


class Outbox:
    """Stands in for the connection's outbox: records commands in order."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def put_nowait(self, args: tuple) -> None:
        self.sent.append(args)


@pytest.fixture
def hub() -> tuple[Hub, Outbox]:
    hub = Hub(lambda: None, store=None, queue_size=4)  # type: ignore[arg-type]
    outbox = Outbox()
    hub._outbox = outbox  # as if the reader had connected
    return hub, outbox


CHAT = "0" * 32
CHANNEL = keys.live(CHAT).encode()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_rejoin_is_not_confirmed_by_the_previous_subscribe(hub):
    """SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE all in flight: the first confirmation
    answers the first SUBSCRIBE, and must not release the new joiner, whose own
    subscription is not live yet."""
    hub, conn = hub
    first = asyncio.create_task(hub.join(CHAT, 0))
    await settle()
    hub.leave(next(iter(hub._channels[CHANNEL].subscribers)))  # gone before its confirmation
    second = asyncio.create_task(hub.join(CHAT, 0))
    await settle()
    assert [c[0] for c in conn.sent if c[1:] == (CHANNEL,)] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]

    hub._dispatch([b"subscribe", CHANNEL, 1])  # the first SUBSCRIBE's answer
    await settle()
    assert not second.done()
    hub._dispatch([b"unsubscribe", CHANNEL, 0])
    hub._dispatch([b"subscribe", CHANNEL, 1])  # the second's
    await settle()
    assert second.done() and second.result().chat_id == CHAT
    first.cancel()


async def test_live_events_reach_every_local_client_as_one_shared_frame(hub):
    hub, conn = hub
    joins = [asyncio.create_task(hub.join(CHAT, 0)) for _ in range(3)]
    await asyncio.sleep(0)
    hub._dispatch([b"subscribe", CHANNEL, 1])
    subs = [await j for j in joins]
    hub._dispatch([b"message", CHANNEL, b'1 token {"text":"hi"}'])
    frames = [sub._queue[0].frame for sub in subs]
    assert frames[0] == b'id: 1\nevent: token\ndata: {"text":"hi"}\n\n'
    assert all(f is frames[0] for f in frames)  # encoded once per process


async def test_overflow_drops_the_queue_and_asks_for_the_log(hub):
    hub, conn = hub
    join = asyncio.create_task(hub.join(CHAT, 0))
    await asyncio.sleep(0)
    hub._dispatch([b"subscribe", CHANNEL, 1])
    sub = await join
    sub._must_read_log = False
    for seq in range(1, 7):
        hub._dispatch([b"message", CHANNEL, b"%d token {}" % seq])
    assert len(sub._queue) <= hub.queue_size
    assert sub._must_read_log and sub.overflows == 1


async def test_a_join_while_disconnected_waits_for_the_reader(hub):
    hub, conn = hub
    hub._outbox = None  # disconnected: joins wait for the reader
    join = asyncio.create_task(hub.join(CHAT, 0))
    await asyncio.sleep(0)
    assert conn.sent == []
    assert CHANNEL in hub._channels and not join.done()
    join.cancel()


def test_published_events_parse_back():
    event = Event.from_published(b'12 done {"finish_reason":"stop"}')
    assert (event.seq, event.type, event.payload()) == (12, "done", {"finish_reason": "stop"})
    assert event.terminal


async def test_a_join_as_the_last_client_leaves_is_subscribed_after_the_unsubscribe(hub):
    hub, conn = hub
    join = asyncio.create_task(hub.join(CHAT, 0))
    await settle()
    hub._dispatch([b"subscribe", CHANNEL, 1])
    first = await join
    rejoin = asyncio.create_task(hub.join(CHAT, 0))  # scheduled before the leave runs
    hub.leave(first)
    await settle()
    assert [c[0] for c in conn.sent if c[1:] == (CHANNEL,)] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]
    rejoin.cancel()
