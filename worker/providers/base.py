"""The one interface every provider implements: an async iterator of text
pieces for a request, optionally ending with a ``Finish``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import TokenfanError


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int
    temperature: float | None = None
    system: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> ChatRequest:
        return cls(
            messages=stored["messages"],
            model=stored["model"],
            max_tokens=stored["max_tokens"],
            temperature=stored.get("temperature"),
            system=stored.get("system"),
        )


@dataclass(frozen=True, slots=True)
class Finish:
    """Yielded last by a provider that knows why it stopped and what it used."""

    finish_reason: str = "stop"  # "stop" or "length"
    usage: dict[str, int] | None = None


class ProviderError(TokenfanError):
    """An upstream failure with a stable code for the ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# A provider: request in, text pieces (then maybe a Finish) out. Closing the
# iterator must stop the upstream generation (that is how cancel reaches it).
Provider = Callable[[ChatRequest], AsyncIterator["str | Finish"]]
