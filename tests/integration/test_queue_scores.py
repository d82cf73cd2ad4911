"""A running job's score in arq's queue stays a lease ahead, so that worker
polls see only waiting jobs, however many run fleet-wide (issue 16, item 3):
arq keeps running jobs in its queue, and a poll reads the first
``queue_read_limit`` ids due. Scripts: start_job, renew and finish_job."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.utils import timestamp_ms

from shared import keys, scripts
from shared.store import ChatStore
from tests.integration.conftest import new_chat
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

QUEUE = "test:queue-scores"
LEASE_MS = 60_000


@pytest.fixture
async def queue(redis):
    await redis.delete(QUEUE)
    yield QUEUE
    await redis.delete(QUEUE)


async def enqueue(redis, chat_id: str) -> None:
    await redis.zadd(QUEUE, {chat_id: timestamp_ms()})


async def start(redis, chat_id: str, in_progress_ms: int = LEASE_MS):
    start_job = redis.register_script(scripts.START_JOB)
    return await start_job(keys=[keys.in_progress(chat_id), QUEUE], args=[chat_id, timestamp_ms(), in_progress_ms])


async def due(redis, limit: int) -> list[str]:
    """What a worker's poll reads: the first ``limit`` ids due now."""
    ids = await redis.zrangebyscore(QUEUE, "-inf", timestamp_ms(), start=0, num=limit)
    return [i.decode() for i in ids]


async def test_a_poll_sees_a_new_chat_behind_five_thousand_running_ones(redis, queue):
    running = [keys.new_chat_id() for _ in range(5_000)]
    async with redis.pipeline(transaction=False) as pipe:
        for i, chat_id in enumerate(running):
            pipe.zadd(QUEUE, {chat_id: timestamp_ms() - 10_000 + i})  # enqueued before
        await pipe.execute()
    started = sum([bool(await start(redis, chat_id)) for chat_id in running])
    assert started == 5_000
    new = keys.new_chat_id()
    await enqueue(redis, new)
    assert await due(redis, 1_000) == [new]  # arq's poll of 1,000 ids: before, 1,000 running ones
    await redis.delete(*(keys.in_progress(c) for c in running))


async def test_a_job_stays_hidden_while_renewed_and_is_due_again_when_its_lease_lapses(store: ChatStore, redis, queue):
    chat_id = await new_chat(store)
    await enqueue(redis, chat_id)
    assert await start(redis, chat_id, in_progress_ms=1_000)
    attempt = (await store.claim(chat_id, 1_000)).attempt
    assert await due(redis, 10) == []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # renewed (as the worker's renewal thread does), it stays hidden
        await store.renew_leases([(chat_id, attempt)], 1_000, QUEUE)
        assert chat_id not in await due(redis, 10)
        await asyncio.sleep(0.25)  # pacing: the renewal thread renews every quarter lease
    # The worker dies: nobody renews; within a lease the job is due for the next poll.
    await eventually(lambda: due_now(redis, chat_id), timeout=3)
    await store.release_lease(chat_id)


async def due_now(redis, chat_id: str) -> bool:
    return chat_id in await due(redis, 10)


async def test_a_job_handed_back_is_due_at_once(store: ChatStore, redis, queue):
    chat_id = await new_chat(store)
    await enqueue(redis, chat_id)
    assert await start(redis, chat_id)
    attempt = (await store.claim(chat_id, LEASE_MS)).attempt
    assert await due(redis, 10) == []
    # A worker shutting down hands the unfinished chat back (arq's finish_job, fenced).
    assert await store.finish_job(QUEUE, chat_id, attempt) == 2
    assert await due(redis, 10) == [chat_id]
    await store.release_lease(chat_id)
