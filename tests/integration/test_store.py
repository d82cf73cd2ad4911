"""The Lua scripts and the log reader, on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import in_progress_key_prefix

from shared import keys
from shared.events import Event
from shared.store import ALREADY_FINISHED, FENCED, MISSING, LogExpired, terminal_meta
from tests.integration.conftest import new_chat
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

QUEUE = "test:store:queue"  # jobs' scores follow their leases there (none of these chats is in it)


def tokens(*texts: str):
    return [("token", {"text": t}) for t in texts]


async def test_append_numbers_logs_and_publishes_each_event(store, redis):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live(chat_id))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    first = await store.append(chat_id, claim.attempt, tokens("a", "b"))
    second = await store.append(chat_id, claim.attempt, tokens("c"))

    assert (first.seq, second.seq) == (2, 3)
    entries = await redis.xrange(keys.log(chat_id))
    assert [entry_id for entry_id, _ in entries] == [b"1-0", b"2-0", b"3-0"]
    published = []
    while len(published) < 3:
        message = await pubsub.get_message(timeout=1)
        assert message is not None, "an append was not published"
        published.append(Event.from_published(message["data"]))
    assert published == await store.events(chat_id)
    assert [e.payload()["text"] for e in published] == ["a", "b", "c"]
    await pubsub.aclose()


async def test_an_older_attempt_is_fenced_out(store):
    chat_id = await new_chat(store)
    first = await store.claim(chat_id, lease_ms=60_000)
    assert (await store.append(chat_id, first.attempt, tokens("one"))).accepted
    second = await store.claim(chat_id, lease_ms=60_000)  # e.g. after the reaper handed the job on

    assert second.attempt == first.attempt + 1 and second.last_seq == 1
    assert (await store.append(chat_id, first.attempt, tokens("zombie"))).seq == FENCED
    assert (await store.append(chat_id, 0, tokens("api"))).seq == FENCED
    assert (await store.append(chat_id, second.attempt, tokens("two"))).seq == 2
    assert [e.payload()["text"] for e in await store.events(chat_id)] == ["one", "two"]


async def test_nothing_is_appended_after_the_terminal_event(store):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    done = ("done", {"finish_reason": "stop", "usage": {}})
    assert (await store.append(chat_id, claim.attempt, [done], terminal_meta(*done))).accepted

    assert (await store.append(chat_id, claim.attempt, tokens("late"))).seq == ALREADY_FINISHED
    again = await store.claim(chat_id, lease_ms=60_000)
    assert (again.previous_status, again.attempt) == ("done", 0)
    meta = await store.meta(chat_id)
    assert (meta["status"], meta["finish_reason"], meta["last_seq"]) == ("done", "stop", "1")


async def test_unknown_chat_is_refused(store):
    chat_id = keys.new_chat_id()
    assert (await store.append(chat_id, 1, tokens("x"))).seq == MISSING
    assert (await store.claim(chat_id, 1000)).previous_status == "missing"


async def test_append_reports_a_requested_cancel(store):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    assert not (await store.append(chat_id, claim.attempt, tokens("a"))).cancelled
    await store.request_cancel(chat_id)
    assert (await store.append(chat_id, claim.attempt, tokens("b"))).cancelled


async def test_log_reads_in_pages_after_any_point(store):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    await store.append(chat_id, claim.attempt, tokens(*(str(i) for i in range(1, 31))))

    for after in (0, 1, 6, 7, 8, 29, 30):
        events = await store.events(chat_id, after)
        assert [e.seq for e in events] == list(range(after + 1, 31))


async def test_a_trimmed_log_is_an_error_not_a_partial_replay(store, redis):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    await store.append(chat_id, claim.attempt, tokens(*"abcdefghij"))
    await redis.xtrim(keys.log(chat_id), maxlen=4, approximate=False)  # keeps 7..10

    with pytest.raises(LogExpired):
        await store.events(chat_id, after=0)
    with pytest.raises(LogExpired):
        await store.events(chat_id, after=5)
    assert [e.seq for e in await store.events(chat_id, after=6)] == [7, 8, 9, 10]


async def test_every_key_of_a_chat_expires(store, redis):
    chat_id = await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    await store.append(chat_id, claim.attempt, tokens("a"))
    await store.request_cancel(chat_id)
    for key in (keys.meta(chat_id), keys.log(chat_id), keys.cancel(chat_id)):
        assert 0 < await redis.ttl(key) <= store.ttl_s, key


async def test_a_lapsed_lease_hands_the_job_on(store, redis):
    lapsed = await new_chat(store)
    alive = await new_chat(store)
    await store.claim(lapsed, lease_ms=1)
    await store.claim(alive, lease_ms=60_000)
    await redis.set(in_progress_key_prefix + lapsed, 1)
    await redis.set(in_progress_key_prefix + alive, 1)

    # Other tests may leave lapsed leases in this db: reap until ours is among them.
    reaped: list[str] = []

    async def reaped_ours() -> bool:
        reaped.extend(await store.reap_lapsed())
        return lapsed in reaped

    await eventually(reaped_ours)
    assert alive not in reaped
    assert not await redis.exists(in_progress_key_prefix + lapsed)
    assert await redis.exists(in_progress_key_prefix + alive)
    # A late renewal by the presumed-dead worker does not take the lease back.
    held = [(lapsed, 1), (alive, 1)]
    await store.renew_leases(held, lease_ms=60_000, queue_name=QUEUE)
    assert await redis.zscore(keys.RUNNING, lapsed) is None
    assert not await redis.exists(in_progress_key_prefix + lapsed)
    await store.release_lease(alive)
    await redis.delete(in_progress_key_prefix + alive)


async def test_claims_race_to_one_owner(store):
    chat_id = await new_chat(store)
    claims = await asyncio.gather(*(store.claim(chat_id, 60_000) for _ in range(10)))
    assert sorted(c.attempt for c in claims) == list(range(1, 11))
    owner = max(c.attempt for c in claims)
    results = await asyncio.gather(*(store.append(chat_id, c.attempt, tokens("x")) for c in claims))
    assert [r.accepted for r in results].count(True) == 1
    assert results[[c.attempt for c in claims].index(owner)].accepted
    await store.release_lease(chat_id)


async def test_renewal_keeps_arqs_in_progress_key_alive_for_one_lease(store, redis):
    """A worker killed between arq's pickup and the claim holds no lease; the
    in-progress key itself must then lapse within a lease, not after job_timeout."""
    chat_id, picked = await new_chat(store), await new_chat(store)
    claim = await store.claim(chat_id, lease_ms=60_000)
    await redis.set(in_progress_key_prefix + chat_id, 1, px=500)
    await redis.set(in_progress_key_prefix + picked, 1, px=500)  # picked up by arq, not claimed yet
    held = [(chat_id, claim.attempt), (picked, 0)]
    assert await store.renew_leases(held, lease_ms=30_000, queue_name=QUEUE) == []
    for c in (chat_id, picked):
        assert 20_000 < await redis.pttl(in_progress_key_prefix + c) <= 30_000
    await store.release_lease(chat_id)
    await redis.delete(in_progress_key_prefix + chat_id, in_progress_key_prefix + picked)


async def test_renewal_and_release_are_fenced_on_the_attempt(store, redis):
    chat_id = await new_chat(store)
    stale = await store.claim(chat_id, lease_ms=60_000)
    newer = await store.claim(chat_id, lease_ms=1_000)
    await redis.set(in_progress_key_prefix + chat_id, 1, px=1_000)
    lost = await store.renew_leases([(chat_id, stale.attempt)], 60_000, QUEUE)
    assert lost == [chat_id]
    assert await redis.pttl(in_progress_key_prefix + chat_id) <= 1_000
    await store.release_lease(chat_id, stale.attempt)
    assert await redis.zscore(keys.RUNNING, chat_id) is not None  # the new attempt's lease stays
    await store.release_lease(chat_id, newer.attempt)
    assert await redis.zscore(keys.RUNNING, chat_id) is None
    await redis.delete(in_progress_key_prefix + chat_id)
