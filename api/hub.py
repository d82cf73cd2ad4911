"""The hub: one pub/sub connection and one reader task per API process, fanning
each chat's live events out to that process's SSE clients.

Joining without a gap or a duplicate (what Centrifugo and Mercure do):
1. register the client and SUBSCRIBE (first local client of the chat), then
   wait until Redis confirms the subscription: from then on every new event
   reaches the client's queue;
2. read the log after the client's last id (in pages);
3. send the log's events, then the queued live ones, skipping every seq at or
   below the last one sent;
4. a live event beyond last+1 means something was missed: read the log.

A client's queue is bounded. When it overflows, the queue is dropped and the
client catches up from the log (step 2 again): memory stays bounded, nothing is
lost, and a slow reader never holds up the reader task. When the pub/sub
connection drops, the hub reconnects, resubscribes, and every client catches
up from the log once its channel is confirmed again.

The pub/sub connection is a raw redis-py ``Connection`` rather than a
``PubSub`` object, so that the hub itself knows which SUBSCRIBE each
confirmation answers (a client may only read the log once *its* subscription
is live) and decides what to resubscribe after a reconnect. Every command for
it goes through one outbox, written by one task, so Redis receives SUBSCRIBE
and UNSUBSCRIBE in the order clients joined and left: a client that joins as
the last one leaves must not have its SUBSCRIBE overtaken by that UNSUBSCRIBE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from api import metrics
from api.liveness import CHAT_EXPIRED, Liveness
from api.subscription import ChatEnded, Subscription
from shared import keys
from shared.errors import TokenfanError
from shared.events import Event
from shared.store import ChatStore

log = logging.getLogger("tokenfan.hub")

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 2.0  # between reconnect attempts


class HubUnavailable(TokenfanError):
    """The pub/sub connection could not confirm a subscription in time."""


class _Channel:
    __slots__ = ("subscribers", "confirmed")

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.confirmed = asyncio.Event()


class Hub:
    def __init__(
        self,
        connection_factory: Callable[[], Connection],
        store: ChatStore,
        *,
        queue_size: int = 256,
        subscribe_timeout_s: float = 5.0,
        keepalive_s: float = 5.0,
        liveness: Liveness | None = None,
        liveness_s: float = 15.0,
    ) -> None:
        self._connection_factory = connection_factory
        self.store = store
        self.queue_size = queue_size
        self.subscribe_timeout_s = subscribe_timeout_s
        self.keepalive_s = keepalive_s
        self.liveness = liveness
        self.liveness_s = liveness_s
        self._watch: asyncio.Task | None = None
        self._channels: dict[bytes, _Channel] = {}
        # SUBSCRIBE commands sent on the current connection and not yet
        # confirmed, per channel. A channel is live for a new client only when
        # every SUBSCRIBE sent for it has been confirmed (an earlier one may
        # belong to a subscription that was dropped meanwhile).
        self._unconfirmed: dict[bytes, int] = {}
        # Commands for the current connection, in order; None while disconnected.
        self._outbox: asyncio.Queue[tuple[bytes | str, ...]] | None = None
        self._conn: Connection | None = None
        self._reader: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._worked = False  # the current connection has confirmed a subscription
        self._heard = 0  # responses read: the keepalive's sign of life

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._reader = asyncio.create_task(self._run(), name="tokenfan-hub-reader")
        if self.liveness is not None:
            self._watch = asyncio.create_task(self._watch_liveness(), name="tokenfan-hub-liveness")

    async def stop(self) -> None:
        for task in (self._watch, self._reader):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._conn:
            await self._conn.disconnect(nowait=True)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def client_count(self) -> int:
        return sum(len(c.subscribers) for c in self._channels.values())

    # --- clients -----------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, chat_id: str, after: int) -> AsyncIterator[Subscription]:
        """``async with hub.subscribe(chat_id, after) as sub: async for event in sub``.

        Entering registers the client and waits until its chat's channel is
        live (``HubUnavailable`` when that takes longer than
        ``subscribe_timeout_s``). Leaving, however it happens (the end of the
        stream, an error, the client going away, even while still waiting for
        the confirmation), unregisters it, and unsubscribes the channel when it
        was the chat's last local client."""
        sub = self.join_nowait(chat_id, after)
        try:
            await self._confirmed(sub)
            yield sub
        finally:
            self.leave(sub)

    async def join(self, chat_id: str, after: int) -> Subscription:
        """Register a client and wait until its channel is live; the caller
        must ``leave`` it. Prefer ``subscribe``, which leaves by itself."""
        sub = self.join_nowait(chat_id, after)
        try:
            await self._confirmed(sub)
        except BaseException:  # a timeout, or the caller cancelled while waiting
            self.leave(sub)
            raise
        return sub

    def join_nowait(self, chat_id: str, after: int) -> Subscription:
        """Register a client (SUBSCRIBE for the chat's first local client);
        its channel may not be live yet."""
        channel = keys.live(chat_id).encode()
        sub = Subscription(self, chat_id, after, self.queue_size)
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
            if self._outbox is not None:  # else the reader subscribes it on (re)connecting
                self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
                self._command("SUBSCRIBE", channel)
        state.subscribers.add(sub)
        return sub

    async def _confirmed(self, sub: Subscription) -> None:
        state = self._channels[keys.live(sub.chat_id).encode()]
        try:
            await asyncio.wait_for(state.confirmed.wait(), self.subscribe_timeout_s)
        except TimeoutError:
            raise HubUnavailable("pub/sub subscription not confirmed in time") from None

    def leave(self, sub: Subscription) -> None:
        channel = keys.live(sub.chat_id).encode()
        state = self._channels.get(channel)
        if state is None or sub not in state.subscribers:
            return
        state.subscribers.discard(sub)
        if not state.subscribers:
            del self._channels[channel]
            self._command("UNSUBSCRIBE", channel)

    # --- liveness (api/liveness.py) -----------------------------------------
    async def _watch_liveness(self) -> None:
        """Every ``liveness_s`` (the heartbeat), check the chats this process's
        clients watch; end the streams of those that can never get an event."""
        assert self.liveness is not None
        while True:
            await asyncio.sleep(self.liveness_s)
            chat_ids = [keys.chat_id_of_channel(channel) for channel in self._channels]
            if not chat_ids:
                continue
            try:
                expired = await self.liveness.check(chat_ids)
            except (RedisError, OSError) as exc:
                log.warning("liveness check failed: %s", exc)
                continue
            except Exception:
                log.exception("liveness check failed")
                continue
            for chat_id in expired:
                state = self._channels.get(keys.live(chat_id).encode())
                for sub in state.subscribers if state else ():
                    sub._end(ChatEnded(CHAT_EXPIRED, "this chat has expired: it can send no more events"))

    # --- the connection ----------------------------------------------------
    def _command(self, *args: bytes | str) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(args)

    @staticmethod
    async def _write(conn: Connection, outbox: asyncio.Queue) -> None:
        try:
            while True:
                args = await outbox.get()
                await conn.send_command(*args, check_health=False)
        except (RedisError, OSError):
            pass  # the reader sees the broken connection and reconnects

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            self._worked = False
            try:
                await self._connect_and_read()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("hub pub/sub connection lost: %s; reconnecting", exc)
            except Exception:
                log.exception("hub reader failed; reconnecting")
            self.connected.clear()
            self._outbox = None
            conn, self._conn = self._conn, None
            self._unconfirmed.clear()
            for state in self._channels.values():
                state.confirmed.clear()
            if conn is not None:
                await conn.disconnect(nowait=True)
            self.reconnects += 1
            if self._worked:
                # The connection had been serving (Redis confirmed a
                # subscription on it): this drop is news, not a server still
                # refusing us. Only failed attempts in a row back off.
                backoff = BACKOFF_MIN_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _connect_and_read(self) -> None:
        conn = self._connection_factory()
        await conn.connect()
        # No await between opening the outbox and listing the channels: a
        # client joining from now on queues its own SUBSCRIBE behind this one,
        # one that joined before is in this list.
        self._conn = conn
        self._outbox = asyncio.Queue()
        channels = [keys.HUB_CHANNEL, *self._channels]
        for channel in channels:
            self._unconfirmed[channel] = 1
        self._command("SUBSCRIBE", *channels)
        writer = asyncio.create_task(self._write(conn, self._outbox), name="tokenfan-hub-writer")
        keepalive = asyncio.create_task(self._keep_alive(conn), name="tokenfan-hub-keepalive")
        self.connected.set()
        try:
            while True:
                # No read timeout: a timeout per read costs a timer per message
                # on the hottest path; _keep_alive watches for silence instead.
                response = await conn.read_response()
                self._heard += 1
                self._dispatch(response)
        finally:
            writer.cancel()
            keepalive.cancel()

    async def _keep_alive(self, conn: Connection) -> None:
        """PING a connection that has been quiet for ``keepalive_s``; close it
        when it stays silent for two intervals in a row (a dead peer behind a
        half-open TCP connection): the reader's read then fails, and it reconnects."""
        heard, silent = -1, 0
        while True:
            await asyncio.sleep(self.keepalive_s)
            if self._heard != heard:
                heard, silent = self._heard, 0
                continue
            silent += 1
            if silent >= 2:
                log.warning("hub pub/sub connection silent for %.0f s; presumed dead", 2 * self.keepalive_s)
                await conn.disconnect(nowait=True)
                return
            self._command("PING")

    def _dispatch(self, response: list) -> None:
        kind = response[0]
        if kind == b"message":
            state = self._channels.get(response[1])
            if state is None:
                return  # unsubscribed meanwhile
            event = Event.from_published(response[2])
            if not event.seq & metrics.LAG_SAMPLE_MASK:
                event.received = time.monotonic()
            for sub in state.subscribers:
                sub._push(event)
        elif kind == b"subscribe":
            channel = response[1]
            self._worked = True
            left = self._unconfirmed.get(channel, 0) - 1
            if left > 0:
                self._unconfirmed[channel] = left
                return
            self._unconfirmed.pop(channel, None)
            state = self._channels.get(channel)
            if state is not None and not state.confirmed.is_set():
                state.confirmed.set()
                # After a reconnect: whatever was published while the channel
                # was not subscribed is in the log.
                for sub in state.subscribers:
                    sub._resync()
        # "unsubscribe" and "pong" need nothing.
