"""The event protocol, stream tokens and the simulated model."""

from __future__ import annotations

import asyncio
import time

from api import tokens
from shared.events import Event, assemble_text, error_frame
from worker.providers import ChatRequest, Finish
from worker.providers.simulated import SimulatedProvider, answer_length, answer_tokens


def test_an_event_frame_is_one_sse_message():
    event = Event(42, "token", b'{"text":"a\\nb"}')
    assert event.frame == b'id: 42\nevent: token\ndata: {"text":"a\\nb"}\n\n'
    assert Event.from_published(b'42 token {"text":"a\\nb"}') == event


def test_error_frames_carry_no_id():
    assert error_frame("log_expired", "gone") == b'event: error\ndata: {"code":"log_expired","message":"gone"}\n\n'


def test_text_is_assembled_after_the_last_reset():
    events = [
        Event(1, "token", b'{"text":"a"}'),
        Event(2, "reset", b'{"attempt":2,"reason":"worker_lost"}'),
        Event(3, "token", b'{"text":"b"}'),
        Event(4, "token", b'{"text":"c"}'),
        Event(5, "done", b'{"finish_reason":"stop","usage":{}}'),
    ]
    assert assemble_text(events) == "bc"


def test_stream_tokens_are_bound_to_a_chat_and_expire():
    secret = b"s3cret"
    token = tokens.sign(secret, "a" * 32, ttl_s=60)
    assert tokens.verify(secret, "a" * 32, token)
    assert not tokens.verify(secret, "b" * 32, token)
    assert not tokens.verify(b"other", "a" * 32, token)
    assert not tokens.verify(secret, "a" * 32, token[:-2] + "xx")
    assert not tokens.verify(secret, "a" * 32, tokens.sign(secret, "a" * 32, ttl_s=60, now=time.time() - 120))
    for junk in ("", ".", "abc.def", "1.", ".abc"):
        assert not tokens.verify(secret, "a" * 32, junk)


def request(prompt: str, max_tokens: int = 1000) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": prompt}], model="simulated", max_tokens=max_tokens)


async def collect(provider, req):
    return [piece async for piece in provider(req)]


def test_the_simulated_model_is_deterministic_and_honours_max_tokens():
    provider = SimulatedProvider(ttft_ms=0, tokens_per_s=0)
    full = asyncio.run(collect(provider, request("same prompt")))
    again = asyncio.run(collect(provider, request("same prompt")))
    other = asyncio.run(collect(provider, request("another prompt")))
    assert full == again and full != other
    assert full[-1] == Finish("stop", {"prompt_tokens": 2, "completion_tokens": answer_length("same prompt")})
    cut = asyncio.run(collect(provider, request("same prompt", max_tokens=5)))
    assert cut[:-1] == full[:5] == answer_tokens("same prompt", 5)
    assert cut[-1].finish_reason == "length"


def test_the_simulated_model_writes_whole_sentences_of_space_led_words():
    for i in range(500):
        prompt = f"sentences {i}"
        tokens = answer_tokens(prompt, 1000)
        assert len(tokens) == answer_length(prompt)  # 20..419
        text = "".join(tokens)
        assert text[0].isupper() and text.endswith("."), text
        assert all(s[0].isupper() for s in text[:-1].split(". ")), text
        # The benchmark counts tokens by their spaces: one before each but the first.
        assert tokens[0].count(" ") == 0 and all(t.startswith(" ") and t.count(" ") == 1 for t in tokens[1:])
        assert answer_tokens(prompt, 7) == tokens[:7]


def test_the_simulated_model_keeps_its_pace():
    provider = SimulatedProvider(ttft_ms=30, tokens_per_s=200)
    started = time.monotonic()
    pieces = asyncio.run(collect(provider, request("pace", max_tokens=20)))
    elapsed = time.monotonic() - started
    assert len(pieces) == 21
    assert 0.03 + 19 / 200 <= elapsed < 1.0  # ttft + 19 intervals, give or take scheduling


def test_a_workers_jobs_are_held_in_progress_for_one_lease_only():
    from shared.settings import Settings
    from worker.arq_worker import create_worker

    worker = create_worker(Settings(lease_s=4, job_timeout_s=3600))
    assert worker.in_progress_timeout_s == 4  # not arq's job_timeout + 10 s
    assert worker.job_timeout_s == 3600
