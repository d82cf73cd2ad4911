"""Streaming, resuming and joining against one API process and one worker."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from harness import (
    Sampler,
    StreamRead,
    aread_stream,
    assert_answer_text,
    assert_complete_sequence,
    create_chat,
    get_chat,
    prompt_with_length,
    read_stream,
    record,
    wait_chat_status,
)
from httpx_sse import connect_sse

pytestmark = pytest.mark.e2e

TOKENS_PER_S = 200  # ~2 s for the longest simulated answer (419 tokens)


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(env={"TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)})


def finished_chat(client, api, min_tokens=60, max_tokens=120, tag=""):
    """A chat that has run to completion; returns (id, prompt, full stream)."""
    prompt = prompt_with_length(min_tokens, max_tokens, tag)
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    full = read_stream(client, api.url, chat_id)
    assert full.closed_by_server
    assert_complete_sequence(full.events)
    wait_chat_status(client, api.url, chat_id, ["done"])
    return chat_id, prompt, full.events


def test_full_stream_matches_get(cluster, client):
    api = cluster.api
    prompt = prompt_with_length(150, 300, "full")
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    full = read_stream(client, api.url, chat_id)

    assert full.status_code == 200
    assert full.retry == 2000
    assert full.closed_by_server, "the server must close the stream after done"
    assert_complete_sequence(full.events)
    assert full.events[-1][1] == "done"
    done = json.loads(full.events[-1][2])
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] > 0
    assert all(e[1] == "token" for e in full.events[:-1])

    state = get_chat(client, api.url, chat_id)
    assert state["status"] == "done"
    assert state["last_seq"] == full.events[-1][0]
    assert_answer_text(full.events, state, prompt, 500)
    assert state["text"]


def test_post_with_accept_event_stream_answers_with_the_stream(cluster, client):
    api = cluster.api
    prompt = prompt_with_length(60, 120, "one-request")
    headers = {"accept": "text/event-stream"}
    with connect_sse(client, "POST", f"{api.url}/chat", json={"prompt": prompt}, headers=headers) as es:
        assert es.response.status_code == 200
        chat_id = es.response.headers["x-chat-id"]
        assert es.response.headers["location"] == f"/chat/{chat_id}"
        assert es.response.headers["x-stream-token"]
        out = StreamRead()
        for sse in es.iter_sse():
            out.take(sse)
    assert out.retry == 2000
    assert_complete_sequence(out.events)
    assert out.events[-1][1] == "done"
    assert_answer_text(out.events, get_chat(client, api.url, chat_id), prompt, 512)
    # The same chat, the same ids: a client cut off resumes with GET as usual.
    rest = read_stream(client, api.url, chat_id, last_event_id=3)
    assert out.events[:3] + rest.events == out.events
    # Bad input is refused before any stream starts.
    refused = client.post(f"{api.url}/chat", json={"prompt": ""}, headers=headers)
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/json"


@pytest.mark.parametrize("via", ["header", "query"])
def test_resume_finished_chat_at_every_cut(cluster, client, via):
    api = cluster.api
    chat_id, _, full = finished_chat(client, api, tag=f"resume-{via}")
    n = len(full)
    for k in range(n):  # at n, the terminal id: 204 (the next test)
        rest = read_stream(client, api.url, chat_id, last_event_id=k, via=via)
        assert rest.status_code == 200
        assert rest.closed_by_server
        assert full[:k] + rest.events == full, f"resume after {k} ({via}) differs"


def test_every_frame_is_an_event_heartbeats_and_retry_included(clusters, client):
    # fetch-event-source and httpx-sse hand a blank-line-terminated block
    # without data to the application as an empty message (JSON.parse fails):
    # the retry: line and the heartbeats must not make such blocks.
    api = clusters(env={"TOKENFAN_SIM_TOKENS_PER_S": "10", "TOKENFAN_HEARTBEAT_S": "0.02"}).api
    chat_id = create_chat(client, api.url, prompt_with_length(20, 60, "framing"), max_tokens=12)
    with client.stream("GET", f"{api.url}/chat/{chat_id}/stream") as response:
        raw = response.read()
    assert raw.startswith(b"retry: 2000\nid: 1\n"), raw[:80]
    assert b": ping\n" in raw, "no heartbeat while tokens came 100 ms apart"
    blocks = raw.split(b"\n\n")
    assert blocks.pop() == b""  # the stream ends with its done event's blank line
    for block in blocks:
        assert any(line.startswith(b"data: ") for line in block.split(b"\n")), block
    state = get_chat(client, api.url, chat_id)
    assert len(blocks) == state["last_seq"]


def test_resume_at_terminal_id_answers_204_at_once(cluster, client):
    api = cluster.api
    chat_id, _, full = finished_chat(client, api, tag="terminal")
    last = full[-1][0]
    for via in ("header", "query"):
        started = time.monotonic()
        rest = read_stream(client, api.url, chat_id, last_event_id=last, via=via)
        elapsed = time.monotonic() - started
        assert rest.status_code == 204  # EventSource stops reconnecting on 204
        assert rest.events == []
        assert elapsed < 1.0, f"took {elapsed:.2f} s to close"


def test_resume_while_generating(cluster, client):
    """Clients cut their stream after k events mid-generation and come back
    with Last-Event-ID: k; what they end up with is exactly the log."""
    api = cluster.api
    prompt = prompt_with_length(380, 419, "midresume")
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    cuts = [1, 2, 5, 9, 14, 20, 27]

    async def one(ac, k):
        first = await aread_stream(ac, api.url, chat_id, max_events=k)
        assert len(first.events) == k and not first.closed_by_server
        status = (await ac.get(f"{api.url}/chat/{chat_id}")).json()["status"]
        rest = await aread_stream(ac, api.url, chat_id, last_event_id=k)
        assert rest.closed_by_server
        return status, first.events + rest.events

    async def main():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as ac:
            return await asyncio.gather(*(one(ac, k) for k in cuts))

    results = asyncio.run(main())
    full = read_stream(client, api.url, chat_id).events
    assert_complete_sequence(full)
    for k, (status, events) in zip(cuts, results, strict=True):
        assert status == "running", f"cut at {k}: the chat was already {status}; not mid-generation"
        assert events == full, f"cut at {k}: reassembled stream differs from the log"
    assert_answer_text(full, get_chat(client, api.url, chat_id), prompt, 500)


def test_join_race(cluster, client):
    """~30 clients start reading at random moments of one fast generation;
    each gets exactly the whole sequence 1..N."""
    api = cluster.api
    prompt = prompt_with_length(380, 419, "join")
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    rng = random.Random(1234)
    # A joiner starts the moment the leader has seen event k (k random): right
    # as events are being published, the racy moment for a join.
    thresholds = sorted(rng.randrange(0, 60) for _ in range(30))

    async def main():
        seen = 0
        progress = asyncio.Condition()

        async def on_event(ev):
            nonlocal seen
            async with progress:
                seen = ev[0]
                progress.notify_all()

        async def joiner(ac, k):
            async with progress:
                await progress.wait_for(lambda: seen >= k)
            started_at = seen
            read = await aread_stream(ac, api.url, chat_id)
            return started_at, read

        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as ac:
            leader = asyncio.create_task(aread_stream(ac, api.url, chat_id, on_event=on_event))
            joiners = await asyncio.gather(*(joiner(ac, k) for k in thresholds))
            return await leader, joiners

    leader, joiners = asyncio.run(main())
    full = leader.events
    assert_complete_sequence(full)
    assert full == read_stream(client, api.url, chat_id).events
    mid = 0
    for started_at, read in joiners:
        assert read.closed_by_server
        assert read.events == full, f"joiner started at event {started_at} got a different sequence"
        mid += started_at < full[-1][0]
    assert mid >= 25, f"only {mid} joiners started before the end of the generation"


def test_hundred_streams_hold_at_most_three_redis_connections(cluster, client):
    api = cluster.api
    prompt = prompt_with_length(400, 419, "hundred")
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    created = time.monotonic()
    n_clients = 100

    def api_connections():
        return len(api.redis_clients(cluster.redis))

    async def main():
        opened = 0
        all_open = asyncio.Event()

        def on_open():
            nonlocal opened
            opened += 1
            if opened == n_clients:
                all_open.set()

        limits = httpx.Limits(max_connections=n_clients + 10, max_keepalive_connections=n_clients + 10)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as ac:
            tasks = [asyncio.create_task(aread_stream(ac, api.url, chat_id, on_open=on_open)) for _ in range(n_clients)]
            await asyncio.wait_for(all_open.wait(), 10)
            count = await asyncio.to_thread(api_connections)
            taken_at = time.monotonic()
            return await asyncio.gather(*tasks), count, taken_at

    # Sample the count all along as well: the peak is when 100 clients join.
    with Sampler(api_connections, 0.02) as sampler:
        reads, count, taken_at = asyncio.run(main())
    assert not sampler.errors, sampler.errors
    full = read_stream(client, api.url, chat_id).events
    assert_complete_sequence(full)
    for read in reads:
        assert read.closed_by_server
        assert read.events == full
    # All 100 streams were open, and still streaming, when it was counted.
    assert all(r.times[-1] > taken_at for r in reads), "the generation ended before all streams were open"
    peak = max([count, *sampler.samples])
    record(
        f"100 open streams on one API process: {count} Redis connections (peak {peak}; "
        f"all open {taken_at - created:.2f} s after POST, {len(sampler.samples)} samples)"
    )
    assert 1 <= count <= 3
    assert peak <= 3
