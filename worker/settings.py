"""The arq side of the worker: the ``generate`` job, the arq settings that
matter for latency and recovery, and a Worker whose poll sleep a nudge can cut
short.

``python -m worker`` runs it; ``arq worker.settings.WorkerSettings`` works too
(without the nudge: pickup then waits for the poll)."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from redis.asyncio import BlockingConnectionPool

from shared.settings import Settings, get_settings
from shared.store import ChatStore
from worker.coordination import Coordinator
from worker.generation import Generator
from worker.providers import load_provider

log = logging.getLogger("tokenfan.worker")


async def generate(ctx: dict[str, Any], chat_id: str) -> None:
    await ctx["generator"].run(chat_id)


def connect(settings: Settings) -> ArqRedis:
    pool = BlockingConnectionPool.from_url(
        settings.effective_redis_url,
        max_connections=16,
        timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        client_name="tokenfan-worker",
    )
    return ArqRedis(connection_pool=pool)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    store = ChatStore(ctx["redis"], ttl_s=settings.stream_ttl_s, maxlen=settings.log_maxlen)
    generator = Generator(store, load_provider(settings), settings)
    coordinator = Coordinator(ctx["redis"], generator, settings)
    await coordinator.start()
    ctx.update(generator=generator, coordinator=coordinator)
    log.info("worker ready: provider %s, queue %s", settings.provider, settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "coordinator" in ctx:
        await ctx["coordinator"].stop()


def arq_options(settings: Settings) -> dict[str, Any]:
    return dict(
        functions=[generate],
        queue_name=settings.queue_name,
        on_startup=startup,
        on_shutdown=shutdown,
        # Pickup latency is the user's wait; the nudge makes most pickups
        # immediate, the poll covers a missed nudge.
        poll_delay=settings.poll_delay_s,
        max_jobs=settings.worker_max_jobs,
        # Generations are long-running: the job timeout bounds the longest
        # one. Recovery from a dead worker does not wait for it (leases do).
        job_timeout=settings.job_timeout_s,
        # Running jobs stay in the queue's sorted set: read past all of them.
        queue_read_limit=max(1000, 10 * settings.worker_max_jobs),
        # Every start counts, SIGTERM cancellations included; the job itself
        # writes the final error on attempt max_attempts + 1.
        max_tries=settings.max_attempts + 1,
        retry_jobs=True,
        keep_result=0,
        health_check_interval=settings.worker_health_check_s,
    )


class TokenfanWorker(Worker):
    """arq's Worker, polling when nudged as well as every ``poll_delay``."""

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        coordinator: Coordinator = self.ctx["coordinator"]
        while True:
            await self._poll_iteration()
            await coordinator.wait_for_work(self.poll_delay_s)


def create_worker(settings: Settings | None = None) -> TokenfanWorker:
    settings = settings or get_settings()
    return TokenfanWorker(redis_pool=connect(settings), **arq_options(settings))


class WorkerSettings:
    """For the ``arq`` command line."""

    _settings = get_settings()
    locals().update(arq_options(_settings))
    redis_settings = RedisSettings.from_dsn(_settings.effective_redis_url)
