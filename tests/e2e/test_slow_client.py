"""A client that stops reading must not hold up the others or grow the API
process's memory; when it reads again it catches up from the log."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from harness import (
    Sampler,
    assert_complete_sequence,
    create_chat,
    get_chat,
    read_stream,
    record,
    stub_provider_env,
    tcp_queued_bytes,
    text_of,
    wait_until,
)
from httpx_sse import EventSource

from e2e.fat_provider import piece

pytestmark = pytest.mark.e2e

PIECE_BYTES = 2048
PIECES = 12_000  # ~25 MB of SSE per reader
PIECES_PER_S = 5000
RSS_GROWTH_LIMIT = 25 * 2**20


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        env={"TOKENFAN_MAX_TOKENS_LIMIT": str(PIECES)},
        worker_env={
            **stub_provider_env("fat_provider:generate", "e2e"),
            "TF_E2E_PIECE_BYTES": str(PIECE_BYTES),
            "TF_E2E_PIECES_PER_S": str(PIECES_PER_S),
        },
    )


def test_slow_client(cluster):
    api = cluster.api
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        # Warm up the API process before taking its baseline memory.
        warm = create_chat(client, api.url, "warm up", max_tokens=2000)
        assert read_stream(client, api.url, warm).closed_by_server
        baseline = api.rss()

        chat_id = create_chat(client, api.url, "a long answer", max_tokens=PIECES)
        # The slow client opens the stream and reads nothing for now: once its
        # socket buffers are full, the API process cannot send to it.
        with (
            httpx.Client(timeout=httpx.Timeout(30.0)) as slow_client,
            slow_client.stream(
                "GET", f"{api.url}/chat/{chat_id}/stream", headers={"Accept": "text/event-stream"}
            ) as slow,
        ):
            assert slow.status_code == 200

            fast: list = [None, None]
            started = time.monotonic()

            def reader(i):
                fast[i] = read_stream(client, api.url, chat_id)

            def chat_done():
                return cluster.redis.hget(f"tf:{{{chat_id}}}:meta", "status") == "done"

            threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
            with Sampler(api.rss, 0.05) as rss:
                for t in threads:
                    t.start()
                wait_until(chat_done, 30, 0.01, "the generation to end")
                done_at = time.monotonic()
                for t in threads:
                    t.join(30)
                    assert not t.is_alive(), "a fast reader did not finish"
            assert not rss.errors, rss.errors
            # What the kernel holds for the slow client (API's send queue + the
            # client's receive queue); the rest waited in (or was dropped by) the API.
            slow_port = slow.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
            in_kernel = tcp_queued_bytes(api.port, slow_port)

            generation_s = done_at - started
            lags = [r.times[-1] - done_at for r in fast]
            full = fast[0].events
            total_bytes = sum(len(e[2]) for e in full)
            growth = max(rss.samples) - baseline
            record(
                f"slow client: {total_bytes / 2**20:.1f} MB stream in {generation_s:.2f} s; fast readers done "
                f"{max(lags):+.2f} s after the generation; API RSS grew {growth / 2**20:.1f} MB; "
                f"{in_kernel / 2**20:.1f} MB sat in socket buffers"
            )
            assert total_bytes > 20 * 2**20
            assert in_kernel < total_bytes / 2, "the stream must dwarf the socket buffers"
            for r in fast:
                assert r.closed_by_server
                assert r.events == full
            assert_complete_sequence(full)
            assert max(lags) < 1.0, "the fast readers were held up"
            assert growth < RSS_GROWTH_LIMIT

            # Now the slow client reads: everything, once, in order.
            t0 = time.monotonic()
            slow_events = [(int(s.id), s.event, s.data) for s in EventSource(slow).iter_sse() if s.data]
            record(f"slow client caught up {len(slow_events)} events in {time.monotonic() - t0:.2f} s")
        assert slow_events == full
        text = text_of(full)
        assert text == "".join(piece(i, PIECE_BYTES) for i in range(PIECES))
        assert get_chat(client, api.url, chat_id)["text"] == text
