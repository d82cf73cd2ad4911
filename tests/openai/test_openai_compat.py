"""The OpenAI-compatible API (api/openai_compat.py) against real processes,
consumed by the official ``openai`` SDK wherever it can be.

Some tests write a chat's events straight into Redis through ``ChatStore``
(no job is enqueued, so no worker touches it): that is how a reset, an error
event, a cancel and a pause between two events are made to happen exactly
when the test wants."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import openai
import pytest
from harness import Cluster, expected_text, prompt_with_length
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk
from redis.asyncio import Redis

from shared import keys
from shared.events import EventType
from shared.store import ChatStore, terminal_meta

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

MODEL = "simulated"
Message = tuple[int | None, str]  # (SSE id, data) of one raw SSE message


# --- helpers ---------------------------------------------------------------------


def test_the_sdk_is_the_real_one():
    """tests/openai must not shadow the SDK (it has no __init__.py for that)."""
    assert "site-packages" in openai.__file__ and hasattr(openai, "AsyncOpenAI")


@asynccontextmanager
async def sdk(cluster: Cluster) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=f"{cluster.api.url}/v1", api_key="unused", max_retries=0, timeout=20.0)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.api.url, timeout=20.0) as client:
        yield client


async def native_chat(cluster: Cluster, chat_id: str) -> dict:
    async with http(cluster) as client:
        response = await client.get(f"/chat/{chat_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def resume_with_sdk(client: AsyncOpenAI, chat_id: str, last_event_id: int | str | None = None):
    """The resume route, read by the SDK's own stream machinery."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    return await client.get(
        f"/chat/completions/{chat_id}/stream",
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
        options={"headers": headers},
    )


class Messages:
    """Reads the SSE messages of a response, exactly as sent (heartbeat
    comment lines left out), in as many calls as the test wants."""

    def __init__(self, response: httpx.Response) -> None:
        self._texts = response.aiter_text()
        self._buffer = ""

    async def read(self, limit: int | None = None) -> list[Message]:
        """Until the server closes the stream, or ``limit`` messages."""
        out: list[Message] = []
        while limit is None or len(out) < limit:
            if "\n\n" not in self._buffer:
                try:
                    self._buffer += await self._texts.__anext__()
                except StopAsyncIteration:
                    return out
                continue
            block, self._buffer = self._buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
            assert set(fields) <= {"id", "data"}, block
            out.append((int(fields["id"]) if "id" in fields else None, fields["data"]))
        return out


async def read_messages(response: httpx.Response, limit: int | None = None) -> list[Message]:
    return await Messages(response).read(limit)


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def crafted_chat(cluster: Cluster) -> tuple[ChatStore, str, Redis]:
    """A chat recorded in Redis but never enqueued: the test appends its events."""
    redis = Redis.from_url(cluster.redis_url)
    store = ChatStore(redis, ttl_s=300, maxlen=10_000)
    chat_id = keys.new_chat_id()
    request = {"messages": [{"role": "user", "content": "crafted"}], "model": MODEL, "max_tokens": 50}
    await store.create(chat_id, request, model=MODEL)
    return store, chat_id, redis


async def append(store: ChatStore, chat_id: str, *events: tuple[str, dict]) -> None:
    terminal = events[-1] if events[-1][0] in (EventType.DONE, EventType.ERROR) else None
    result = await store.append(chat_id, 0, events, terminal_meta(*terminal) if terminal else None)
    assert result.accepted, result


def token(text: str) -> tuple[str, dict]:
    return (EventType.TOKEN, {"text": text})


def done(finish_reason: str = "stop", completion_tokens: int = 3) -> tuple[str, dict]:
    usage = {"prompt_tokens": 1, "completion_tokens": completion_tokens}
    return (EventType.DONE, {"finish_reason": finish_reason, "usage": usage})


# --- the SDK against a running tokenfan -------------------------------------------


