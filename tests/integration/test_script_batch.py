"""Appends of many chats share round trips (shared/script_batch.py), and each
still runs as its own script: its own result, its own error, in call order."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from shared.script_batch import ScriptBatch
from tests.integration.conftest import new_chat

pytestmark = pytest.mark.anyio


def counting_round_trips(batch: ScriptBatch) -> list[int]:
    """The sizes of the pipelines ``batch`` sends (a single call is not one)."""
    sizes: list[int] = []
    send = batch._pipeline

    async def counted(calls):
        sizes.append(len(calls))
        return await send(calls)

    batch._pipeline = counted  # type: ignore[method-assign]
    return sizes


async def test_concurrent_appends_of_many_chats_share_round_trips(store, redis):
    chats = [await new_chat(store) for _ in range(50)]
    attempts = {c: (await store.claim(c, 60_000)).attempt for c in chats}
    sizes = counting_round_trips(store._append)

    async def stream(chat_id: str) -> list[int]:
        return [(await store.append(chat_id, attempts[chat_id], [("token", {"text": f"{i} "})])).seq for i in range(20)]

    seqs = await asyncio.gather(*(stream(c) for c in chats))
    assert all(s == list(range(1, 21)) for s in seqs)  # every chat's appends, in its order
    assert len(sizes) < 200 and max(sizes) > 10, sizes  # 1,000 appends in far fewer round trips
    for chat_id in chats:
        assert "".join(e.payload()["text"] for e in await store.events(chat_id)) == "".join(f"{i} " for i in range(20))


async def test_one_call_failing_fails_only_that_call(redis):
    batch = ScriptBatch(redis, "if ARGV[1] == 'bad' then return redis.error_reply('refused') end return ARGV[1]")
    results = await asyncio.gather(
        *(batch([], [str(i) if i != 7 else "bad"]) for i in range(20)), return_exceptions=True
    )
    assert isinstance(results[7], ResponseError) and "refused" in str(results[7])
    assert [r for i, r in enumerate(results) if i != 7] == [str(i).encode() for i in range(20) if i != 7]


async def test_a_flushed_script_cache_is_reloaded_for_a_whole_batch(redis):
    batch = ScriptBatch(redis, "return ARGV[1]")
    sizes = counting_round_trips(batch)
    in_flight = asyncio.Event()

    async def held_leader(keys, args):  # the first call stays in flight (and never reloads)...
        await in_flight.wait()
        return args[0].encode()

    batch._script = held_leader  # type: ignore[assignment]
    calls = [asyncio.create_task(batch([], [str(i)])) for i in range(6)]
    await asyncio.sleep(0)  # (one turn of the loop: every call is made)
    await redis.script_flush()  # ...while Redis restarts: the batch behind it meets NOSCRIPT
    in_flight.set()
    assert await asyncio.gather(*calls) == [str(i).encode() for i in range(6)]
    assert sizes == [5, 5]  # sent, refused for the missing script, loaded and sent again
