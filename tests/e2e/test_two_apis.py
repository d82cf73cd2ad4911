"""Two API processes and two workers on one Redis: a chat is readable through
any API process, and the hubs survive losing their pub/sub connections."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from harness import (
    aread_stream,
    assert_answer_text,
    assert_complete_sequence,
    async_wait_until,
    create_chat,
    expected_text,
    get_chat,
    prompt_with_length,
    read_stream,
    record,
    text_of,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(apis=2, workers=2, env={"TOKENFAN_SIM_TOKENS_PER_S": "200"})


def test_chat_created_on_one_api_streams_through_the_other(cluster, client):
    a, b = cluster.apis
    for n, (first, second) in enumerate([(a, b), (b, a)]):
        prompt = prompt_with_length(150, 419, f"two-apis-{n}")
        chat_id = create_chat(client, first.url, prompt, max_tokens=500)
        read = read_stream(client, second.url, chat_id)
        assert read.closed_by_server
        assert_complete_sequence(read.events)
        assert read.events[-1][1] == "done"
        state = get_chat(client, first.url, chat_id)
        assert state["status"] == "done"
        assert_answer_text(read.events, state, prompt, 500)
        assert read_stream(client, first.url, chat_id).events == read.events


def hub_connection_ids(cluster) -> dict[int, set[str]]:
    return {
        api.pid: {c["id"] for c in api.redis_clients(cluster.redis) if c["name"].endswith("-hub")}
        for api in cluster.apis
    }


def test_pubsub_connections_killed_mid_stream(cluster, client):
    """CLIENT KILL TYPE pubsub while ~10 streams are open mid-generation:
    every client still gets every event exactly once and ends with done."""
    a, b = cluster.apis
    prompt = prompt_with_length(380, 419, "pubsub-kill")
    chat_id = create_chat(client, a.url, prompt, max_tokens=500)
    n_clients = 10
    before = hub_connection_ids(cluster)
    assert all(len(ids) == 1 for ids in before.values()), before

    async def main():
        progress = [0] * n_clients
        killed: dict = {}

        def watcher(i):
            def on_event(ev):
                progress[i] = ev[0]

            return on_event

        async def killer():
            await async_wait_until(lambda: min(progress) >= 3, 10, 0.005, "every client to have 3 events")
            killed["count"] = cluster.redis.client_kill_filter(_type="pubsub")
            killed["seen"] = max(progress)
            killed["status"] = (await ac.get(f"{a.url}/chat/{chat_id}")).json()["status"]

        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as ac:
            apis = [a, b] * (n_clients // 2)
            reads = [
                asyncio.create_task(aread_stream(ac, api.url, chat_id, on_event=watcher(i)))
                for i, api in enumerate(apis)
            ]
            await killer()
            return await asyncio.gather(*reads), killed

    reads, killed = asyncio.run(main())
    # Both hubs (and the workers' listeners) were cut, mid-generation.
    assert killed["count"] >= 2
    assert killed["status"] == "running"
    full = read_stream(client, a.url, chat_id).events
    assert_complete_sequence(full)
    assert full[-1][1] == "done"
    assert full[-1][0] > killed["seen"] + 5, "the generation was nearly over when the connections were killed"
    for i, read in enumerate(reads):
        assert read.closed_by_server
        assert read.events == full, f"client {i} did not get exactly the log"
    assert text_of(full) == expected_text(prompt, 500)

    # Each hub came back on a new connection.
    after = wait_until(
        lambda: (h := hub_connection_ids(cluster)) and all(len(ids) == 1 for ids in h.values()) and h,
        10,
        message="the hubs to reconnect",
    )
    for pid, ids in after.items():
        assert ids.isdisjoint(before[pid]), "the hub still uses its killed connection"
    record(
        f"pubsub kill: {killed['count']} connections killed at event {killed['seen']} of {full[-1][0]}; "
        f"{n_clients} clients got every event once"
    )