async def test_sdk_streams_a_completion_whose_text_equals_the_native_text(cluster):
    prompt = prompt_with_length(100, 250, "sdk-stream")
    async with sdk(cluster) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=500,
        )
        chat_id = raw.headers["x-chat-id"]
        chunks = [chunk async for chunk in raw.parse()]  # with_raw_response: parse() is sync

    assert keys.is_chat_id(chat_id)
    assert len(chunks) > 5, "streamed in several chunks"
    assert {c.id for c in chunks} == {f"chatcmpl-{chat_id}"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {MODEL}
    native = await native_chat(cluster, chat_id)
    assert {c.created for c in chunks} == {int(native["created_at"])}

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices), "role only in the first chunk"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == [chunks[-2]] and chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == native["usage"]["completion_tokens"] > 0
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens

    text = content_of(chunks)
    assert native["status"] == "done"
    assert text == native["text"] == expected_text(prompt, 500)


async def test_sdk_gets_a_non_streamed_completion_with_usage(cluster):
    prompt = prompt_with_length(100, 250, "sdk-once")
    async with sdk(cluster) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=30
        )
        completion = raw.parse()
    chat_id = raw.headers["x-chat-id"]
    native = await native_chat(cluster, chat_id)

    assert completion.id == f"chatcmpl-{chat_id}"
    assert completion.object == "chat.completion"
    assert completion.created == int(native["created_at"])
    assert completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == native["text"] == expected_text(prompt, 30)
    assert choice.finish_reason == native["finish_reason"] == "length"
    assert completion.usage.completion_tokens == 30
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 30


async def test_unknown_fields_are_ignored_and_openai_message_forms_are_understood(cluster):
    async with sdk(cluster) as client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]},
            ],
            max_tokens=500,
            max_completion_tokens=7,  # the current name wins over the deprecated one
            top_p=0.5,
            user="someone",
            seed=3,
            extra_body={"frobnicate": {"deeply": [1, 2]}},
        )
    # The simulated model answers from the joined message texts, so the
    # mapping (developer -> system, text parts joined) shows in the answer.
    assert completion.choices[0].message.content == expected_text("be brief\nhello\nthere", 7)
    assert completion.usage.completion_tokens == 7


