"""SSE parsers people use, unmodified, on the native stream (GET
/chat/{id}/stream), tests/clients/sse_clients.mjs: the ``eventsource``
package (EventSource in Node) and ``@microsoft/fetch-event-source``.

A slow model and a short heartbeat put heartbeats between events: a parser
that dispatches a message for a block without data (a heartbeat followed by
a blank line, a ``retry:`` block of its own) would hand the application an
empty message, which ``JSON.parse`` refuses. And an EventSource left open
after ``done`` reconnects with the terminal id, gets 204 and stops for good."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from harness import create_chat, prompt_with_length, wait_chat_status

from .nodekit import run_node

pytestmark = pytest.mark.e2e

RETRY_MS = 100
ENV = {
    "TOKENFAN_SIM_TTFT_MS": "5",
    "TOKENFAN_SIM_TOKENS_PER_S": "20",  # an event every 50 ms or so...
    "TOKENFAN_HEARTBEAT_S": "0.05",  # ...and heartbeats between them
    "TOKENFAN_SSE_RETRY_MS": str(RETRY_MS),  # EventSource's reconnect after done, soon
}


@pytest.fixture(scope="module")
def slow_cluster(module_clusters, node_packages):
    return module_clusters("sse-parsers", env=ENV)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def not_json(messages: list[dict]) -> list[dict]:
    bad = []
    for message in messages:
        try:
            json.loads(message["data"])
        except (TypeError, ValueError):
            bad.append(message)
    return bad


def read(cluster, client, name: str, *args: str) -> tuple[dict, dict]:
    prompt = prompt_with_length(20, 30, tag=f"sse-{name}-{'-'.join(args)}")
    chat_id = create_chat(client, cluster.api.url, prompt)
    result = run_node("sse_clients.mjs", name, f"{cluster.api.url}/chat/{chat_id}/stream", *args)
    assert "error" not in result, result
    chat = wait_chat_status(client, cluster.api.url, chat_id, "done")
    assert result["messages"] and not_json(result["messages"]) == [], not_json(result["messages"])
    assert result["text"] == chat["text"] != ""
    assert [m["event"] for m in result["messages"]][-1] == "done"
    assert result["pings"] > 0, "no heartbeat reached the parser: the test proves nothing"
    return result, chat


def test_eventsource_stops_at_the_end_by_itself(slow_cluster, client):
    """Not closed on done: one reconnect with the terminal id, 204, then none."""
    result, chat = read(slow_cluster, client, "eventsource", "until-stopped", str(10 * RETRY_MS))
    assert result["connections"] == [
        {"status": 200, "lastEventId": None},
        {"status": 204, "lastEventId": str(chat["last_seq"])},
    ]
    assert result["readyState"] == 2  # CLOSED


def test_eventsource_closed_on_done(slow_cluster, client):
    """The README's way: close on done; one connection."""
    result, _ = read(slow_cluster, client, "eventsource", "close-on-done", str(5 * RETRY_MS))
    assert result["connections"] == [{"status": 200, "lastEventId": None}]


def test_fetch_event_source(slow_cluster, client):
    """Every onmessage call has JSON data; the end of the stream ends it."""
    result, _ = read(slow_cluster, client, "fetch-event-source")
    assert result["closed"] is True
    assert result["connections"] == [{"status": 200, "lastEventId": None}]
    assert {m["event"] for m in result["messages"]} == {"token", "done"}
