"""A worker's generation loop, with scripted providers, on a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.events import assemble_text
from shared.settings import Settings
from tests.integration.conftest import new_chat
from tests.waiting import eventually
from worker.generation import Generator
from worker.providers import Finish, ProviderError
from worker.providers.simulated import SimulatedProvider, answer_tokens

pytestmark = pytest.mark.anyio


class ScriptedProvider:
    """Yields what the test feeds it, when the test feeds it; records closing."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.closed = asyncio.Event()

    def feed(self, *items) -> None:
        for item in items:
            self.queue.put_nowait(item)

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def __call__(self, request):
        self.started.set()
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed.set()


def make_settings(**overrides) -> Settings:
    values = dict(batch_max_tokens=5, batch_max_delay_ms=10_000, max_attempts=3, lease_s=60)
    values.update(overrides)
    return Settings(**values)


async def texts(store, chat_id):
    return [(e.type, e.payload()) for e in await store.events(chat_id)]


async def token_texts(store, chat_id):
    return [e.payload()["text"] for e in await store.events(chat_id) if e.type == "token"]


async def test_first_token_alone_then_batches_of_max_tokens(store):
    provider = ScriptedProvider()
    generator = Generator(store, provider, make_settings())
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))

    provider.feed("Hello")
    assert await eventually(lambda: token_texts(store, chat_id)) == ["Hello"]
    provider.feed(" 0", " 1", " 2", " 3", " 4")  # the fifth completes a batch
    await eventually(lambda: _count(store, chat_id, 2))
    provider.feed(" 5", " 6")
    provider.end()  # the rest goes out with the terminal event
    await run

    assert await token_texts(store, chat_id) == ["Hello", " 0 1 2 3 4", " 5 6"]
    assert (await texts(store, chat_id))[-1] == (
        "done",
        {"finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 8}},
    )


async def test_a_batch_is_flushed_after_the_delay_without_more_tokens(store):
    provider = ScriptedProvider()
    generator = Generator(store, provider, make_settings(batch_max_tokens=100, batch_max_delay_ms=30))
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    provider.feed("A")
    await eventually(lambda: _count(store, chat_id, 1))
    provider.feed("b", "c")  # far fewer than 100: only the delay can flush them

    assert await eventually(lambda: _count(store, chat_id, 2), timeout=2)
    assert await token_texts(store, chat_id) == ["A", "bc"]
    provider.end()
    await run


async def test_delay_zero_batches_like_a_group_commit(store):
    generator = Generator(store, SimulatedProvider(ttft_ms=0, tokens_per_s=0), make_settings(batch_max_delay_ms=0))
    chat_id = await new_chat(store, "group commit", max_tokens=200)
    await generator.run(chat_id)

    pieces = await token_texts(store, chat_id)
    expected = answer_tokens("group commit", 200)
    assert "".join(pieces) == "".join(expected)
    assert len(pieces) < len(expected)  # tokens that arrived during an append went out together


async def test_a_provider_exception_ends_the_stream_with_an_error_event(store):
    provider = ScriptedProvider()
    generator = Generator(store, provider, make_settings())
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    provider.feed("partial", " text", RuntimeError("model crashed"))
    await run

    events = await texts(store, chat_id)
    assert events[-1] == ("error", {"code": "provider_error", "message": "RuntimeError: model crashed"})
    assert "".join(p["text"] for t, p in events if t == "token") == "partial text"
    assert (await store.meta(chat_id))["status"] == "error"


async def test_a_provider_error_keeps_its_code(store):
    provider = ScriptedProvider()
    chat_id = await new_chat(store)
    provider.feed(ProviderError("upstream_timeout", "no first token in 30 s"))
    await Generator(store, provider, make_settings()).run(chat_id)
    error = {"code": "upstream_timeout", "message": "no first token in 30 s"}
    assert (await texts(store, chat_id)) == [("error", error)]


async def test_a_retried_attempt_resets_and_streams_the_whole_answer(store):
    prompt = "retry me"
    chat_id = await new_chat(store, prompt, max_tokens=40)
    # Attempt 1 streamed a part, then its worker died (no terminal event).
    first = await store.claim(chat_id, lease_ms=60_000)
    await store.append(chat_id, first.attempt, [("token", {"text": "half an ans"})])

    await Generator(store, SimulatedProvider(0, 0), make_settings()).run(chat_id)

    events = await store.events(chat_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (events[1].type, events[1].payload()) == ("reset", {"attempt": 2, "reason": "worker_lost"})
    assert assemble_text(events) == "".join(answer_tokens(prompt, 40))
    assert events[-1].type == "done"


async def test_too_many_attempts_end_in_an_error(store):
    chat_id = await new_chat(store)
    for _ in range(3):
        await store.claim(chat_id, lease_ms=60_000)
    provider = ScriptedProvider()
    await Generator(store, provider, make_settings(max_attempts=3)).run(chat_id)

    events = await texts(store, chat_id)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "worker_lost"
    assert not provider.started.is_set()


async def test_a_finished_chat_is_not_run_again(store):
    chat_id = await new_chat(store, max_tokens=5)
    await Generator(store, SimulatedProvider(0, 0), make_settings()).run(chat_id)
    before = await store.events(chat_id)
    provider = ScriptedProvider()
    await Generator(store, provider, make_settings()).run(chat_id)
    assert await store.events(chat_id) == before
    assert not provider.started.is_set()


async def test_cancel_reaches_a_silent_provider_through_the_flag(store):
    provider = ScriptedProvider()  # never yields: a model that has not started
    generator = Generator(store, provider, make_settings())
    generator.cancel_poll_s = 0.05
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    await provider.started.wait()

    await store.redis.set(f"tf:{{{chat_id}}}:cancel", 1, ex=60)  # the flag alone, no nudge
    await asyncio.wait_for(run, timeout=2)

    assert provider.closed.is_set()
    assert (await texts(store, chat_id))[-1][1]["finish_reason"] == "cancelled"


async def test_cancel_reaches_the_provider_through_the_nudge(store):
    provider = ScriptedProvider()
    generator = Generator(store, provider, make_settings())
    generator.cancel_poll_s = 3600  # only the nudge can do it
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    provider.feed("Hi")
    await eventually(lambda: _count(store, chat_id, 1))

    generator.cancel(chat_id)
    await asyncio.wait_for(run, timeout=2)
    assert provider.closed.is_set()
    events = await texts(store, chat_id)
    assert events[-1] == ("done", {"finish_reason": "cancelled", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


async def test_cancel_seen_in_the_append_result_stops_a_busy_provider(store):
    generator = Generator(store, SimulatedProvider(ttft_ms=0, tokens_per_s=2000), make_settings(batch_max_delay_ms=0))
    generator.cancel_poll_s = 3600
    chat_id = await new_chat(store, "a long one", max_tokens=100_000)
    run = asyncio.create_task(generator.run(chat_id))
    await eventually(lambda: _count(store, chat_id, 3))
    await store.redis.set(f"tf:{{{chat_id}}}:cancel", 1, ex=60)

    await asyncio.wait_for(run, timeout=2)
    events = await texts(store, chat_id)
    assert events[-1][1]["finish_reason"] == "cancelled"
    assert events[-1][1]["usage"]["completion_tokens"] < 400


async def test_a_fenced_attempt_stops_without_writing(store, redis):
    provider = ScriptedProvider()
    generator = Generator(store, provider, make_settings(batch_max_tokens=1))
    chat_id = await new_chat(store)
    run = asyncio.create_task(generator.run(chat_id))
    provider.feed("mine")
    await eventually(lambda: _count(store, chat_id, 1))

    newer = await store.claim(chat_id, lease_ms=60_000)  # another worker took over
    provider.feed(" stale")
    await asyncio.wait_for(run, timeout=2)

    assert await token_texts(store, chat_id) == ["mine"]
    assert provider.closed.is_set()
    assert await redis.zscore("tf:running", chat_id) is not None  # the new attempt's lease stays
    assert newer.attempt == 2
    await store.release_lease(chat_id)


async def _count(store, chat_id, n):
    return len(await store.events(chat_id)) >= n


async def test_benchmarks_can_have_token_events_stamped(store):
    chat_id = await new_chat(store, max_tokens=3)
    before = time.time()
    await Generator(store, SimulatedProvider(0, 0), make_settings(stamp_events=True)).run(chat_id)
    stamps = [e.payload()["ts"] for e in await store.events(chat_id) if e.type == "token"]
    assert stamps and all(before <= ts <= time.time() for ts in stamps)


async def test_a_stamp_is_when_the_batchs_first_token_came_not_when_it_was_appended(store):
    """The benchmark's lag runs from "ts": it must include the batch's wait."""
    chat_id = await new_chat(store, max_tokens=10)
    yielded: list[tuple[str, float]] = []

    async def provider(request):
        for text in ("a", "b", "c"):
            yielded.append((text, time.time()))
            yield text
            await asyncio.sleep(0.03)

    settings = make_settings(stamp_events=True, batch_max_delay_ms=200, batch_max_tokens=100)
    await Generator(store, provider, settings).run(chat_id)
    tokens = [e.payload() for e in await store.events(chat_id) if e.type == "token"]
    # "a" goes out at once; "b" and "c" wait in one batch that "b" opened.
    assert [t["text"] for t in tokens] == ["a", "bc"]
    assert tokens[0]["ts"] == pytest.approx(yielded[0][1], abs=0.002)
    assert tokens[1]["ts"] == pytest.approx(yielded[1][1], abs=0.002)


# --- issue 12, item 2: an exception that does not come out of the provider ---------


async def _bytes_provider(request):
    yield b"not text"  # "".join(batch) raises TypeError in the worker, not in the provider


class _Unencodable:
    pass


async def _bad_usage_provider(request):
    yield "fine"
    yield Finish("stop", {"prompt_tokens": _Unencodable()})  # orjson cannot encode it


@pytest.mark.parametrize("provider", [_bytes_provider, _bad_usage_provider], ids=["bytes", "usage"])
async def test_an_unexpected_exception_ends_the_chat_with_internal_error(store, redis, provider):
    chat_id = await new_chat(store)
    await asyncio.wait_for(Generator(store, provider, make_settings()).run(chat_id), timeout=5)

    events = await texts(store, chat_id)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "internal_error", events
    assert (await store.meta(chat_id))["status"] == "error"
    assert await redis.zscore("tf:running", chat_id) is None  # its lease is released


async def test_an_unencodable_error_message_is_made_encodable(store):
    provider = ScriptedProvider()
    chat_id = await new_chat(store)
    provider.feed(RuntimeError("upstream said \udcff"))  # a lone surrogate: orjson refuses it
    await asyncio.wait_for(Generator(store, provider, make_settings()).run(chat_id), timeout=5)

    events = await texts(store, chat_id)
    assert events[-1] == ("error", {"code": "provider_error", "message": "RuntimeError: upstream said ?"})


class _Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text for you")


async def test_an_error_that_cannot_be_described_falls_back_to_a_minimal_event(store):
    provider = ScriptedProvider()
    chat_id = await new_chat(store)
    provider.feed("partial", _Unprintable())
    await asyncio.wait_for(Generator(store, provider, make_settings()).run(chat_id), timeout=5)

    events = await texts(store, chat_id)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "internal_error", events
    assert (await store.meta(chat_id))["status"] == "error"
