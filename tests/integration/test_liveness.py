"""The liveness rule (api/liveness.py) on a real Redis, check by check: what
ends a chat, and what must never (a chat that is queued, picked up, running,
or claimed between two checks)."""

from __future__ import annotations

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from api.liveness import CHAT_EXPIRED, CHAT_STALLED, SNAPSHOT_CHATS, Liveness
from shared import keys
from tests.integration.conftest import new_chat

pytestmark = pytest.mark.anyio


async def _status(redis, chat_id: str) -> bytes | None:
    return await redis.hget(keys.meta(chat_id), "status")


async def test_a_chat_nothing_can_run_ends_on_the_second_check(store, redis):
    chat_id = await new_chat(store)  # recorded, never enqueued
    liveness = Liveness(store, grace_s=0)
    assert await liveness.check([chat_id]) == []
    assert await _status(redis, chat_id) == b"queued"  # one check is never enough
    assert await liveness.check([chat_id]) == []
    assert await _status(redis, chat_id) == b"error"
    (event,) = await store.events(chat_id)
    assert event.type == "error" and event.payload()["code"] == CHAT_STALLED


async def test_chats_something_can_run_are_left_alone(store, redis):
    queued, picked_up, leased = [await new_chat(store) for _ in range(3)]
    await redis.set(job_key_prefix + queued, b"job")
    await redis.set(in_progress_key_prefix + picked_up, b"1")  # a worker between arq's pickup and its claim
    await store.claim(leased, 60_000)
    liveness = Liveness(store, grace_s=0)
    for _ in range(3):
        assert await liveness.check([queued, picked_up, leased]) == []
    assert [await _status(redis, c) for c in (queued, picked_up, leased)] == [b"queued", b"queued", b"running"]


async def test_a_lapsed_lease_with_no_job_is_stalled(store, redis):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, 1)  # its worker died; the lease lapses at once
    await store.append(chat_id, claim.attempt, [("token", {"text": "half"})])
    await redis.zadd(keys.RUNNING, {chat_id: 1})  # expired long ago
    await redis.delete(in_progress_key_prefix + chat_id)  # lapsed with it
    liveness = Liveness(store, grace_s=0)
    await liveness.check([chat_id])
    await liveness.check([chat_id])
    events = await store.events(chat_id)
    assert [e.type for e in events] == ["token", "error"] and events[-1].seq == 2


async def test_a_claim_between_two_checks_is_not_ended(store, redis):
    chat_id = await new_chat(store)
    liveness = Liveness(store, grace_s=0)
    await liveness.check([chat_id])  # suspect: attempt 0
    await store.claim(chat_id, 1)  # a worker claims it; its lease lapses at once
    await redis.zadd(keys.RUNNING, {chat_id: 1})
    await redis.delete(in_progress_key_prefix + chat_id)
    await liveness.check([chat_id])  # attempt 1 now: a new suspicion, not a verdict
    assert await _status(redis, chat_id) == b"running"


async def test_the_grace_period_holds_a_stall_verdict_back(store, redis):
    chat_id = await new_chat(store)
    liveness = Liveness(store, grace_s=3600)
    for _ in range(3):
        await liveness.check([chat_id])
    assert await _status(redis, chat_id) == b"queued"


async def test_a_chat_whose_metadata_is_gone_is_reported_on_the_second_check(store, redis):
    chat_id = await new_chat(store)
    await redis.delete(keys.meta(chat_id))
    liveness = Liveness(store, grace_s=3600)  # no grace for a chat that is gone
    assert await liveness.check([chat_id]) == []
    assert await liveness.check([chat_id]) == [chat_id]
    assert CHAT_EXPIRED == "chat_expired"


async def test_many_chats_are_checked_in_several_snapshots(store, redis):
    chat_ids = [await new_chat(store) for _ in range(SNAPSHOT_CHATS + 2)]
    *running, stalled = chat_ids
    for chat_id in running:
        await redis.set(job_key_prefix + chat_id, b"job")
    liveness = Liveness(store, grace_s=0)
    await liveness.check(chat_ids)
    await liveness.check(chat_ids)
    assert await _status(redis, stalled) == b"error"
    assert {await _status(redis, c) for c in running} == {b"queued"}
