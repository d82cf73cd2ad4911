"""What the ``openai`` and ``anthropic`` providers share: the retry policy, the
first-token deadline, and turning SDK and transport exceptions into a
``ProviderError`` with a stable code.

Error codes (the ``code`` of the ``error`` event):

``upstream_unavailable``   the model server could not be reached (connection
                           refused, reset or unresolvable) before it answered.
``upstream_error``         it answered with an HTTP error (4xx, 5xx) or an
                           error inside the stream.
``upstream_timeout``       no first token within ``upstream_first_token_timeout_s``,
                           or no data for ``upstream_read_timeout_s`` later on.
``upstream_disconnected``  the stream broke off after the server had answered:
                           the connection dropped, or it ended without saying
                           why it stopped.

Retry policy. Only before the first token, and only for failures that the
next try may not repeat: the server unreachable, a stream that broke off
before any text, and HTTP 408, 409, 429 and 5xx. At most
``upstream_retries`` more tries, ``upstream_retry_backoff_s`` × 1, 2, 4…
apart, all within the first-token deadline. A timeout is not retried (the
server may still be working on the first try), nor is any other 4xx. Once a
token has been yielded nothing is retried: the error ends the chat. The SDKs'
own retries are off (``max_retries=0``), so this is the whole policy.

Parsing: the SDKs open the request (auth, base URL, headers, status errors)
and hand back the raw response; the providers read its server-sent events
with ``sse_data`` and orjson. The SDKs' own stream readers build pydantic
models for every chunk, most of the CPU a token costs.

Cancel: closing the provider's iterator (or cancelling the task iterating it)
closes the SDK stream, which closes the HTTP connection; a model server stops
generating for a client that has gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import TokenfanError
from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish, ProviderError

log = logging.getLogger("tokenfan.worker.upstream")

UNAVAILABLE = "upstream_unavailable"
ERROR = "upstream_error"
TIMEOUT = "upstream_timeout"
DISCONNECTED = "upstream_disconnected"

RETRYABLE_STATUS = frozenset({408, 409, 429})
MESSAGE_LIMIT = 500


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(transport errors, timeouts) of the HTTP clients the SDKs may use:
    ``httpx2`` (openai 3, anthropic 2) and ``httpx`` (older releases)."""
    errors: list[type[BaseException]] = []
    timeouts: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.TransportError)
        timeouts.append(module.TimeoutException)
    return tuple(errors), tuple(timeouts)


TRANSPORT_ERRORS, TRANSPORT_TIMEOUTS = _transport_errors()


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    first_token_timeout_s: float = 60.0
    retries: int = 2
    retry_backoff_s: float = 0.5


def policy_of(settings: Settings) -> UpstreamPolicy:
    return UpstreamPolicy(
        first_token_timeout_s=settings.upstream_first_token_timeout_s,
        retries=settings.upstream_retries,
        retry_backoff_s=settings.upstream_retry_backoff_s,
    )


def sdk_client(sdk: Any, client_class: str, settings: Settings, api_key: str | None, base_url: str, env: str) -> Any:
    """An SDK client with tokenfan's timeouts and no retries of its own (the
    policy above is the whole retry policy). ``env`` names the SDK's variables."""
    if not api_key:
        raise ValueError(
            f"the {sdk.__name__} provider needs an API key: set {env}_API_KEY or TOKENFAN_{env}_API_KEY "
            "(any non-empty value for a local server that checks none)"
        )
    return getattr(sdk, client_class)(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=sdk.Timeout(settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s),
    )


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each server-sent event in a byte stream. Event names, ids
    and comments are dropped: both APIs say the type inside the JSON."""
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if data:
        yield b"\n".join(data)


class UpstreamFailure(ProviderError):
    """A ProviderError that knows whether another try may succeed."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(code, _clip(message))
        self.retryable = retryable


class StreamEndedEarly(TokenfanError):
    """The upstream stream ended without saying why it stopped."""


class UpstreamTry:
    """Where one try is: ``opened`` once the server has answered with a stream."""

    def __init__(self) -> None:
        self.opened = False


# One try: request in, text pieces then one Finish out; raises the SDK's exceptions.
StreamFn = Callable[[ChatRequest, UpstreamTry], AsyncGenerator["str | Finish"]]


