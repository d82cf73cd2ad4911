"""What every benchmark client checks on the streams it reads, and the
prompts it sends.

A benchmark that loses or duplicates events would measure the wrong thing, so
each stream is checked as the tests check it: ids after+1, after+2, ... with no
gap or duplicate, and one terminal event, last.
"""

from __future__ import annotations

import itertools
from functools import cache

import orjson

TERMINAL = ("done", "error")


class StreamCheck:
    """Sequence check for one stream; subclass ``token`` to measure."""

    __slots__ = ("last", "bad", "terminal", "tokens", "events", "first_token_seen")

    def __init__(self, after: int = 0) -> None:
        self.last = after
        self.bad = 0  # gaps, duplicates, events after the end, id-less errors
        self.terminal: str | None = None
        self.tokens = 0
        self.events = 0
        self.first_token_seen = False

    def on_event(self, event_id: int | None, etype: str, data: bytes, now: float) -> None:
        if event_id is None or event_id != self.last + 1 or self.terminal is not None:
            self.bad += 1
        if event_id is not None:
            self.last = event_id
        self.events += 1
        if etype == "token":
            n = count_tokens(data, not self.first_token_seen)
            self.first_token_seen = True
            self.tokens += n
            self.token(event_id, data, n, now)
        elif etype in TERMINAL:
            self.terminal = etype

    def token(self, event_id: int | None, data: bytes, n: int, now: float) -> None:
        pass

    @property
    def ok(self) -> bool:
        return self.bad == 0 and self.terminal == "done"


class FirstTokenCheck(StreamCheck):
    """The sequence check, plus when the first token arrived and its ``ts``
    stamp (when the worker got it from the model; 0 where nothing stamps),
    and how many ``reset`` events came (restarted answers)."""

    __slots__ = ("first_arrival", "first_ts", "resets")

    def __init__(self) -> None:
        super().__init__()
        self.first_arrival = 0.0
        self.first_ts = 0.0
        self.resets = 0

    def on_event(self, event_id: int | None, etype: str, data: bytes, now: float) -> None:
        if etype == "reset":
            self.resets += 1
        super().on_event(event_id, etype, data, now)

    def token(self, event_id: int | None, data: bytes, n: int, now: float) -> None:
        if not self.first_arrival:
            self.first_arrival = now
            self.first_ts = orjson.loads(data).get("ts", 0.0)


def count_tokens(data: bytes, first: bool) -> int:
    """Tokens in a ``token`` event's JSON, without decoding it. Every simulated
    token but an answer's first starts with one space (" word", ", word" or
    ". word") and words hold none; the JSON is compact (orjson), so the spaces
    in the raw data are the spaces of the text."""
    return data.count(b" ") + (1 if first else 0)


@cache
def prompt_with_length(min_tokens: int, tag: str = "bench") -> str:
    """A prompt whose simulated answer has at least ``min_tokens`` tokens
    before it stops by itself (20..419); with ``max_tokens=min_tokens`` every
    chat then has exactly ``min_tokens`` tokens."""
    from worker.providers.simulated import answer_length

    if not 1 <= min_tokens <= 419:
        raise ValueError("the simulated model answers 20..419 tokens")
    for i in itertools.count():
        prompt = f"{tag} prompt {i}"
        if answer_length(prompt) >= min_tokens:
            return prompt
    raise AssertionError("unreachable")