async def test_list_and_retrieve_models(cluster):
    async with sdk(cluster) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
        assert models.data[0].object == "model"
        assert (await client.models.retrieve(MODEL)).id == MODEL
        # POST takes any model name (the provider decides): so does GET.
        assert (await client.models.retrieve("another-model")).id == "another-model"
        completion = await client.chat.completions.create(
            model="another-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert completion.model == "another-model"


# --- resuming ----------------------------------------------------------------------


async def test_a_stream_cut_mid_way_resumes_with_exactly_the_remaining_chunks(cluster):
    prompt = prompt_with_length(300, 419, "cut")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 500,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http(cluster) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            chat_id = response.headers["x-chat-id"]
            head = await read_messages(response, limit=4)
        # The connection is cut; the answer is far from done.
        assert (await native_chat(cluster, chat_id))["status"] == "running"
        cut = head[-1][0]
        assert cut == 4

        async with client.stream(
            "GET", f"/v1/chat/completions/{chat_id}/stream", headers={"Last-Event-ID": str(cut)}
        ) as response:
            assert response.status_code == 200 and response.headers["x-chat-id"] == chat_id
            rest = await read_messages(response)

        # What a client that never dropped gets (read again from the start).
        async with client.stream("GET", f"/v1/chat/completions/{chat_id}/stream") as response:
            full = await read_messages(response)

    assert head + rest == full
    assert full[-1][1] == "[DONE]"
    ids = [i for i, _ in full]
    last = ids[-1]
    # One message per event; the done event's finish and usage chunks carry no
    # id, only its [DONE] does (a cut before [DONE] resumes the whole end).
    assert ids == [*range(1, last), None, None, last], "one message per event, then the usage chunk and [DONE]"
    assert '"role":"assistant"' in full[0][1] and all('"role"' not in d for _, d in full[1:])
    chunks = [json.loads(d) for _, d in full[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == (await native_chat(cluster, chat_id))["text"] == expected_text(prompt, 500)

    # The SDK hides the SSE id; each chunk carries it as tokenfan_seq, which is
    # what an SDK user resumes after. The SDK itself reads the resumed stream.
    assert [c.get("tokenfan_seq") for c in chunks] == [*range(1, last), None, None]
    async with sdk(cluster) as sdk_client:
        resumed = [c async for c in await resume_with_sdk(sdk_client, chat_id, json.loads(head[-1][1])["tokenfan_seq"])]
    head_text = "".join(json.loads(d)["choices"][0]["delta"]["content"] for _, d in head)
    assert head_text + content_of(resumed) == text
    assert resumed[-1].usage.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


async def test_resume_route_errors_and_the_end_of_a_finished_stream(cluster):
    async with sdk(cluster) as client:
        completion = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "short one"}], max_tokens=5
        )
        chat_id = completion.headers["x-chat-id"]
        last_seq = (await native_chat(cluster, chat_id))["last_seq"]

        # Resuming at the terminal event: an empty stream, as on the native route.
        assert [c async for c in await resume_with_sdk(client, chat_id, last_seq)] == []
        with pytest.raises(openai.BadRequestError) as info:
            await resume_with_sdk(client, chat_id, last_seq + 1)
        assert info.value.code == "invalid_last_event_id" and info.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError):
            await resume_with_sdk(client, chat_id, "not-a-number")
        with pytest.raises(openai.NotFoundError) as info:
            await resume_with_sdk(client, keys.new_chat_id())
        assert info.value.code == "not_found"
    async with http(cluster) as h:
        response = await h.get(f"/v1/chat/completions/{chat_id}/stream", params={"last_event_id": "2"})
    assert response.status_code == 200
    assert [i for i, _ in await read_messages(response) if i is not None][0] == 3  # done's id is on [DONE]


# --- resets, errors, cancels, heartbeats (crafted chats) ------------------------------


async def test_a_reset_is_a_chunk_plain_clients_survive_and_aware_clients_act_on(cluster):
    store, chat_id, redis = await crafted_chat(cluster)
    try:
        await append(store, chat_id, token("Hello"), token(" wor"))
        await append(store, chat_id, (EventType.RESET, {"attempt": 2, "reason": "worker_lost"}))
        await append(store, chat_id, token("Hello"), token(" world"), done("cancelled"))
    finally:
        await redis.aclose()
    async with sdk(cluster) as client:
        chunks = [c async for c in await resume_with_sdk(client, chat_id)]

    assert len(chunks) == 6
    reset = chunks[2]
    assert reset.model_extra["tokenfan_reset"] == {"attempt": 2, "reason": "worker_lost"}
    assert reset.choices[0].delta.content is None and reset.choices[0].finish_reason is None
    assert not any("tokenfan_reset" in c.model_extra for c in chunks if c is not reset)
    # A plain client concatenates both attempts (the documented trade-off);
    # one that drops its text on tokenfan_reset shows what GET /chat/{id} shows.
    assert content_of(chunks) == "Hello worHello world"
    aware = ""
    for chunk in chunks:
        if chunk.model_extra.get("tokenfan_reset"):
            aware = ""
        aware += content_of([chunk])
    assert aware == (await native_chat(cluster, chat_id))["text"] == "Hello world"
    # cancelled is not an OpenAI finish_reason: "stop", and the real one beside it.
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["tokenfan_finish_reason"] == "cancelled"


async def test_an_error_event_raises_the_sdks_api_error(cluster):
    store, chat_id, redis = await crafted_chat(cluster)
    try:
        error = (EventType.ERROR, {"code": "provider_error", "message": "upstream 500"})
        await append(store, chat_id, token("partial"), error)
    finally:
        await redis.aclose()
    received = []
    async with sdk(cluster) as client:
        with pytest.raises(openai.APIError) as info:
            async for chunk in await resume_with_sdk(client, chat_id):
                received.append(chunk)
    assert content_of(received) == "partial"
    assert info.value.message == "upstream 500"
    assert info.value.code == "provider_error" and info.value.type == "server_error"


