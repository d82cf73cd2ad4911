"""Leases, renewal and arq's in-progress key, on a real Redis (issue 12,
items 6 and 8): renewal is fenced on the attempt, and does not starve behind
work that holds the worker's event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis as sync_redis

from shared import keys
from shared.events import assemble_text
from tests.integration.conftest import new_chat
from tests.integration.test_generation import ScriptedProvider, make_settings
from tests.waiting import eventually
from worker.coordination import Coordinator
from worker.generation import Generator

pytestmark = pytest.mark.anyio

IN_PROGRESS = "arq:in-progress:"


async def _redis_ms(redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def _lapsed(redis, chat_id) -> bool:
    score = await redis.zscore(keys.RUNNING, chat_id)
    return score is None or score < await _redis_ms(redis)


async def test_a_fenced_attempt_does_not_renew_the_new_attempts_lease(store, redis, redis_url):
    # Issue 12, item 6: a stale worker whose provider has gone silent must not
    # keep the new attempt's lease (and arq's in-progress key) alive.
    settings = make_settings(lease_s=1.0, redis_url=redis_url, reaper_interval_s=3600)
    provider = ScriptedProvider()  # silent: the stale attempt never appends, so never learns it is fenced that way
    generator = Generator(store, provider, settings)
    coordinator = Coordinator(redis, generator, settings)
    await coordinator.start()
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    try:
        await provider.started.wait()
        newer = await store.claim(chat_id, lease_ms=1000)  # another worker took over...
        assert newer.attempt == 2
        await redis.set(IN_PROGRESS + chat_id, b"1", px=1000)
        # ...and died: nobody renews its lease, which must lapse within one lease.
        await eventually(lambda: _lapsed(redis, chat_id), timeout=3)
        await eventually(lambda: _gone(redis, IN_PROGRESS + chat_id), timeout=3)
        # The renewal told the stale attempt it lost the chat: it stopped its provider, writing nothing.
        await asyncio.wait_for(run, timeout=3)
        assert provider.closed.is_set()
        assert await store.events(chat_id) == []
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await coordinator.stop()
        await redis.zrem(keys.RUNNING, chat_id)


async def _gone(redis, key) -> bool:
    return not await redis.exists(key)


# --- arq's end of a run, fenced on the attempt (issue 12, items 4 and 5) -----------

QUEUE = "tf-test:finish-job"


async def _enqueued(redis, chat_id):
    from arq.constants import job_key_prefix, retry_key_prefix

    await redis.zadd(QUEUE, {chat_id: 1})
    await redis.set(job_key_prefix + chat_id, b"job")
    await redis.set(retry_key_prefix + chat_id, 1)
    await redis.set(IN_PROGRESS + chat_id, b"1")


async def _job_left(redis, chat_id):
    from arq.constants import job_key_prefix

    return (
        await redis.zscore(QUEUE, chat_id) is not None,
        bool(await redis.exists(job_key_prefix + chat_id)),
        bool(await redis.exists(IN_PROGRESS + chat_id)),
    )


async def test_a_taken_over_run_leaves_the_job_to_the_new_attempt(store, redis):
    chat_id = await new_chat(store)
    stale = await store.claim(chat_id, 60_000)
    await store.claim(chat_id, 60_000)  # the run that took over
    await _enqueued(redis, chat_id)
    assert await store.finish_job(QUEUE, chat_id, stale.attempt) == 0
    assert await _job_left(redis, chat_id) == (True, True, True)  # all of it still the new run's
    await store.release_lease(chat_id)


async def test_arq_ending_a_run_whose_chat_runs_on_hands_the_job_back(store, redis):
    # arq's job_timeout (or any failure arq sees) on the run that owns the
    # chat: deleting the job would leave the chat running with nobody to end it.
    chat_id = await new_chat(store)
    owner = await store.claim(chat_id, 60_000)
    await _enqueued(redis, chat_id)
    assert await store.finish_job(QUEUE, chat_id, owner.attempt) == 2
    assert await _job_left(redis, chat_id) == (True, True, False)  # queued again, for any worker
    await store.release_lease(chat_id)


async def test_a_run_whose_chat_ended_finishes_the_job(store, redis):
    chat_id = await new_chat(store)
    owner = await store.claim(chat_id, 60_000)
    await store.append(chat_id, owner.attempt, [("done", {"finish_reason": "stop"})], {"status": "done"})
    await _enqueued(redis, chat_id)
    assert await store.finish_job(QUEUE, chat_id, 0) == 1  # whoever asks, once the chat has ended
    assert await _job_left(redis, chat_id) == (False, False, False)
    await store.release_lease(chat_id)


# --- a busy worker keeps its chats (issue 12, item 8) --------------------------------


class _LeaseWatch(threading.Thread):
    """Another worker's view, from outside the busy event loop: counts the
    moments the chat's lease or arq's in-progress key had lapsed, while armed."""

    def __init__(self, url: str, chat_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.chat_id = url, chat_id
        self.armed = threading.Event()
        self.done = threading.Event()
        self.checks = self.lease_lapsed = self.in_progress_gone = 0

    def run(self) -> None:
        r = sync_redis.Redis.from_url(self.url)
        try:
            while not self.done.wait(0.01):
                if not self.armed.is_set():
                    continue
                seconds, micros = r.time()
                score = r.zscore(keys.RUNNING, self.chat_id)
                if self.done.is_set():
                    break
                self.checks += 1
                self.lease_lapsed += score is None or score < seconds * 1000 + micros // 1000
                self.in_progress_gone += not r.exists(IN_PROGRESS + self.chat_id)
        finally:
            r.close()


async def test_a_worker_whose_event_loop_is_blocked_keeps_its_chat(store, redis, redis_url):
    lease_s, block_s, blocks = 1.0, 0.9, 3  # each block: far beyond the renewal interval, under a lease
    settings = make_settings(lease_s=lease_s, redis_url=redis_url, reaper_interval_s=3600, batch_max_tokens=1)
    chat_id = await new_chat(store)
    watch = _LeaseWatch(redis_url, chat_id)

    async def busy_provider(request):
        watch.armed.set()
        for i in range(blocks):
            yield f"t{i} "
            # The loop is free for a moment (the batch goes out), less than a
            # renewal interval: a renewal that only runs in this loop last ran
            # right after the previous block, and lapses during the next.
            await asyncio.sleep(0.2)
            time.sleep(block_s)  # sync work (a tokenizer, a blocking call) holds the event loop
        watch.done.set()
        yield "end"

    generator = Generator(store, busy_provider, settings)
    coordinator = Coordinator(redis, generator, settings)
    await coordinator.start()
    await redis.set(IN_PROGRESS + chat_id, b"1", px=int(lease_s * 1000))  # arq's pickup
    watch.start()
    try:
        await asyncio.wait_for(generator.run(chat_id), timeout=10)
    finally:
        watch.done.set()
        await coordinator.stop()
        watch.join(2)
        await redis.delete(IN_PROGRESS + chat_id)

    assert watch.checks > 50
    assert (watch.lease_lapsed, watch.in_progress_gone) == (0, 0), "another worker would have taken the chat over"
    events = await store.events(chat_id)
    assert assemble_text(events) == "t0 t1 t2 end" and events[-1].type == "done"


async def test_a_job_picked_up_but_not_claimed_yet_keeps_its_in_progress_key(store, redis, redis_url):
    # Issue 12, item 8: a claim long after arq's pickup (2.3 s under CPU
    # starvation) must not let arq's in-progress key, set at pickup for one
    # lease, lapse first: another worker would start the job and fence this one.
    lease_s = 0.5
    settings = make_settings(lease_s=lease_s, redis_url=redis_url, reaper_interval_s=3600)
    generator = Generator(store, ScriptedProvider(), settings)
    coordinator = Coordinator(redis, generator, settings)
    await coordinator.start()
    chat_id = await new_chat(store)
    try:
        await redis.set(IN_PROGRESS + chat_id, b"1", px=int(lease_s * 1000))  # arq's pickup
        generator.job_picked(chat_id)
        deadline = time.monotonic() + 4 * lease_s
        while time.monotonic() < deadline:  # four leases without a claim
            assert await redis.exists(IN_PROGRESS + chat_id)
            await asyncio.sleep(0.02)
        assert generator.job_ended(chat_id) == 0  # the run ends (here: before any claim)
        await eventually(lambda: _gone(redis, IN_PROGRESS + chat_id), timeout=3 * lease_s)  # no longer kept
    finally:
        await coordinator.stop()
        await redis.delete(IN_PROGRESS + chat_id)
