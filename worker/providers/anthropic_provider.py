"""``TOKENFAN_PROVIDER=anthropic``: Anthropic's Messages API (or a server that
speaks it, such as llama.cpp's ``/v1/messages``) through the official
``anthropic`` SDK, streaming.

Where: ``TOKENFAN_ANTHROPIC_BASE_URL`` / ``TOKENFAN_ANTHROPIC_API_KEY``, else
the SDK's own ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``. The request's
``system`` (and any ``system`` messages) go to the API's ``system`` field.
Retries, timeouts and error codes: ``worker/providers/upstream.py``.

(The module is not named ``anthropic.py`` so that nothing can mistake it for the SDK.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import anthropic
import orjson

from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import StreamEndedEarly, UpstreamProvider, UpstreamTry, policy_of, sdk_client, sse_data

DEFAULT_BASE_URL = "https://api.anthropic.com"

# Anthropic's stop reasons in tokenfan's words ("stop", "length"); others pass as they are.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def build(settings: Settings) -> UpstreamProvider:
    api_key = settings.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY")
    base_url = settings.anthropic_base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    client = sdk_client(anthropic, "AsyncAnthropic", settings, api_key, base_url, "ANTHROPIC")

    async def stream(request: ChatRequest, try_: UpstreamTry) -> AsyncGenerator[str | Finish]:
        system = [request.system] if request.system else []
        messages = []
        for m in request.messages:
            if m["role"] == "system":
                system.append(m["content"])
            else:
                messages.append({"role": m["role"], "content": m["content"]})
        params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            params["system"] = "\n\n".join(system)
        if request.temperature is not None:
            # In the body, not as a keyword: anthropic 2.x has no ``temperature`` argument
            # (recent models fix it), while older models and other servers honour it.
            params["extra_body"] = {"temperature": request.temperature}
        # Leaving the block closes the connection: the server stops generating.
        async with client.messages.with_streaming_response.create(stream=True, **params) as response:
            try_.opened = True
            stop_reason: str | None = None
            input_tokens = output_tokens = None
            async for data in sse_data(response.iter_bytes()):
                event = orjson.loads(data)
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield delta["text"]
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    input_tokens = _input_tokens(usage)
                    output_tokens = usage.get("output_tokens")
                elif kind == "message_delta":
                    stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                    usage = event.get("usage")
                    if usage:
                        output_tokens = usage.get("output_tokens", output_tokens)
                        input_tokens = _input_tokens(usage) or input_tokens
                elif kind == "message_stop":
                    break
                elif kind == "error":
                    raise anthropic.APIError("error in the stream", response.http_request, body=event)
            if stop_reason is None:
                raise StreamEndedEarly("the stream ended without a stop_reason")
            usage_out = None
            if input_tokens is not None and output_tokens is not None:
                usage_out = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
            yield Finish(_FINISH.get(stop_reason, stop_reason), usage_out)

    return UpstreamProvider("anthropic", anthropic, base_url, stream, policy_of(settings))


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """The whole prompt: Anthropic counts tokens read from or written to its
    prompt cache apart from ``input_tokens``."""
    parts = [usage.get(name) for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    if parts[0] is None:
        return None
    return sum(p for p in parts if p)