async def test_heartbeats_between_chunks_do_not_break_the_sdk(cluster):
    store, chat_id, redis = await crafted_chat(cluster)
    try:
        await append(store, chat_id, token("one"))
        async with sdk(cluster) as client, http(cluster) as h:
            stream = await resume_with_sdk(client, chat_id)
            chunks = [await stream.__anext__()]  # the SDK has now seen an id:
            # A second connection, opened later, sees two heartbeats: so the
            # SDK's (same 50 ms interval, started earlier) has had one too.
            async with h.stream("GET", f"/v1/chat/completions/{chat_id}/stream", headers={"Last-Event-ID": "1"}) as raw:
                seen = b""
                with anyio.fail_after(5):
                    async for data in raw.aiter_bytes():
                        seen += data
                        if seen.count(b": ping\n") >= 2:
                            break
            assert seen.startswith(b": ping\n") and b": ping\n\n" not in seen, seen
            await append(store, chat_id, token(" two"), done())
            chunks += [c async for c in stream]
    finally:
        await redis.aclose()
    assert content_of(chunks) == "one two"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_resumed_chunks_are_identical_for_a_live_chat_joined_mid_way(cluster):
    """Joining a chat while it is being written gives the chunks the first reader got."""
    store, chat_id, redis = await crafted_chat(cluster)
    try:
        await append(store, chat_id, token("a"), token("b"))
        async with http(cluster) as h:
            async with h.stream("GET", f"/v1/chat/completions/{chat_id}/stream") as first:
                first_reader = Messages(first)
                head = await first_reader.read(2)
                async with h.stream(
                    "GET", f"/v1/chat/completions/{chat_id}/stream", headers={"Last-Event-ID": "1"}
                ) as second:
                    second_reader = Messages(second)
                    joined = await second_reader.read(1)
                    await append(store, chat_id, token("c"), done())
                    joined += await second_reader.read()
                rest = await first_reader.read()
    finally:
        await redis.aclose()
    assert head[1:] + rest == joined
    assert [i for i, _ in joined] == [2, 3, None, 4]  # no usage chunk: the chat was not made with include_usage


# --- bad requests: OpenAI's error shape, the native status codes ------------------------


