"""The bench clients' SSE decoder: what every latency figure is read with."""

from __future__ import annotations

from bench.http import SSEDecoder


def test_events_retry_and_heartbeats_split_anywhere():
    stream = b"retry: 2000\nid: 1\nevent: token\ndata: {}\n\n: ping\n: ping\r\nid: 2\ndata: a\ndata: b\n\n"
    for cut in range(len(stream) + 1):
        events, pings = [], []
        decoder = SSEDecoder(lambda i, t, d, now: events.append((i, t, d)), pings.append)  # noqa: B023
        decoder.feed(stream[:cut], 1.0)
        decoder.feed(stream[cut:], 2.0)
        assert events == [(1, "token", b"{}"), (2, "message", b"a\nb")], cut
        assert len(pings) == 2 and decoder.retry == 2000, cut


def test_a_heartbeat_counts_when_its_line_ends_without_a_blank_line():
    pings: list[float] = []
    decoder = SSEDecoder(lambda *a: None, pings.append)
    decoder.feed(b": ping\n", 5.0)
    assert pings == [5.0]
