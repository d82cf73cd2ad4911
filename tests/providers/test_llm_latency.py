"""What tokenfan adds to a real model's latency: time to first token and
tokens per second seen by a client of tokenfan (POST /chat, then its SSE
stream) against the same model server read directly with the ``openai`` SDK,
interleaved in one run. Printed in the run's summary; only sanity is asserted
(timings on a shared 2-core machine are not a pass/fail matter)."""

from __future__ import annotations

import json
import statistics
import time

import openai
import pytest
from harness import read_stream
from llm_support import API_KEY, MODEL, measure, provider_env

pytestmark = pytest.mark.e2e

RUNS = 5
MAX_TOKENS = 64
PROMPT = "Write a short story about a lighthouse keeper."


def _direct(sdk: openai.OpenAI) -> tuple[float, float, int]:
    """(TTFT s, tokens/s after the first, tokens) straight from llama-server."""
    started = time.monotonic()
    times: list[float] = []
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.monotonic())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    return times[0] - started, (tokens - 1) / (times[-1] - times[0]), tokens


def _through_tokenfan(client, api_url: str) -> tuple[float, float, int]:
    """(TTFT s, tokens/s after the first, tokens) as a tokenfan client sees them."""
    started = time.monotonic()
    r = client.post(f"{api_url}/chat", json={"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 202, r.text
    read = read_stream(client, api_url, r.json()["id"])
    token_times = [t for t, (_, kind, _) in zip(read.times, read.events, strict=True) if kind == "token"]
    assert read.events[-1][1] == "done", read.events[-1]
    first_event_tokens = 1  # the worker appends the first token alone, at once
    tokens = json.loads(read.events[-1][2])["usage"]["completion_tokens"]
    rate = (tokens - first_event_tokens) / (token_times[-1] - token_times[0])
    return token_times[0] - started, rate, tokens


def test_ttft_and_tokens_per_s_through_tokenfan_vs_direct(clusters, llama_long, client):
    cluster = clusters(env=provider_env("openai", llama_long))
    sdk = openai.OpenAI(base_url=f"{llama_long.url}/v1", api_key=API_KEY, max_retries=0)
    _direct(sdk), _through_tokenfan(client, cluster.api.url)  # warm both paths up
    direct, fanned = [], []
    for _ in range(RUNS):
        direct.append(_direct(sdk))
        fanned.append(_through_tokenfan(client, cluster.api.url))
    for runs in (direct, fanned):
        assert all(tokens == MAX_TOKENS for _, _, tokens in runs)

    def line(name: str, runs) -> str:
        ttft = statistics.median(r[0] for r in runs) * 1000
        rate = statistics.median(r[1] for r in runs)
        return f"{name:<22} TTFT median {ttft:7.1f} ms   {rate:6.1f} tokens/s"

    measure(f"SmolLM2-135M Q4_1 on llama-server, {RUNS} runs of {MAX_TOKENS} tokens each, interleaved:")
    measure(line("llama-server directly", direct))
    measure(line("through tokenfan", fanned))
    ttft_added = statistics.median(f[0] - d[0] for d, f in zip(direct, fanned, strict=True)) * 1000
    measure(f"tokenfan adds {ttft_added:.1f} ms to the first token (median of paired runs)")
