"""What a worker process does beside running jobs, to coordinate with the
fleet through Redis:

- listen on the workers' channel: ``wake`` (a job was enqueued: poll now
  rather than at the next poll tick) and ``cancel <id>``;
- renew the leases of the chats it runs, from a thread of its own with a
  connection of its own: a renewal must not wait behind generation work
  (an event loop busy or blocked for seconds, a connection pool emptied by
  appends), or a busy worker loses live chats to a false take-over. The
  thread stops renewing when the event loop has not turned for
  ``LOOP_STUCK_S``: a wedged process must lose its chats;
- reap lapsed leases (a worker died): drop arq's in-progress key for the job,
  so that the next poll of any worker runs it again, at once rather than after
  arq's ``job_timeout + 10 s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, scripts
from shared.settings import Settings
from shared.store import renew_arguments
from worker import metrics
from worker.generation import Generator

log = logging.getLogger("tokenfan.worker")

# Renewals per lease: a worker keeps its chats through a stall (SIGSTOP, a
# blocked event loop, CPU starvation) of up to 3/4 of a lease; a streaming
# chat, renewed by every append too, through almost a whole lease.
RENEWALS_PER_LEASE = 4
# The renewal thread renews only while the event loop turns: a process whose
# loop has not turned for this long (stuck in sync code, deadlocked) loses
# its chats, handed on one lease later.
LOOP_STUCK_S = 30.0


class LeaseRenewer:
    """Renews the leases of ``generator.held`` every ``lease_s / RENEWALS_PER_LEASE``
    from a daemon thread, through one connection of its own, and tells the
    generator (in its loop) about chats another attempt now owns."""

    def __init__(self, generator: Generator, settings: Settings) -> None:
        self.generator = generator
        self.interval_s = settings.lease_s / RENEWALS_PER_LEASE
        self.queue_name = settings.queue_name
        self.loop_turned = time.monotonic()
        self._client = sync_redis.Redis.from_url(
            settings.effective_redis_url,
            socket_timeout=max(self.interval_s, 0.5),
            socket_connect_timeout=max(self.interval_s, 0.5),
            client_name="tokenfan-worker-leases",
        )
        self._renew = self._client.register_script(scripts.RENEW)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick(), name="tokenfan-worker-loop-ticker")
        self._thread = threading.Thread(target=self._run, name="tokenfan-lease-renewer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        self._client.close()

    async def _tick(self) -> None:
        while True:
            self.loop_turned = time.monotonic()
            await asyncio.sleep(self.interval_s / 2)

    def _run(self) -> None:
        lease_ms = self.generator.lease_ms
        while not self._stop.wait(self.interval_s):
            held = self.generator.held  # an immutable snapshot, replaced by the loop
            if not held:
                continue
            stuck_s = time.monotonic() - self.loop_turned
            if stuck_s > LOOP_STUCK_S:
                log.error("event loop stuck for %.0f s: leases no longer renewed", stuck_s)
                continue
            try:
                script_keys, args = renew_arguments(held, lease_ms, self.queue_name)
                lost = [i.decode() for i in self._renew(keys=script_keys, args=args)]
            except (RedisError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            if lost and self._loop is not None:
                attempts = dict(held)
                for chat_id in lost:
                    log.warning("chat %s: another attempt owns it now; stopping this one", chat_id)
                    self._loop.call_soon_threadsafe(self.generator.fenced, chat_id, attempts.get(chat_id))


class Coordinator:
    def __init__(self, redis: Redis, generator: Generator, settings: Settings) -> None:
        self.redis = redis
        self.generator = generator
        self.settings = settings
        self.work_available = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.renewer = LeaseRenewer(generator, settings)

    async def start(self) -> None:
        self.renewer.start()
        self._tasks = [
            asyncio.create_task(self._listen(), name="tokenfan-worker-listen"),
            asyncio.create_task(self._reap(), name="tokenfan-worker-reaper"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.renewer.stop()

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

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                reaped = await self.generator.store.reap_lapsed()
            except (RedisError, OSError) as exc:
                log.warning("reaper failed: %s", exc)
                continue
            if reaped:
                metrics.LEASES_REAPED.inc(len(reaped))
                log.warning("lease lapsed, handing on: %s", ", ".join(reaped))
                self.work_available.set()
