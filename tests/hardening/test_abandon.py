"""Abandoned chats (``TOKENFAN_ABANDON_AFTER_S``, off by default): a running
chat that no client has watched for that long is cancelled (``done`` with
``finish_reason: "cancelled"``), so nobody pays for tokens no one reads. A
chat someone streams, or waits for (a non-streamed completion), runs to its
end. Off, a chat nobody watches runs to its end."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from harness import create_chat, expected_text, prompt_with_length, read_in_background, read_stream, record, wait_until

pytestmark = pytest.mark.e2e

ABANDON_S = 1.5
TOKENS_PER_S = 30  # a 300-token answer takes 10 s: far longer than abandon_after_s + a check, even on a loaded machine


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        env={"TOKENFAN_ABANDON_AFTER_S": str(ABANDON_S), "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)}
    )


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=httpx.Timeout(30.0)) as c:
        yield c


def state(client, api, chat_id):
    return client.get(f"{api.url}/chat/{chat_id}").json()


def test_abandoned_chats_are_cancelled_watched_ones_are_not(cluster, client):
    api = cluster.api
    long_prompt = prompt_with_length(300, 419, "abandon")
    nobody = create_chat(client, api.url, long_prompt + " nobody", max_tokens=500)
    created = time.monotonic()
    watched = create_chat(client, api.url, long_prompt, max_tokens=500)
    left = create_chat(client, api.url, long_prompt + " left", max_tokens=500)

    # "left": a client reads a few events and goes away.
    early = read_stream(client, api.url, left, max_events=3)
    left_at = time.monotonic()
    # "watched": a client reads it all, in a thread, meanwhile.
    reader, result = read_in_background(client, api.url, watched)

    s = wait_until(lambda: (st := state(client, api, nobody))["status"] == "done" and st, 15, 0.05, "nobody's chat")
    nobody_after = time.monotonic() - created
    assert s["finish_reason"] == "cancelled"
    assert len(s["text"]) < len(expected_text(long_prompt + " nobody", 500)), "it ran to its end"
    s = wait_until(lambda: (st := state(client, api, left))["status"] == "done" and st, 15, 0.05, "the left chat")
    left_after = time.monotonic() - left_at
    assert s["finish_reason"] == "cancelled" and s["last_seq"] > len(early.events)

    reader.join(30)
    (full,) = result
    assert full.closed_by_server and json.loads(full.events[-1][2])["finish_reason"] == "stop"
    assert state(client, api, watched)["text"] == expected_text(long_prompt, 500)
    record(
        f"abandoned chats (abandon_after_s {ABANDON_S:g}): unwatched one cancelled {nobody_after:.1f} s after "
        f"creation, a left one {left_after:.1f} s after its client left; the watched one ran to its end"
    )
    # abandon_after_s, + up to 1 s between checks, + pickup; generous for a loaded machine.
    assert nobody_after < ABANDON_S + 4 and left_after < ABANDON_S + 4


def test_waiting_for_a_completion_counts_as_watching(cluster):
    api = cluster.api
    prompt = prompt_with_length(120, 160, "abandon-wait")  # 3-4 s, longer than abandon_after_s
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 500}
    r = httpx.post(f"{api.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.json()["choices"][0]["message"]["content"] == expected_text(prompt, 500)


def test_off_by_default(clusters, client):
    cluster = clusters("default", env={"TOKENFAN_SIM_TOKENS_PER_S": "400"})
    prompt = prompt_with_length(300, 419, "unwatched")
    chat_id = create_chat(client, cluster.api.url, prompt, max_tokens=500)  # nobody ever reads it
    s = wait_until(lambda: (st := state(client, cluster.api, chat_id))["status"] == "done" and st, 15, 0.05, "done")
    assert s["finish_reason"] == "stop" and s["text"] == expected_text(prompt, 500)
