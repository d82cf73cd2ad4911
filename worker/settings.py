"""The arq side of the worker: the ``generate`` job, the arq settings that
matter for latency and recovery, and a Worker whose poll sleep a nudge can cut
short.

``python -m worker`` runs it. ``arq worker.settings.WorkerSettings`` runs arq's
own Worker: without the nudge (pickup then waits for the poll), and without
the fenced end of a run and the renewal of a job between pickup and claim
(``TokenfanWorker`` below), which take-overs need to be safe: use it for
experiments only."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from redis.asyncio import BlockingConnectionPool

from shared import keys
from shared.settings import Settings, get_settings
from shared.store import ChatStore
from worker import metrics, resilience
from worker.coordination import Coordinator
from worker.generation import Generator
from worker.providers import load_provider

log = logging.getLogger("tokenfan.worker")


async def generate(ctx: dict[str, Any], chat_id: str) -> None:
    with metrics.attempt(chat_id):  # chat_id/attempt on log lines, one line at the end
        await resilience.run_generation(ctx, chat_id)  # Redis outages, fenced attempts: worker/resilience.py


def connect(settings: Settings) -> ArqRedis:
    pool = BlockingConnectionPool.from_url(
        settings.effective_redis_url,
        max_connections=16,
        timeout=settings.redis_pool_timeout_s,  # a wait for a connection is load, not Redis away
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
    pusher = metrics.Pusher(ctx["redis"], generator.running, settings.worker_metrics_interval_s).start()
    ctx.update(generator=generator, coordinator=coordinator, metrics_pusher=pusher)
    await resilience.started(ctx, settings)
    log.info("worker ready: provider %s, queue %s", settings.provider, settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "coordinator" in ctx:
        await ctx["coordinator"].stop()
    if "metrics_pusher" in ctx:
        await ctx["metrics_pusher"].stop()
    await resilience.stopping(ctx)


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
        # writes the final error on attempt max_attempts + 1. arq's own limit
        # stays well above that (worker/resilience.py): a start that dies before
        # it claims the chat counts for arq and not for us, and arq dropping the
        # job first would leave the chat unfinished.
        max_tries=resilience.arq_max_tries(settings),
        retry_jobs=True,
        keep_result=0,
        health_check_interval=settings.worker_health_check_s,
        # SIGTERM: a grace period, then the rest is handed back (worker/resilience.py).
        **resilience.arq_options(settings),
    )


class TokenfanWorker(Worker):
    """arq's Worker, polling when nudged as well as every ``poll_delay``."""

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        coordinator: Coordinator = self.ctx["coordinator"]
        while True:
            await resilience.poll(self)  # survives Redis going away
            await coordinator.wait_for_work(self.poll_delay_s)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # Running jobs stay in the queue's sorted set, and arq checks every id
        # a poll reads with three sequential round trips (WATCH, EXISTS,
        # ZSCORE) before it finds out the job already runs: each poll (one per
        # nudge, so per enqueue) cost O(running jobs) round trips. Measured
        # (bench, 50 chats/s): enqueue -> job start p50 42 -> 8.5 ms. Skip this
        # worker's own jobs without asking Redis, and the fleet's other running
        # jobs with one pipelined EXISTS on their in-progress keys; what is
        # left goes through arq's own claim (WATCH/MULTI on the in-progress
        # key), so a job still starts at most once.
        job_ids = [j for j in job_ids if not _running(self.tasks.get(j.decode()))]
        if len(job_ids) > 1:
            async with self.pool.pipeline(transaction=False) as pipe:
                for j in job_ids:
                    pipe.exists(keys.in_progress(j.decode()))
                running = await pipe.execute()
            job_ids = [j for j, r in zip(job_ids, running, strict=True) if not r]
        await super().start_jobs(job_ids)
        generator = self.ctx.get("generator")
        if generator is not None:
            for j in job_ids:  # started here: keep the in-progress key alive until the claim
                if _running(self.tasks.get(j.decode())):
                    generator.job_picked(j.decode())

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        # Several runs of one job can be alive at once (a stalled worker's and
        # the one that took its chat over); arq's own finish would let any of
        # them delete the job's keys from under the others. Fenced on the
        # attempt instead (worker/resilience.py, shared/scripts.py FINISH_JOB).
        generator = self.ctx.get("generator")
        if generator is None or keep_in_progress is not None:
            return await super().finish_job(
                job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
            )
        attempt = generator.job_ended(job_id)
        outcome = await generator.store.finish_job(self.queue_name, job_id, attempt, incr_score or 0)
        if outcome == 0:
            log.info("chat %s: attempt %d was taken over; the job stays with the new attempt", job_id, attempt)
        elif outcome == 2 and finish:
            log.warning("chat %s: arq ended the job but the chat runs on; handed back", job_id)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        # A run arq failed before it started (max tries, job key gone): not ours to renew any more.
        generator = self.ctx.get("generator")
        if generator is not None:
            generator.job_ended(job_id)
        await super().finish_failed_job(job_id, result_data)


def _running(task: asyncio.Task | None) -> bool:
    return task is not None and not task.done()


def create_worker(settings: Settings | None = None) -> TokenfanWorker:
    settings = settings or get_settings()
    worker = TokenfanWorker(redis_pool=connect(settings), **arq_options(settings))
    # arq's in-progress key lives job_timeout + 10 s and nobody renews it; a
    # worker SIGKILLed between arq's pickup and our claim would hold its job
    # that long. Make it one lease instead: the lease renewal renews it too.
    worker.in_progress_timeout_s = settings.lease_s
    return worker


class WorkerSettings:
    """For the ``arq`` command line."""

    _settings = get_settings()
    locals().update(arq_options(_settings))
    redis_settings = RedisSettings.from_dsn(_settings.effective_redis_url)
