"""The event protocol: what a worker appends, what the log holds and what an
SSE client receives.

One event is serialized once, by the worker, as compact JSON. The append
script publishes it as ``b"<seq> <type> <json>"``; each API process turns it
into one SSE frame that all its clients share.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson


class EventType(StrEnum):
    TOKEN = "token"  # {"text"}
    RESET = "reset"  # {"attempt", "reason"}: drop the text received so far
    DONE = "done"  # {"finish_reason", "usage"}
    ERROR = "error"  # {"code", "message"}


TERMINAL = frozenset({EventType.DONE.value, EventType.ERROR.value})


def encode(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


class Event:
    """One event of a chat's log. ``frame`` is its SSE encoding, built once
    and shared by every client of the process (sse-starlette sends bytes
    untouched)."""

    __slots__ = ("seq", "type", "data", "frame", "received")

    def __init__(self, seq: int, type: str, data: bytes) -> None:
        self.seq = seq
        self.type = type
        self.data = data  # compact JSON, never contains a newline
        self.frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type.encode(), data)
        self.received = 0.0  # monotonic arrival from pub/sub, for sampled live events (api/metrics.py)

    def __repr__(self) -> str:
        return f"Event({self.seq}, {self.type!r}, {self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and (self.seq, self.type, self.data) == (other.seq, other.type, other.data)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    def payload(self) -> dict[str, Any]:
        return orjson.loads(self.data)

    @classmethod
    def from_published(cls, message: bytes) -> Event:
        seq, etype, data = message.split(b" ", 2)
        return cls(int(seq), etype.decode(), data)


def error_frame(code: str, message: str) -> bytes:
    """An ``error`` event with no ``id``: reported to the client, not part of the log."""
    return b"event: error\ndata: %s\n\n" % encode({"code": code, "message": message})


def assemble_text(events: list[Event]) -> str:
    """The answer as a client shows it: the token text after the last ``reset``."""
    parts: list[str] = []
    for event in events:
        if event.type == EventType.TOKEN:
            parts.append(event.payload()["text"])
        elif event.type == EventType.RESET:
            parts.clear()
    return "".join(parts)
