"""The end of an OpenAI stream, and done events the encoder must survive
(issue 12 items 9 and 10), against real processes. Chats are crafted in Redis
(see test_openai_compat.py) so their events are exactly what the test wants."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from redis.asyncio import Redis
from test_openai_compat import MODEL, Messages, append, done, http, token

from shared import keys
from shared.events import EventType
from shared.store import ChatStore

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


async def _chat(cluster, *events, include_usage: bool = True) -> str:
    redis = Redis.from_url(cluster.redis_url)
    try:
        store = ChatStore(redis, ttl_s=300, maxlen=10_000)
        chat_id = keys.new_chat_id()
        request = {
            "messages": [{"role": "user", "content": "crafted"}],
            "model": MODEL,
            "max_tokens": 50,
            "openai": {"include_usage": include_usage},
        }
        await store.create(chat_id, request, model=MODEL)
        await append(store, chat_id, *events)
    finally:
        await redis.aclose()
    return chat_id


async def _read(client: httpx.AsyncClient, chat_id: str, last_event_id: int | None = None) -> list:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with client.stream("GET", f"/v1/chat/completions/{chat_id}/stream", headers=headers) as response:
        assert response.status_code == 200
        return await Messages(response).read()


def _last_id(messages: list) -> int | None:
    """What an SSE client holds as its last event id: the last ``id:`` seen
    (a message without one keeps the previous)."""
    last = None
    for message_id, _ in messages:
        if message_id is not None:
            last = message_id
    return last


async def test_a_client_cut_after_the_finish_chunk_resumes_with_the_usage_chunk_and_done(cluster):
    chat_id = await _chat(cluster, token("a"), token("b"), done(completion_tokens=2))
    async with http(cluster) as client:
        full = await _read(client, chat_id)
        finish_at = next(i for i, (_, data) in enumerate(full) if '"finish_reason":"stop"' in data)
        head = full[: finish_at + 1]  # the connection drops right after the finish chunk
        rest = await _read(client, chat_id, _last_id(head))

    assert full[-1][1] == "[DONE]"
    seen = [data for _, data in head + rest]
    usage = [json.loads(d)["usage"] for d in seen if d != "[DONE]" and json.loads(d).get("usage")]
    assert usage == [{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}]
    assert seen[-1] == "[DONE]"
    # Resuming at the id the end of the stream carries gives nothing more.
    async with http(cluster) as client:
        assert await _read(client, chat_id, _last_id(full)) == []


async def test_a_client_cut_after_the_usage_chunk_resumes_with_done(cluster):
    chat_id = await _chat(cluster, token("a"), done())
    async with http(cluster) as client:
        full = await _read(client, chat_id)
        head = full[:-1]  # everything but [DONE]
        rest = await _read(client, chat_id, _last_id(head))
    assert rest[-1][1] == "[DONE]"


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": 3},
        None,
        {"prompt_tokens": "x", "completion_tokens": 2.0},
    ],
    ids=["nulls", "missing", "no-usage", "not-ints"],
)
async def test_a_done_event_with_odd_usage_counts_streams_to_its_end(cluster, usage):
    chat_id = await _chat(cluster, token("a"), (EventType.DONE, {"finish_reason": "stop", "usage": usage}))
    async with http(cluster) as client:
        messages = await _read(client, chat_id)
    assert messages[-1][1] == "[DONE]"
    usage_chunk = json.loads(messages[-2][1])
    counts = usage_chunk["usage"]
    assert set(counts) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(v, int) for v in counts.values())
    assert counts["total_tokens"] == counts["prompt_tokens"] + counts["completion_tokens"]


async def test_a_non_streamed_completion_whose_done_has_null_usage_is_answered(idle_cluster):
    """The worker (an upstream's usage) may leave counts null: the answer is
    still a chat.completion, not a plain-text 500."""
    redis = Redis.from_url(idle_cluster.redis_url)
    await redis.flushdb()
    store = ChatStore(redis, ttl_s=300, maxlen=10_000)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "null usage"}]}
    try:
        async with http(idle_cluster) as client, anyio.create_task_group() as tg:
            result: dict = {}

            async def request() -> None:
                result["response"] = await client.post("/v1/chat/completions", json=body)

            tg.start_soon(request)
            with anyio.fail_after(5):
                while (
                    len(metas := await redis.keys("tf:*:meta")) != 1
                    or not (await redis.pubsub_numsub(keys.live(metas[0].decode()[4:-6])))[0][1]
                ):
                    await anyio.sleep(0.01)
            chat_id = metas[0].decode()[4:-6]
            usage = {"prompt_tokens": None, "completion_tokens": None}
            await append(store, chat_id, token("hi"), (EventType.DONE, {"finish_reason": "stop", "usage": usage}))
        response = result["response"]
        assert response.status_code == 200, response.text
        completion = response.json()
        assert completion["choices"][0]["message"]["content"] == "hi"
        assert completion["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    finally:
        await redis.aclose()
