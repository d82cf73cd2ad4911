"""The retry policy and error mapping of worker/providers/upstream.py, with
the SDKs' own exception objects (what the SDKs raise for real is covered
against llama-server in test_llm_failures.py): retried before the first
token for connection errors, 408/409/429/5xx and early ends; never after it;
never for timeouts or other 4xx."""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import openai
import pytest

from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import StreamEndedEarly, UpstreamFailure, UpstreamPolicy, UpstreamProvider

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="m", max_tokens=5)
HTTP_REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def status_error(sdk, status: int, message: str = "busy"):
    response = httpx2.Response(status, request=HTTP_REQUEST, json={"error": {"message": message}})
    return sdk.APIStatusError(f"Error code: {status}", response=response, body={"error": {"message": message}})


def provider(sdk, failures: list, after_first: BaseException | None = None, retries: int = 2, timeout: float = 5):
    """A provider whose tries fail with ``failures`` in turn, then stream "a", "b"."""
    tries: list[int] = []

    async def stream(request, try_):
        tries.append(1)
        if len(tries) <= len(failures):
            try_.opened = True
            raise failures[len(tries) - 1]
        yield "a"
        if after_first is not None:
            raise after_first
        yield "b"
        yield Finish("stop", None)

    policy = UpstreamPolicy(first_token_timeout_s=timeout, retries=retries, retry_backoff_s=0.001)
    return UpstreamProvider(sdk.__name__, sdk, "http://127.0.0.1:9", stream, policy), tries


async def collect(p) -> list:
    return [piece async for piece in p(REQUEST)]


@pytest.mark.parametrize("sdk", [openai, anthropic])
@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retryable_status_is_retried_before_the_first_token(sdk, status):
    p, tries = provider(sdk, [status_error(sdk, status), status_error(sdk, status)])
    assert asyncio.run(collect(p)) == ["a", "b", Finish("stop", None)]
    assert len(tries) == 3


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_retries_are_bounded(sdk):
    p, tries = provider(sdk, [status_error(sdk, 503)] * 5, retries=2)
    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(collect(p))
    assert info.value.code == "upstream_error"
    assert "503" in info.value.message and "busy" in info.value.message and "(3 tries)" in info.value.message
    assert len(tries) == 3


@pytest.mark.parametrize("sdk", [openai, anthropic])
@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_is_not_retried(sdk, status):
    p, tries = provider(sdk, [status_error(sdk, status, "bad model")])
    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(collect(p))
    assert info.value.code == "upstream_error" and "bad model" in info.value.message
    assert len(tries) == 1


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_timeout_is_not_retried(sdk):
    p, tries = provider(sdk, [sdk.APITimeoutError(request=HTTP_REQUEST)])
    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(collect(p))
    assert info.value.code == "upstream_timeout"
    assert len(tries) == 1


@pytest.mark.parametrize("sdk", [openai, anthropic])
def test_stream_ending_early_before_any_text_is_retried(sdk):
    p, tries = provider(sdk, [StreamEndedEarly("no finish")])
    assert asyncio.run(collect(p))[0] == "a"
    assert len(tries) == 2


@pytest.mark.parametrize("sdk", [openai, anthropic])
@pytest.mark.parametrize(
    "exc, code",
    [
        (httpx2.RemoteProtocolError("peer closed connection"), "upstream_disconnected"),
        (StreamEndedEarly("no finish_reason"), "upstream_disconnected"),
        (httpx2.ReadTimeout("read timed out"), "upstream_timeout"),
    ],
)
def test_nothing_is_retried_after_the_first_token(sdk, exc, code):
    p, tries = provider(sdk, [], after_first=exc)
    got: list = []

    async def run():
        async for piece in p(REQUEST):
            got.append(piece)

    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(run())
    assert info.value.code == code
    assert got == ["a"] and len(tries) == 1


def test_first_token_deadline_bounds_the_retries():
    """Backoff that would pass the deadline is not waited for: the last error is reported."""

    async def stream(request, try_):
        raise openai.APIConnectionError(request=HTTP_REQUEST)
        yield  # pragma: no cover

    p = UpstreamProvider(
        "openai", openai, "x", stream, UpstreamPolicy(first_token_timeout_s=0.3, retries=50, retry_backoff_s=0.1)
    )
    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(collect(p))
    assert info.value.code == "upstream_unavailable"


def test_silence_before_the_first_token_is_a_timeout():
    async def stream(request, try_):
        await asyncio.sleep(30)
        yield "late"

    p = UpstreamProvider("openai", openai, "x", stream, UpstreamPolicy(first_token_timeout_s=0.05, retries=3))
    with pytest.raises(UpstreamFailure) as info:
        asyncio.run(collect(p))
    assert info.value.code == "upstream_timeout"
