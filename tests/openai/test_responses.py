"""OpenAI's Responses API (api/responses.py) against real processes, consumed
by the official ``openai`` SDK: ``responses.create`` streamed, waited for and
in the background, and OpenAI's own resume, ``responses.retrieve(id,
stream=True, starting_after=N)``, whose ``sequence_number``s must be the same
on every read.

Some tests write a chat's events straight into Redis through ``ChatStore``
(no job is enqueued): a reset and a generation error happen exactly when the
test wants."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from harness import Cluster, prompt_with_length
from openai import OpenAI
from redis.asyncio import Redis

from shared import keys
from shared.events import EventType
from shared.store import ChatStore, terminal_meta
from worker.providers.simulated import answer_length

pytestmark = [pytest.mark.e2e]

MODEL = "simulated"
TYPES_OF_A_COMPLETED_RESPONSE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def sdk(cluster: Cluster) -> Iterator[OpenAI]:
    client = OpenAI(base_url=f"{cluster.api.url}/v1", api_key="unused", max_retries=0, timeout=20.0)
    try:
        yield client
    finally:
        client.close()


def native_text(cluster: Cluster, chat_id: str) -> str:
    response = httpx.get(f"{cluster.api.url}/chat/{chat_id}", timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()["text"]


def dumps(events) -> list[dict]:
    return [e.model_dump() for e in events]


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_create_streamed(cluster, sdk):
    prompt = prompt_with_length(30, 60, tag="responses-stream")
    events = list(sdk.responses.create(model=MODEL, input=prompt, max_output_tokens=200, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events if e.type != "response.output_text.delta"] == TYPES_OF_A_COMPLETED_RESPONSE
    rid = events[0].response.id
    final = events[-1].response
    text = native_text(cluster, rid.removeprefix("resp_"))
    assert deltas(events) == final.output_text == text != ""
    assert events[-4].text == text and events[-2].item.content[0].text == text
    assert final.status == "completed" and final.usage.output_tokens == answer_length(prompt)  # tokens, not events
    assert final.id == rid and final.output[0].id == events[2].item.id == f"msg_{rid.removeprefix('resp_')}"
    retrieved = sdk.responses.retrieve(rid)
    assert retrieved.model_dump() == final.model_dump()


def test_resume_from_any_sequence_number_is_exact(cluster, sdk):
    """The same events on every read: the POST's stream, the whole replay,
    and every resume after N is exactly the replay's tail after N."""
    prompt = prompt_with_length(20, 40, tag="responses-resume")
    posted = dumps(sdk.responses.create(model=MODEL, input=prompt, stream=True))
    rid = posted[0]["response"]["id"]
    assert dumps(sdk.responses.retrieve(rid, stream=True)) == posted
    last = posted[-1]["sequence_number"]
    for after in sorted({0, 1, 2, 3, 4, 5, last // 2, last - 4, last - 3, last - 1, last}):
        resumed = dumps(sdk.responses.retrieve(rid, stream=True, starting_after=after))
        assert resumed == posted[after + 1 :], after
    with pytest.raises(openai.BadRequestError) as exc:
        list(sdk.responses.retrieve(rid, stream=True, starting_after=last + 1))
    assert exc.value.body["code"] == "invalid_starting_after"


def test_resume_a_live_stream_after_a_cut(cluster, sdk):
    """A client cut mid-answer resumes from the last sequence_number it saw:
    together, one gap-free sequence and the whole text."""
    prompt = prompt_with_length(250, tag="responses-cut")
    first = []
    stream = sdk.responses.create(model=MODEL, input=prompt, stream=True)
    for event in stream:
        first.append(event)
        if event.sequence_number == 10:
            break
    stream.close()
    rid = first[0].response.id
    rest = list(sdk.responses.retrieve(rid, stream=True, starting_after=first[-1].sequence_number))
    events = first + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert deltas(events) == events[-1].response.output_text == native_text(cluster, rid.removeprefix("resp_"))


def test_create_waited_for_and_length(cluster, sdk):
    response = sdk.responses.create(model=MODEL, input=[{"role": "user", "content": "hi there"}], max_output_tokens=6)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == native_text(cluster, response.id.removeprefix("resp_")) != ""
    assert response.usage.output_tokens == 6
    history = [
        {"role": "developer", "content": "and kind"},
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
        {"type": "message", "role": "user", "content": "again"},
    ]
    instructed = sdk.responses.create(model=MODEL, instructions="be brief", input=history)
    assert instructed.status in ("completed", "incomplete") and instructed.instructions == "be brief"


def test_background_then_retrieve(cluster, sdk):
    queued = sdk.responses.create(model=MODEL, input="in the background", background=True, metadata={"k": "v"})
    assert queued.status == "queued" and queued.background is True and queued.output == []
    events = list(sdk.responses.retrieve(queued.id, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")
    done = sdk.responses.retrieve(queued.id)
    assert done.status == events[-1].response.status and done.metadata == {"k": "v"}
    assert done.output_text == deltas(events)


@asynccontextmanager
async def crafted(cluster: Cluster) -> AsyncIterator[tuple[ChatStore, str]]:
    """A chat recorded in Redis but never enqueued: the test appends its events."""
    redis = Redis.from_url(cluster.redis_url)
    store = ChatStore(redis, ttl_s=300, maxlen=10_000)
    chat_id = keys.new_chat_id()
    request = {"messages": [{"role": "user", "content": "crafted"}], "responses": {"max_output_tokens": 50}}
    await store.create(chat_id, request, model=MODEL)
    try:
        yield store, chat_id
    finally:
        await redis.aclose()


async def append(store: ChatStore, chat_id: str, *events: tuple[str, dict]) -> None:
    terminal = events[-1] if events[-1][0] in (EventType.DONE, EventType.ERROR) else None
    result = await store.append(chat_id, 0, events, terminal_meta(*terminal) if terminal else None)
    assert result.accepted, result


@pytest.mark.anyio
async def test_a_reset_and_the_text_after_it(cluster, sdk):
    async with crafted(cluster) as (store, chat_id):
        usage = {"prompt_tokens": 1, "completion_tokens": 2}
        await append(
            store,
            chat_id,
            (EventType.TOKEN, {"text": "Cut "}),
            (EventType.RESET, {"attempt": 2, "reason": "worker_lost"}),
            (EventType.TOKEN, {"text": "Whole "}),
            (EventType.TOKEN, {"text": "answer"}),
            (EventType.DONE, {"finish_reason": "stop", "usage": usage}),
        )
    rid = f"resp_{chat_id}"
    events = list(sdk.responses.retrieve(rid, stream=True))
    reset = events[5]
    assert reset.type == "response.output_text.delta" and reset.delta == ""
    assert reset.model_extra["tokenfan_reset"] == {"attempt": 2, "reason": "worker_lost"}
    assert events[-1].response.output_text == "Whole answer" == sdk.responses.retrieve(rid).output_text
    # Resumed after the reset, the .done events still carry the whole new text.
    resumed = list(sdk.responses.retrieve(rid, stream=True, starting_after=6))
    assert resumed[-4].text == "Whole answer"


@pytest.mark.anyio
async def test_a_generation_error_is_response_failed(cluster, sdk):
    async with crafted(cluster) as (store, chat_id):
        await append(
            store,
            chat_id,
            (EventType.TOKEN, {"text": "Half"}),
            (EventType.ERROR, {"code": "upstream_error", "message": "the model broke"}),
        )
    rid = f"resp_{chat_id}"
    events = list(sdk.responses.retrieve(rid, stream=True))
    assert events[-1].type == "response.failed" and events[-1].sequence_number == 5
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "upstream_error"
    assert failed.error.message == "the model broke"
    assert sdk.responses.retrieve(rid).status == "failed"


def test_cancel(idle_cluster):
    client = OpenAI(base_url=f"{idle_cluster.api.url}/v1", api_key="unused", max_retries=0, timeout=20.0)
    with client:
        queued = client.responses.create(model=MODEL, input="never runs", background=True)
        cancelled = client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        events = list(client.responses.retrieve(queued.id, stream=True))
        assert events[-1].type == "response.incomplete" and events[-1].response.status == "cancelled"
        with pytest.raises(openai.ConflictError):
            client.responses.cancel(queued.id)


def test_errors_are_openai_shaped(cluster, sdk):
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        sdk.responses.create(model=MODEL, input="x", tools=[{"type": "function", "name": "f", "parameters": {}}])
    assert exc.value.body["param"] == "tools"
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        sdk.responses.create(model=MODEL, input=image)
    assert exc.value.body["param"] == "input[0].content[0]"
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.responses.create(model=MODEL, input="x", previous_response_id="resp_abc")
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.responses.create(model=MODEL, input="")
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.responses.create(model=MODEL, input="x", text={"format": {"type": "json_object"}})
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("nonsense")
    r = httpx.get(f"{cluster.api.url}/v1/responses/resp_x?stream=true&starting_after=abc", timeout=10.0)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"
