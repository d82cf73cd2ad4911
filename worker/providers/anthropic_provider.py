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
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import Attempt, StreamEndedEarly, UpstreamPolicy, UpstreamProvider

DEFAULT_BASE_URL = "https://api.anthropic.com"

# Anthropic's stop reasons in tokenfan's words ("stop", "length"); others pass as they are.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def build(settings: Settings) -> UpstreamProvider:
    api_key = settings.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        raise ValueError(
            "the anthropic provider needs an API key: set ANTHROPIC_API_KEY or TOKENFAN_ANTHROPIC_API_KEY "
            "(any non-empty value for a local server that checks none)"
        )
    base_url = settings.anthropic_base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,  # the retry policy is upstream.py's
        timeout=anthropic.Timeout(settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s),
    )

    async def stream(request: ChatRequest, attempt: Attempt) -> AsyncIterator[str | Finish]:
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
        response = await client.messages.create(stream=True, **params)
        attempt.opened = True
        async with response:  # closing it closes the connection: the server stops generating
            stop_reason: str | None = None
            input_tokens = output_tokens = None
            async for event in response:
                kind = event.type
                if kind == "content_block_delta":
                    if event.delta.type == "text_delta" and event.delta.text:
                        yield event.delta.text
                elif kind == "message_start":
                    input_tokens = _input_tokens(event.message.usage)
                    output_tokens = event.message.usage.output_tokens
                elif kind == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    if event.usage is not None:
                        output_tokens = event.usage.output_tokens
                        input_tokens = _input_tokens(event.usage) or input_tokens
            if stop_reason is None:
                raise StreamEndedEarly("the stream ended without a stop_reason")
            usage = None
            if input_tokens is not None and output_tokens is not None:
                usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
            yield Finish(_FINISH.get(stop_reason, stop_reason), usage)

    policy = UpstreamPolicy(
        first_token_timeout_s=settings.upstream_first_token_timeout_s,
        retries=settings.upstream_retries,
        retry_backoff_s=settings.upstream_retry_backoff_s,
    )
    return UpstreamProvider("anthropic", anthropic, base_url, stream, policy)


def _input_tokens(usage: Any) -> int | None:
    """The whole prompt: Anthropic counts tokens read from or written to its
    prompt cache apart from ``input_tokens``."""
    parts = [
        getattr(usage, name, None)
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    if parts[0] is None:
        return None
    return sum(p for p in parts if p)
