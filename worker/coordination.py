"""What a worker process does beside running jobs, to coordinate with the
fleet through Redis:

- listen on the workers' channel: ``wake`` (a job was enqueued: poll now
  rather than at the next poll tick) and ``cancel <id>``;
- renew the leases of the chats it runs;
- reap lapsed leases (a worker died): drop arq's in-progress key for the job,
  so that the next poll of any worker runs it again, at once rather than after
  arq's ``job_timeout + 10 s``.
"""

from __future__ import annotations

import asyncio
import logging

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.settings import Settings
from worker import metrics
from worker.generation import Generator

log = logging.getLogger("tokenfan.worker")


class Coordinator:
    def __init__(self, redis: Redis, generator: Generator, settings: Settings) -> None:
        self.redis = redis
        self.generator = generator
        self.settings = settings
        self.work_available = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="tokenfan-worker-listen"),
            asyncio.create_task(self._renew_leases(), name="tokenfan-worker-leases"),
            asyncio.create_task(self._reap(), name="tokenfan-worker-reaper"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_for_work(self, timeout: float) -> None:
        """The worker's poll sleep, cut short by a ``wake`` nudge."""
        try:
            async with asyncio.timeout(timeout):
                await self.work_available.wait()
        except TimeoutError:
            pass
        self.work_available.clear()

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.WORKERS_CHANNEL)
            while True:
                try:
                    message = await pubsub.get_message(timeout=5.0)
                except (RedisError, OSError) as exc:
                    # get_message reconnects and resubscribes on the next call;
                    # a nudge missed meanwhile is covered by the poll.
                    log.warning("workers channel: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                if message is None:
                    continue
                data: bytes = message["data"]
                if data == b"wake":
                    self.work_available.set()
                elif data.startswith(b"cancel "):
                    self.generator.cancel(data[7:].decode())
        finally:
            await pubsub.aclose()

    async def _renew_leases(self) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.generator.store.renew_leases(
                    self.generator.running, self.generator.lease_ms, in_progress_key_prefix
                )
            except (RedisError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                reaped = await self.generator.store.reap_lapsed(in_progress_key_prefix)
            except (RedisError, OSError) as exc:
                log.warning("reaper failed: %s", exc)
                continue
            if reaped:
                metrics.LEASES_REAPED.inc(len(reaped))
                log.warning("lease lapsed, handing on: %s", ", ".join(reaped))
                self.work_available.set()
