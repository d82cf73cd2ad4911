"""A resuming SSE client for the hardening tests, written against the wire
(bytes), not a library's idea of it: it counts an event only once its frame
is complete (the blank line), reconnects with ``Last-Event-ID`` whenever a
connection ends without a terminal event (to the next API in its list), and
keeps everything a test needs to judge the stream: every event in arrival
order with its arrival time, every connection's outcome, and every non-200.

``cut`` lets a test drop the connection itself at a byte offset of its
choosing (mid-frame included), to play a client on a bad network.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

Ev = tuple[int, str, str]  # (id, event, data)
TERMINAL = ("done", "error")


@dataclass
class Followed:
    chat_id: str
    events: list[Ev] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # monotonic arrival of each event
    event_connection: list[int] = field(default_factory=list)  # the connection (0, 1, ...) each came on
    connection_ends: list[float] = field(default_factory=list)  # monotonic end of each connection
    connections: int = 0
    reconnects: int = 0  # connections after the first
    cuts: int = 0  # connections we cut ourselves
    server_closes: int = 0  # connections the server ended cleanly without a terminal event
    errors: list[str] = field(default_factory=list)  # transport errors (connection dropped)
    statuses: list[int] = field(default_factory=list)  # every non-200 answer
    retry_ms: list[int] = field(default_factory=list)  # every retry: field received

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1][1] in TERMINAL

    @property
    def text(self) -> str:
        """What a client shows: the token text after the last reset."""
        parts: list[str] = []
        for _, etype, data in self.events:
            if etype == "token":
                parts.append(json.loads(data)["text"])
            elif etype == "reset":
                parts.clear()
        return "".join(parts)

    def check(self) -> None:
        """Ids 1..N in order, once each; the last one (only) terminal."""
        ids = [e[0] for e in self.events]
        assert ids == list(range(1, len(ids) + 1)), f"chat {self.chat_id}: ids not 1..N: {_runs(ids)}"
        assert self.ended, f"chat {self.chat_id}: no terminal event (last: {self.events[-1:]})"
        assert all(e[1] not in TERMINAL for e in self.events[:-1]), f"chat {self.chat_id}: terminal event early"

    def max_gap(self) -> float:
        """The longest the stream stood still between two events (after the first)."""
        return max((b - a for a, b in zip(self.times, self.times[1:], strict=False)), default=0.0)


def _runs(ids: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(ids):
        if start is None:
            start = v
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            out.append(f"{start}..{v}" if start != v else str(v))
            start = None
    return ", ".join(out)


class _Parser:
    """SSE read as the spec reads it, line by line: an event is complete at its
    blank line, and ``retry`` counts as soon as its line is read (a server
    going away sends it alone, with no event after it)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.event: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The complete events in what has arrived so far, and a ``{"retry"}``
        entry for each retry line."""
        self.buffer += chunk.replace(b"\r\n", b"\n")
        *lines, self.buffer = self.buffer.split(b"\n")
        frames = []
        for line in lines:
            if not line:
                if self.event:
                    frames.append(self.event)
                    self.event = {}
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            text = value[1:].decode() if value.startswith(b" ") else value.decode()
            if name == b"retry":
                frames.append({"retry": text})
            else:
                self.event[name.decode()] = text
        return frames


async def follow(
    client: httpx.AsyncClient,
    urls: Sequence[str] | Callable[[int], str],
    chat_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    cut: Callable[[Followed], int | None] | None = None,
    on_event: Callable[[Followed, Ev], Any] | None = None,
    reconnect_delay: Callable[[Followed], float] | None = None,
    deadline_s: float = 60.0,
    max_connections: int = 10_000,
) -> Followed:
    """Follow ``chat_id``'s stream to its terminal event, across reconnections.

    ``urls``: API base URLs, used in turn (or a function of the connection
    number). ``cut(f)``: before each connection, the number of bytes after
    which to drop it ourselves (None: read to the end). ``reconnect_delay``:
    seconds to wait before reconnecting (default: the last ``retry:`` seen,
    as an EventSource would, capped at 2 s; 0 after our own cut)."""
    out = Followed(chat_id)
    try:
        async with asyncio.timeout(deadline_s):  # also while a connection hangs on heartbeats
            await _follow(client, urls, out, headers, params, cut, on_event, reconnect_delay, max_connections)
    except TimeoutError:
        raise TimeoutError(
            f"chat {chat_id}: no terminal event within {deadline_s} s ({len(out.events)} events, "
            f"{out.connections} connections)"
        ) from None
    return out


async def _follow(client, urls, out, headers, params, cut, on_event, reconnect_delay, max_connections) -> None:
    chat_id = out.chat_id
    while not out.ended:
        if out.connections >= max_connections:
            raise AssertionError(f"chat {chat_id}: {out.connections} connections and still not ended")
        base = urls(out.connections) if callable(urls) else urls[out.connections % len(urls)]
        limit = cut(out) if cut else None
        request_headers = {"accept": "text/event-stream", **(headers or {})}
        if out.events:
            request_headers["last-event-id"] = str(out.events[-1][0])
        if out.connections:
            out.reconnects += 1
        out.connections += 1
        we_cut = False
        try:
            async with client.stream(
                "GET", f"{base}/chat/{chat_id}/stream", headers=request_headers, params=params
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    out.statuses.append(response.status_code)
                else:
                    parser = _Parser()
                    received = 0
                    async for chunk in response.aiter_raw():
                        if limit is not None and received + len(chunk) >= limit:
                            chunk = chunk[: max(limit - received, 0)]
                            we_cut = True
                        received += len(chunk)
                        for frame in parser.feed(chunk):
                            if "retry" in frame:
                                out.retry_ms.append(int(frame["retry"]))
                            if "data" not in frame:
                                continue
                            ev = (
                                int(frame["id"]) if "id" in frame else -1,
                                frame.get("event", "message"),
                                frame["data"],
                            )
                            out.events.append(ev)
                            out.times.append(time.monotonic())
                            out.event_connection.append(out.connections - 1)
                            if on_event:
                                result = on_event(out, ev)
                                if asyncio.iscoroutine(result):
                                    await result
                        if we_cut or out.ended:
                            break
                    if we_cut:
                        out.cuts += 1
                    elif not out.ended:
                        out.server_closes += 1
        except (httpx.TransportError, httpx.StreamError) as exc:
            out.errors.append(f"{type(exc).__name__}: {exc}")
        out.connection_ends.append(time.monotonic())
        if out.ended:
            break
        if reconnect_delay is not None:
            delay = reconnect_delay(out)
        elif we_cut:
            delay = 0.0
        else:
            delay = min((out.retry_ms[-1] if out.retry_ms else 2000) / 1000, 2.0)
        if delay:
            await asyncio.sleep(delay)  # the client's reconnection time (what an EventSource does)
