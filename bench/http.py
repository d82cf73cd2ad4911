"""A light HTTP/1.1 + SSE client for load generation.

httpx costs far more CPU per event than the servers under test spend; with
1,000 active or 10,000 idle streams on a 2-core machine the client would be
what is measured. This is a plain ``asyncio.Protocol``: it writes the request,
parses the status line, headers and a Content-Length or chunked body, and
feeds a streamed body to an incremental SSE decoder. Every piece of data is
stamped with ``time.time()`` once, when it arrives from the socket (the same
clock as the worker's append stamps: same machine, CLOCK_REALTIME).

Enough HTTP for the two servers under test (uvicorn), nothing more: no TLS,
no redirects, no trailers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

OnBody = Callable[[bytes, float], None]

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _IDLE = range(8)


class HttpError(Exception):
    pass


class SSEDecoder:
    """Incremental SSE decoding (CRLF or LF line endings). Calls
    ``on_event(id, event_type, data, arrival)`` per event and
    ``on_comment(arrival)`` per comment line (heartbeats)."""

    __slots__ = ("_buf", "on_event", "on_comment", "retry", "_id", "_type", "_data")

    def __init__(
        self,
        on_event: Callable[[int | None, str, bytes, float], None],
        on_comment: Callable[[float], None] | None = None,
    ) -> None:
        self._buf = b""
        self.on_event = on_event
        self.on_comment = on_comment
        self.retry: int | None = None
        # The event being read: its id, type and data lines so far.
        self._id: int | None = None
        self._type = "message"
        self._data: bytes | None = None

    def feed(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        hold = b""
        if buf.endswith(b"\r"):  # maybe the first half of a CRLF
            buf, hold = buf[:-1], b"\r"
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        # Line by line, as the spec reads a stream: a comment (a heartbeat)
        # counts when its line ends, with or without a blank line after it.
        lines = buf.split(b"\n")
        self._buf = lines.pop() + hold
        for line in lines:
            if not line:
                if self._data is not None:
                    self.on_event(self._id, self._type, self._data, now)
                self._id, self._type, self._data = None, "message", None
            elif line[0] == 58:  # ":" a comment
                if self.on_comment is not None:
                    self.on_comment(now)
            else:
                self._field(line)

    def _field(self, line: bytes) -> None:
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data = value if self._data is None else self._data + b"\n" + value
        elif field == b"id":
            self._id = int(value) if value else None
        elif field == b"event":
            self._type = value.decode()
        elif field == b"retry":
            self.retry = int(value)


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time (keep-alive)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._state = _IDLE
        self._buf = b""
        self._left = 0
        self._status = 0
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._on_body: OnBody | None = None
        self._waiter: asyncio.Future | None = None
        self.closed = False
        self.reusable = True
        self.on_head: Callable[[int, float], None] | None = None  # (status, arrival of the head)

    # --- asyncio callbacks ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost ({exc or 'closed by server'})"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self._state == _IDLE:
            return  # nothing asked for; ignore
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n or self._state == _TRAILER:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self._head(buf[pos:end], now)
                pos = end + 4
            elif state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    if state == _LENGTH:
                        self._deliver(out, now)
                        self._finish()
                        break
                    self._state = _CHUNK_END
            elif state == _CHUNK_SIZE or state == _CHUNK_END or state == _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line = buf[pos:end]
                pos = end + 2
                if state == _CHUNK_END:
                    self._state = _CHUNK_SIZE
                elif state == _TRAILER:
                    if not line:  # end of the (empty) trailer: response complete
                        self._deliver(out, now)
                        self._finish()
                        break
                else:
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        self._state = _TRAILER
                    else:
                        self._left = size
                        self._state = _CHUNK_DATA
            elif state == _UNTIL_CLOSE:
                out.append(buf[pos:])
                pos = n
            else:
                break
        if pos < n:
            self._buf = buf[pos:]
        self._deliver(out, now)

    # --- parsing --------------------------------------------------------
    def _head(self, head: bytes, now: float) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self._status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._headers = headers
        if self.on_head is not None:
            self.on_head(self._status, now)
        if headers.get(b"connection", b"").lower() == b"close":
            self.reusable = False
        if b"content-length" in headers:
            self._left = int(headers[b"content-length"])
            self._state = _LENGTH
            if self._left == 0:
                self._finish()
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self._state = _CHUNK_SIZE
        else:
            self.reusable = False
            self._state = _UNTIL_CLOSE

    def _deliver(self, out: list[bytes], now: float) -> None:
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not data:
            return
        if self._on_body is not None:
            self._on_body(data, now)
        else:
            self._body.append(data)

    def _finish(self) -> None:
        self._state = _IDLE
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, b"".join(self._body)))
        self._body = []
        self._on_body = None

    # --- API --------------------------------------------------------------
    def send(
        self, method: str, path: str, headers: dict[str, str] | None, body: bytes | None, on_body: OnBody | None
    ) -> asyncio.Future:
        if self.closed or self.transport is None:
            raise HttpError("connection closed")
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._waiter = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self._on_body = on_body
        self._body = []
        self.transport.write(request + body if body else request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class HttpClient:
    """Keep-alive connections to one server for plain requests; a fresh
    connection per SSE stream (what a browser's EventSource does after a drop)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[HttpProtocol] = []

    async def connect(self) -> HttpProtocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(HttpProtocol, self.host, self.port)
        return proto

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        conn = None
        while self._idle and conn is None:
            c = self._idle.pop()
            conn = None if c.closed else c
        if conn is None:
            conn = await self.connect()
        ok = False
        try:
            result = await conn.send(method, path, headers, body, None)
            ok = True
            return result
        finally:
            if ok and conn.reusable and not conn.closed:
                self._idle.append(conn)
            else:
                conn.close()

    async def post_json(self, path: str, payload: dict) -> tuple[int, dict]:
        status, _, body = await self.request("POST", path, orjson.dumps(payload), {"Content-Type": "application/json"})
        return status, orjson.loads(body) if body else {}

    async def stream(
        self,
        path: str,
        decoder: SSEDecoder,
        headers: dict[str, str] | None = None,
        on_head: Callable[[int, float], None] | None = None,
    ) -> int:
        """GET an SSE stream on a new connection and feed it to ``decoder``
        until the server ends the response; return the status. Cancelling the
        caller closes the connection."""
        status, _ = await self.open_stream("GET", path, decoder, headers, on_head)
        return status

    async def open_stream(
        self,
        method: str,
        path: str,
        decoder: SSEDecoder,
        headers: dict[str, str] | None = None,
        on_head: Callable[[int, float], None] | None = None,
        payload: dict | None = None,
    ) -> tuple[int, dict[bytes, bytes]]:
        """``stream`` for any method (a JSON ``payload`` as the body); returns
        the status and the response's headers (lower-case names)."""
        conn = await self.connect()
        try:
            conn.on_head = on_head
            headers = {"Accept": "text/event-stream", **(headers or {})}
            body = None
            if payload is not None:
                body = orjson.dumps(payload)
                headers["Content-Type"] = "application/json"
            status, response_headers, _ = await conn.send(method, path, headers, body, decoder.feed)
            return status, response_headers
        finally:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