UNPROCESSABLE, OTHER = openai.UnprocessableEntityError, openai.APIStatusError
TOO_LONG = [{"role": "user", "content": "x" * 2001}]
IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/i.png"}}]}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("kwargs", "error", "status", "code", "param"),
    [
        pytest.param({"messages": []}, UNPROCESSABLE, 422, "invalid_request", "messages", id="no-messages"),
        pytest.param({"temperature": 3}, UNPROCESSABLE, 422, "invalid_request", "temperature", id="temperature"),
        pytest.param({"max_tokens": 0}, UNPROCESSABLE, 422, "invalid_request", "max_tokens", id="max-tokens-0"),
        pytest.param({"max_tokens": 5000}, UNPROCESSABLE, 422, "invalid_request", None, id="max-tokens-limit"),
        pytest.param({"n": 2}, UNPROCESSABLE, 422, "unsupported", "n", id="n"),
        # What would change the answer is refused, never dropped silently.
        pytest.param({"tools": [TOOL]}, UNPROCESSABLE, 422, "unsupported", "tools", id="tools"),
        pytest.param({"tool_choice": "required"}, UNPROCESSABLE, 422, "unsupported", "tool_choice", id="tool-choice"),
        pytest.param(
            {"response_format": {"type": "json_object"}},
            *(UNPROCESSABLE, 422, "unsupported", "response_format"),
            id="response-format",
        ),
        pytest.param({"stop": ["\n"]}, UNPROCESSABLE, 422, "unsupported", "stop", id="stop"),
        pytest.param(
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "t"}]},
            *(UNPROCESSABLE, 422, "unsupported", "messages[0].role"),
            id="tool-role",
        ),
        pytest.param({"messages": IMAGE}, UNPROCESSABLE, 422, "unsupported", "messages[0].content[0]", id="image"),
        pytest.param(
            {"messages": [{"role": "user", "content": ""}]},
            *(UNPROCESSABLE, 422, "invalid_request", "messages[0].content"),
            id="empty",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "content": "hi"}]},
            *(UNPROCESSABLE, 422, "invalid_request", None),
            id="no-user",
        ),
        pytest.param({"messages": TOO_LONG}, OTHER, 413, "prompt_too_long", None, id="too-long"),
        pytest.param({"messages": TOO_LONG, "stream": True}, OTHER, 413, "prompt_too_long", None, id="too-long-stream"),
    ],
)
async def test_bad_bodies_raise_the_sdks_exceptions(cluster, kwargs, error, status, code, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    async with sdk(cluster) as client:
        with pytest.raises(error) as info:
            await client.chat.completions.create(**body)
    exc = info.value
    assert exc.status_code == status
    assert exc.type == "invalid_request_error" and exc.code == code and exc.param == param
    assert set(exc.body) == {"message", "type", "param", "code"} and exc.message


async def test_a_body_that_is_not_json_gets_an_openai_error(cluster):
    async with http(cluster) as client:
        response = await client.post(
            "/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["message"].startswith("the body is not valid JSON")


# --- waiting clients that give up, and the deadline ------------------------------------


async def _live_subscribers(redis: Redis) -> tuple[str, int] | None:
    """The idle cluster's only chat and how many API subscriptions its live channel has."""
    metas = await redis.keys("tf:*:meta")
    if len(metas) != 1:
        return None
    chat_id = metas[0].decode()[4:-6]
    [(_, count)] = await redis.pubsub_numsub(keys.live(chat_id))
    return chat_id, count


async def _subscribed(redis: Redis, count: int) -> tuple[str, int] | None:
    state = await _live_subscribers(redis)
    return state if state is not None and state[1] == count else None


async def _until(predicate, timeout: float = 5.0):
    with anyio.fail_after(timeout):
        while not (result := await predicate()):
            await anyio.sleep(0.01)
    return result


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
async def test_a_client_that_gives_up_releases_its_subscription_and_the_chat_stays(idle_cluster, stream):
    redis = Redis.from_url(idle_cluster.redis_url)
    await redis.flushdb()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "wait for me"}], "stream": stream}
    try:
        async with http(idle_cluster) as client, anyio.create_task_group() as tg:

            async def request() -> None:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    await response.aread()

            tg.start_soon(request)
            chat_id, _ = await _until(lambda: _subscribed(redis, 1))
            tg.cancel_scope.cancel()  # the client goes away
        # Released at once, not when the deadline ends the wait.
        deadline = float(idle_cluster.env["TOKENFAN_JOB_TIMEOUT_S"])
        await _until(lambda: _subscribed(redis, 0), timeout=deadline / 3)
        assert (await redis.hget(keys.meta(chat_id), "status")) == b"queued"
    finally:
        await redis.aclose()


async def test_a_non_streamed_completion_that_misses_the_deadline_is_a_504_not_to_retry(idle_cluster):
    async with sdk(idle_cluster) as client:
        with anyio.fail_after(float(idle_cluster.env["TOKENFAN_JOB_TIMEOUT_S"]) + 5):
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "too slow"}])
    exc = info.value
    assert exc.status_code == 504 and exc.code == "timeout" and exc.type == "server_error"
    assert exc.response.headers["x-should-retry"] == "false"
    chat_id = exc.response.headers["x-chat-id"]
    assert chat_id in exc.message and (await native_chat(idle_cluster, chat_id))["status"] == "queued"
