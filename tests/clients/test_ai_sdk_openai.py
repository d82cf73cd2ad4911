"""The AI SDK's OpenAI provider against real processes: ``openai(model)`` is
the Responses API (POST /v1/responses, api/responses.py), used unmodified by
``streamText`` and ``generateText`` (tests/clients/responses_stream.mjs).
Two pairs: ``@ai-sdk/openai`` 3 with ``ai`` 6, and ``@ai-sdk/openai`` 2 with ai 5."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from harness import get_chat, prompt_with_length

from worker.providers.simulated import answer_length

from .nodekit import run_node

pytestmark = pytest.mark.e2e

PAIRS = [("@ai-sdk/openai", "ai"), ("ai-sdk-openai-v2", "ai-v5")]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


@pytest.mark.parametrize("provider, ai", PAIRS)
def test_stream_text(cluster, client, provider, ai):
    prompt = prompt_with_length(20, 40, tag=f"stream-{provider}")
    result = run_node("responses_stream.mjs", provider, ai, f"{cluster.api.url}/v1", prompt, "100", "stream")
    assert "error" not in result and result["errors"] == [], result
    chat = get_chat(client, cluster.api.url, result["responseId"].removeprefix("resp_"))
    assert result["text"] == chat["text"] != ""
    assert result["finishReason"] == "stop"
    assert result["usage"]["outputTokens"] == answer_length(prompt)


@pytest.mark.parametrize("provider, ai", PAIRS)
def test_generate_text_and_length(cluster, client, provider, ai):
    prompt = prompt_with_length(30, tag=f"generate-{provider}")
    result = run_node("responses_stream.mjs", provider, ai, f"{cluster.api.url}/v1", prompt, "7", "generate")
    assert "error" not in result, result
    chat = get_chat(client, cluster.api.url, result["responseId"].removeprefix("resp_"))
    assert result["text"] == chat["text"] != ""
    assert result["finishReason"] == "length"  # max_output_tokens reached: response "incomplete"
    assert result["usage"]["outputTokens"] == 7
