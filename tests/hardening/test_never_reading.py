"""A client that opens a stream and never reads: once the socket buffers are
full the API cannot send to it; after ``TOKENFAN_SEND_TIMEOUT_S`` (2 s here,
30 s by default) it is cut loose: its hub subscription is released, the
connection is closed behind what it has not read yet, no exception is
logged, and another reader of the same chat is not slowed. When the client
reads after all, it gets whole frames up to some event and then the end of
the connection, and resumes with ``Last-Event-ID`` without a loss.

(Bounded memory while such a client stays connected: tests/e2e/test_slow_client.py.)"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from harness import create_chat, read_stream, record, stub_provider_env, wait_until

from hardening.follow import _Parser

pytestmark = pytest.mark.e2e

SEND_TIMEOUT_S = 2.0
PIECES = 6000  # 2 KB each: ~12 MB of SSE, far more than the socket buffers


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        env={"TOKENFAN_MAX_TOKENS_LIMIT": str(PIECES), "TOKENFAN_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S)},
        worker_env={
            **stub_provider_env("fat_provider:generate", "e2e"),
            "TF_E2E_PIECE_BYTES": "2048",
            "TF_E2E_PIECES_PER_S": "3000",
        },
    )


def test_a_client_that_never_reads_is_cut_loose(cluster):
    api = cluster.api
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        chat_id = create_chat(client, api.url, "never read", max_tokens=PIECES)
        silent = socket.create_connection(("127.0.0.1", api.port))
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        silent.sendall(f"GET /chat/{chat_id}/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        opened = time.monotonic()

        # Another reader of the same chat goes at full speed meanwhile.
        full = read_stream(client, api.url, chat_id)
        fast_done = time.monotonic() - opened
        assert full.closed_by_server and full.events[-1][1] == "done"

        wait_until(lambda: "stream cut loose" in api.log_text(), 15, 0.05, "the silent client to be cut loose")
        cut_after = time.monotonic() - opened

        # Now it reads: whole frames, then the end of the connection.
        silent.settimeout(10)
        raw = b""
        while chunk := silent.recv(1 << 20):
            raw += chunk
        silent.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        parser = _Parser()
        events = [(int(f["id"]), f.get("event"), f["data"]) for f in parser.feed(_dechunk(body)) if "data" in f]
        got = len(events)
        assert [e[0] for e in events] == list(range(1, got + 1))
        assert 0 < got < len(full.events), "the silent client was not cut short"
        rest = read_stream(client, api.url, chat_id, last_event_id=got)
        assert events + rest.events == full.events

    log = api.log_text()
    assert "Exception in ASGI application" not in log
    record(
        f"never-reading client: cut loose {cut_after:.1f} s after it connected (send timeout {SEND_TIMEOUT_S:g} s); "
        f"it had {got} of {len(full.events)} events and resumed the rest; the other reader finished in "
        f"{fast_done:.1f} s"
    )
    assert fast_done < 10.0


def _dechunk(body: bytes) -> bytes:
    """The payload of a chunked body, as far as it is complete."""
    out = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0 or len(rest) < size:
            out += rest[:size] if size else b""
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out
