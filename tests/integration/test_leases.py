"""Leases, renewal and arq's in-progress key, on a real Redis (issue 12,
items 6 and 8): renewal is fenced on the attempt, and does not starve behind
work that holds the worker's event loop."""

from __future__ import annotations

import asyncio

import pytest

from shared import keys
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
