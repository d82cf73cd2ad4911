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
from collections.abc import AsyncGenerator
from typing import Any

import openai
import orjson

from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import StreamEndedEarly, UpstreamProvider, UpstreamTry, policy_of, sdk_client, sse_data

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# OpenAI's reasons; "stop" and "length" are the ones tokenfan's clients know.
_FINISH = {"stop": "stop", "length": "length"}


def build(settings: Settings) -> UpstreamProvider:
    api_key = settings.openai_api_key or os.environ.get("OPENAI_API_KEY")
    base_url = settings.openai_base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    client = sdk_client(openai, "AsyncOpenAI", settings, api_key, base_url, "OPENAI")
    token_param = settings.openai_max_tokens_param
    include_usage = settings.openai_include_usage

    async def stream(request: ChatRequest, try_: UpstreamTry) -> AsyncGenerator[str | Finish]:
        messages = list(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        params: dict[str, Any] = {"model": request.model, "messages": messages, token_param: request.max_tokens}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if include_usage:
            params["stream_options"] = {"include_usage": True}
        # Leaving the block closes the connection: the server stops generating.
        async with client.chat.completions.with_streaming_response.create(stream=True, **params) as response:
            try_.opened = True
            finish_reason: str | None = None
            usage: dict[str, int] | None = None
            async for data in sse_data(response.iter_bytes()):
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if chunk.get("error"):
                    raise openai.APIError("error in the stream", response.http_request, body=chunk)
                if chunk.get("usage"):
                    usage = {
                        "prompt_tokens": chunk["usage"].get("prompt_tokens"),
                        "completion_tokens": chunk["usage"].get("completion_tokens"),
                    }
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
            if finish_reason is None:
                raise StreamEndedEarly("the stream ended without a finish_reason")
            yield Finish(_FINISH.get(finish_reason, finish_reason), usage)

    return UpstreamProvider("openai", openai, base_url, stream, policy_of(settings))
