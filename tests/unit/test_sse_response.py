"""api/sse_response.py against the sse-starlette it is written for: every send
of a stream goes through the one method it replaces, and a send that stays
stuck is cut loose by the watchdog (the end to end case, a client that never
reads, is tests/hardening/test_never_reading.py)."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import sse_starlette

from api.sse_response import EventSourceResponse

pytestmark = pytest.mark.anyio


def test_sse_starlette_sends_through_the_method_we_replace():
    for method in ("_stream_response", "_ping"):
        assert "self._send_with_timeout(" in inspect.getsource(getattr(sse_starlette.EventSourceResponse, method))


async def test_a_stuck_send_is_cut_loose_and_a_moving_one_is_not():
    async def events():
        for i in range(3):
            yield b"data: %d\n\n" % i
        await asyncio.Event().wait()  # then nothing more, for ever

    sent: list[bytes] = []
    stuck = asyncio.Event()

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body") == b"data: 2\n\n":
            await stuck.wait()  # the client's socket is full from here on
        sent.append(message.get("body", b""))

    async def receive():
        await asyncio.Event().wait()  # the client never leaves

    scope = {"type": "http", "method": "GET", "path": "/chat/x/stream", "headers": []}
    response = EventSourceResponse(events(), send_timeout=0.2, ping=60)
    await asyncio.wait_for(response(scope, receive, send), 5)  # returns: cut loose
    assert response.ended == "cut_loose"
    assert sent[1:] == [b"data: 0\n\n", b"data: 1\n\n"]  # after the head; the stuck one never finished
