"""The arq side of the worker: the ``generate`` job, the arq settings that
matter for latency and recovery, and ``TokenfanWorker``, arq's Worker with a
poll sleep a nudge can cut short and a fenced end of each run.

``python -m worker`` runs it. ``arq worker.arq_worker.WorkerSettings`` runs
arq's own Worker: without the nudge (pickup then waits for the poll), and
without the fenced end of a run and the renewal of a job between pickup and
claim, which take-overs need to be safe: use it for experiments only.

**SIGTERM (a deploy).** arq's ``job_completion_wait`` is set to
``worker_shutdown_grace_s`` (5 s): on SIGTERM the worker stops taking jobs,
lets its running generations go on for up to that long (short ones finish
normally, their clients see nothing), then cancels the rest. arq requeues a
cancelled job (``retry_jobs``) and deletes its in-progress key; the
generation's ``finally`` releases its lease; and ``shutdown`` nudges
the other workers, so one of them claims the chat at once, bumps its attempt
and streams the answer again after a ``reset``. The grace period must stay
below the supervisor's own (Docker: 10 s, Kubernetes: 30 s) or the worker is
SIGKILLed mid-grace, which leases still recover from, only later. Every start
counts toward ``max_attempts``, handed-back ones included.

**Two attempts at once.** The reaper hands a chat on when its lease lapses;
if the worker that held it was only stalled (a long pause, a network
partition, a SIGSTOP), it wakes up and is fenced out by the new attempt: its
next append is refused, or its lease renewal finds another attempt owning the
chat. Both runs are runs of one arq job (the job id is the chat id), and
share its keys (queue entry, job key, in-progress key). So arq's end of a
run is fenced on the attempt (``TokenfanWorker.finish_job``,
shared/lua/finish_job.lua): a run whose attempt no longer owns the
chat leaves the job's keys alone (they belong to the run that took over), and
a run that owns the chat never deletes the job while the chat has not ended
(an arq ``job_timeout``, a failure): it hands it back. So a job lives exactly
as long as its chat runs, whatever mix of stalls, SIGTERMs and SIGKILLs its
runs meet, and every hand-on goes through arq's own queue: one run, one
attempt. arq's ``max_tries`` is kept well above ``max_attempts``
(``arq_max_tries``): a start that dies before its claim counts for arq but
not for our attempts, and arq giving up first would drop the job without
ending the chat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from shared import keys, scripts
from shared.settings import Settings, get_settings
from shared.store import ChatStore
from worker import metrics
from worker.abandon import watch_abandoned
from worker.coordination import Coordinator
from worker.generation import Generator
from worker.providers import load_provider
from worker.redis_outage import poll, run_generation

log = logging.getLogger("tokenfan.worker")


async def generate(ctx: dict[str, Any], chat_id: str) -> None:
    with metrics.attempt(chat_id):  # chat_id/attempt on log lines, one line at the end
        await run_generation(ctx, chat_id)  # a Redis outage hands the job back: worker/redis_outage.py


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
    if settings.abandon_after_s > 0:
        ctx["abandon_watch"] = asyncio.create_task(
            watch_abandoned(ctx["redis"], generator, settings.abandon_after_s), name="tokenfan-abandon"
        )
    log.info("worker ready: provider %s, queue %s", settings.provider, settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    """After arq has handed back the jobs it cancelled: stop our tasks and
    nudge the other workers to take those jobs now rather than at their poll."""
    if "coordinator" in ctx:
        await ctx["coordinator"].stop()
    if "metrics_pusher" in ctx:
        await ctx["metrics_pusher"].stop()
    watch = ctx.pop("abandon_watch", None)
    if watch is not None:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    try:
        await ctx["redis"].publish(keys.WORKERS_CHANNEL, "wake")
    except (RedisError, OSError):
        pass


def arq_max_tries(settings: Settings) -> int:
    """arq's limit on starts: far enough above ``max_attempts`` that our own
    attempt limit (an ``error`` event on attempt ``max_attempts + 1``) always
    comes first."""
    return 2 * settings.max_attempts + 5


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
        # stays well above that (arq_max_tries): a start that dies before
        # it claims the chat counts for arq and not for us, and arq dropping the
        # job first would leave the chat unfinished.
        max_tries=arq_max_tries(settings),
        retry_jobs=True,
        keep_result=0,
        health_check_interval=settings.worker_health_check_s,
        # SIGTERM: a grace period, then the rest is handed back (see above).
        job_completion_wait=settings.worker_shutdown_grace_s,
    )


class TokenfanWorker(Worker):
    """arq's Worker, polling when nudged as well as every ``poll_delay``."""

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        self._start_job = self.pool.register_script(scripts.START_JOB)
        if self.on_startup:
            await self.on_startup(self.ctx)
        coordinator: Coordinator = self.ctx["coordinator"]
        while True:
            await poll(self)  # survives Redis going away
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
        #
        # arq's claim itself (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC: four
        # round trips per job, on every new chat's way to its first token) is
        # one script here, shared/lua/start_job.lua, with the same rule.
        job_ids = [j for j in job_ids if not _running(self.tasks.get(j.decode()))]
        if len(job_ids) > 1:
            async with self.pool.pipeline(transaction=False) as pipe:
                for j in job_ids:
                    pipe.exists(keys.in_progress(j.decode()))
                running = await pipe.execute()
            job_ids = [j for j, r in zip(job_ids, running, strict=True) if not r]
        generator = self.ctx.get("generator")
        for job_id_b in job_ids:  # what arq's start_jobs does, but for the claim
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            score = await self._start_job(
                keys=[keys.in_progress(job_id), self.queue_name],
                args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)],
            )
            if not score:  # started elsewhere, finished, or deferred
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
            if generator is not None:  # started here: keep the in-progress key alive until the claim
                generator.job_picked(job_id)

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
        # attempt instead (see above, and shared/lua/finish_job.lua).
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