class UpstreamProvider:
    """Runs a provider's ``stream`` with the retry policy and the first-token
    deadline, and maps its exceptions with ``sdk`` (the SDK module: both SDKs
    name their exceptions alike)."""

    def __init__(self, name: str, sdk: Any, base_url: str, stream: StreamFn, policy: UpstreamPolicy) -> None:
        self.name = name
        self.sdk = sdk
        self.base_url = base_url
        self.stream = stream
        self.policy = policy

    async def __call__(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        loop = asyncio.get_running_loop()
        policy = self.policy
        deadline = loop.time() + policy.first_token_timeout_s
        tries = 0
        while True:
            try_ = UpstreamTry()
            pieces = self.stream(request, try_)
            try:
                async with asyncio.timeout_at(deadline):
                    first = await anext(pieces)
            except TimeoutError:
                await pieces.aclose()
                raise UpstreamFailure(
                    TIMEOUT, f"{self.name}: no token within {policy.first_token_timeout_s:g} s from {self.base_url}"
                ) from None
            except StopAsyncIteration:
                failure = UpstreamFailure(DISCONNECTED, f"{self.name}: the stream ended without any output", True)
            except Exception as exc:  # noqa: BLE001 - classified below; unknown ones re-raised
                await pieces.aclose()
                classified = self.classify(exc, try_, started=False)
                if classified is None:
                    raise
                failure = classified
            else:
                break
            backoff = policy.retry_backoff_s * 2**tries
            if not failure.retryable or tries >= policy.retries or loop.time() + backoff >= deadline:
                if tries:
                    failure.message = _clip(f"{failure.message} ({tries + 1} tries)")
                raise failure from None
            tries += 1
            log.info(
                "%s: retry %d/%d in %.2f s after %s: %s",
                self.name,
                tries,
                policy.retries,
                backoff,
                failure.code,
                failure.message,
            )
            await asyncio.sleep(backoff)

        # The first token is out: from here on nothing is retried.
        try:
            yield first
            async for piece in pieces:
                yield piece
        except Exception as exc:  # noqa: BLE001
            late = self.classify(exc, try_, started=True)
            if late is None:
                raise
            raise late from None
        finally:
            await pieces.aclose()

    def classify(self, exc: BaseException, try_: UpstreamTry, started: bool) -> UpstreamFailure | None:
        """The failure an exception means, or None for one that is not about the upstream."""
        sdk = self.sdk
        where = f"{self.name} at {self.base_url}"
        if isinstance(exc, UpstreamFailure):
            return exc
        if isinstance(exc, StreamEndedEarly):
            return UpstreamFailure(DISCONNECTED, f"{where}: {exc}", retryable=not started)
        if isinstance(exc, sdk.APITimeoutError) or isinstance(exc, TRANSPORT_TIMEOUTS):
            return UpstreamFailure(TIMEOUT, f"{where}: timed out: {_cause(exc)}")
        if isinstance(exc, sdk.APIConnectionError) or isinstance(exc, TRANSPORT_ERRORS):
            if try_.opened or started:
                return UpstreamFailure(DISCONNECTED, f"{where}: the stream broke off: {_cause(exc)}", not started)
            return UpstreamFailure(UNAVAILABLE, f"cannot reach {where}: {_cause(exc)}", retryable=True)
        if isinstance(exc, sdk.APIStatusError):
            status = exc.status_code
            retryable = not started and (status in RETRYABLE_STATUS or status >= 500)
            return UpstreamFailure(ERROR, f"{where} answered {status}: {_upstream_message(exc)}", retryable)
        if isinstance(exc, sdk.APIError):  # an error reported inside the stream
            return UpstreamFailure(ERROR, f"{where}: {_upstream_message(exc)}")
        return None


def _upstream_message(exc: Any) -> str:
    """The server's own words: ``{"error": {"message": ...}}`` or ``{"message": ...}``."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", None) or exc)


def _cause(exc: BaseException) -> str:
    """The transport's reason (the SDKs wrap it as ``__cause__``)."""
    parts: list[str] = []
    seen: BaseException | None = exc.__cause__ or exc  # past the SDK's "Connection error."
    while seen is not None and len(parts) < 3:
        text = str(seen) or type(seen).__name__
        if text not in parts:
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts)


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"
