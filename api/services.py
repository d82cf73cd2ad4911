"""What one API process holds: its Redis connections, the chat store, the hub
and the queue client. Built in the app's lifespan.

Connections: a bounded ``BlockingConnectionPool`` shared by every request
(log reads, enqueue, metadata), so that a burst of clients waits for a
connection instead of opening one each, plus the hub's single pub/sub
connection."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool, ConnectionPool

from api.hub import Hub
from api.liveness import Liveness
from api.stream_secret import StreamSecret
from shared.settings import Settings
from shared.store import ChatStore


@dataclass
class Services:
    settings: Settings
    redis: ArqRedis
    store: ChatStore
    hub: Hub
    secret: StreamSecret = field(init=False)

    def __post_init__(self) -> None:
        self.secret = StreamSecret(self.redis, self.settings.secret)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        name = f"tokenfan-api-{os.getpid()}"
        url = settings.effective_redis_url
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=settings.api_redis_connections,
            timeout=settings.redis_pool_timeout_s,  # a wait for a connection is load, not Redis away
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            client_name=name,
        )
        redis = ArqRedis(connection_pool=pool)
        store = ChatStore(
            redis, ttl_s=settings.stream_ttl_s, maxlen=settings.log_maxlen, page_size=settings.log_page_size
        )
        hub_pool = ConnectionPool.from_url(
            url, socket_connect_timeout=settings.redis_timeout_s, client_name=f"{name}-hub"
        )
        hub = Hub(
            hub_pool.make_connection,
            store,
            queue_size=settings.client_queue_size,
            # Streams whose chat can no longer finish end, checked at heartbeat cadence.
            liveness=Liveness(store, grace_s=settings.stall_grace_s),
            liveness_s=settings.heartbeat_s,
        )
        return cls(settings, redis, store, hub)

    async def start(self) -> None:
        await self.hub.start()
        self.secret.start()

    async def close(self) -> None:
        await self.secret.stop()
        await self.hub.stop()
        await self.redis.aclose(close_connection_pool=True)
