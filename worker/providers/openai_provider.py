"""``TOKENFAN_PROVIDER=openai``: any OpenAI-compatible chat completions server
(OpenAI, vLLM, llama.cpp's server, Ollama, OpenRouter…) through the official
``openai`` SDK, streaming.

Where: ``TOKENFAN_OPENAI_BASE_URL`` / ``TOKENFAN_OPENAI_API_KEY``, else the
SDK's own ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``. Retries, timeouts and error
codes: ``worker/providers/upstream.py``.

(The module is not named ``openai.py`` so that nothing can mistake it for the SDK.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import openai

from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import Attempt, StreamEndedEarly, UpstreamPolicy, UpstreamProvider

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# OpenAI's reasons; "stop" and "length" are the ones tokenfan's clients know.
_FINISH = {"stop": "stop", "length": "length"}


def build(settings: Settings) -> UpstreamProvider:
    api_key = settings.openai_api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        raise ValueError(
            "the openai provider needs an API key: set OPENAI_API_KEY or TOKENFAN_OPENAI_API_KEY "
            "(any non-empty value for a local server that checks none)"
        )
    base_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,  # the retry policy is upstream.py's
        timeout=openai.Timeout(settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s),
    )
    token_param = settings.openai_max_tokens_param
    include_usage = settings.openai_include_usage

    async def stream(request: ChatRequest, attempt: Attempt) -> AsyncIterator[str | Finish]:
        messages = list(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        params: dict[str, Any] = {"model": request.model, "messages": messages, token_param: request.max_tokens}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if include_usage:
            params["stream_options"] = {"include_usage": True}
        response = await client.chat.completions.create(stream=True, **params)
        attempt.opened = True
        async with response:  # closing it closes the connection: the server stops generating
            finish_reason: str | None = None
            usage: dict[str, int] | None = None
            async for chunk in response:
                if chunk.usage is not None:
                    usage = {
                        "prompt_tokens": chunk.usage.prompt_tokens,
                        "completion_tokens": chunk.usage.completion_tokens,
                    }
                for choice in chunk.choices[:1]:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
            if finish_reason is None:
                raise StreamEndedEarly("the stream ended without a finish_reason")
            yield Finish(_FINISH.get(finish_reason, finish_reason), usage)

    policy = UpstreamPolicy(
        first_token_timeout_s=settings.upstream_first_token_timeout_s,
        retries=settings.upstream_retries,
        retry_backoff_s=settings.upstream_retry_backoff_s,
    )
    return UpstreamProvider("openai", openai, base_url, stream, policy)
