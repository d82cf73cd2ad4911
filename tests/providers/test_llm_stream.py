"""End to end through a real model: POST /chat -> worker (``openai`` or
``anthropic`` provider, the official SDK) -> llama-server on loopback -> SSE.
Assertions are on structure (temperature 0, small max_tokens), never on the
model's exact words."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from harness import assert_complete_sequence, create_chat, get_chat, read_stream, text_of, wait_until
from llm_support import MODEL, events_json, provider_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def provider(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def cluster(module_clusters, llama, provider):
    return module_clusters(provider, env=provider_env(provider, llama))


@pytest.fixture(scope="module")
def long_cluster(module_clusters, llama_long, provider):
    """Against the server that talks until max_tokens."""
    return module_clusters(f"{provider}-long", env=provider_env(provider, llama_long))


def _done(events) -> dict:
    assert_complete_sequence(events)
    kind, data = events_json(events)[-1][1:]
    assert kind == "done", f"ended with {kind}: {data}"
    return data


def test_chat_streams_to_done_and_matches_state(cluster, client):
    api = cluster.api
    chat_id = create_chat(
        client, api.url, "Name three colours.", max_tokens=40, temperature=0, system="You answer in one short sentence."
    )
    read = read_stream(client, api.url, chat_id)
    assert read.status_code == 200 and read.closed_by_server
    done = _done(read.events)
    assert done["finish_reason"] in ("stop", "length")
    usage = done["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 40
    if done["finish_reason"] == "length":
        assert usage["completion_tokens"] == 40
    text = text_of(read.events)
    assert text.strip(), "the model said nothing"
    state = get_chat(client, api.url, chat_id)
    assert state["status"] == "done"
    assert state["text"] == text
    assert state["finish_reason"] == done["finish_reason"]
    assert state["usage"] == usage
    assert state["model"] == MODEL


def test_max_tokens_cut_is_length(cluster, client):
    api = cluster.api
    chat_id = create_chat(client, api.url, "Tell me a long story about a dragon.", max_tokens=3, temperature=0)
    done = _done(read_stream(client, api.url, chat_id).events)
    assert done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 3


def test_system_and_history_reach_the_model(cluster, client):
    """The model counts the prompt it was given: a system prompt and earlier
    turns make it longer, so they got there (mapped to each API's own fields)."""
    api = cluster.api

    def prompt_tokens(**body) -> int:
        r = client.post(f"{api.url}/chat", json={"max_tokens": 1, "temperature": 0, **body})
        assert r.status_code == 202, r.text
        return _done(read_stream(client, api.url, r.json()["id"]).events)["usage"]["prompt_tokens"]

    question = {"role": "user", "content": "What is the capital of France?"}
    # (Compared with each other: SmolLM2's template puts in a system prompt of
    # its own when none is given.)
    short_system = prompt_tokens(messages=[question], system="Be brief.")
    long_system = prompt_tokens(
        messages=[question], system="Be brief. " + "You are a geography teacher who loves maps. " * 3
    )
    bare = prompt_tokens(messages=[question])
    with_history = prompt_tokens(
        messages=[
            {"role": "user", "content": "Hello, I have a question about European geography."},
            {"role": "assistant", "content": "Of course, ask away."},
            question,
        ]
    )
    assert long_system > short_system
    assert with_history > bare


def test_resume_mid_stream_is_exact(long_cluster, client):
    api = long_cluster.api
    chat_id = create_chat(client, api.url, "Write a story about a lighthouse.", max_tokens=150, temperature=0)
    first = read_stream(client, api.url, chat_id, max_events=3)
    assert len(first.events) == 3 and not first.closed_by_server
    assert all(kind == "token" for _, kind, _ in first.events)
    rest = read_stream(client, api.url, chat_id, last_event_id=first.events[-1][0])
    assert rest.closed_by_server
    assert any(kind == "token" for _, kind, _ in rest.events), "nothing was left to resume: not mid-stream"
    events = first.events + rest.events
    done = _done(events)  # ids 1..N: no gap, no duplicate across the reconnect
    assert done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 150
    state = get_chat(client, api.url, chat_id)
    assert state["text"] == text_of(events)
    # And a reader from the start gets the same.
    assert text_of(read_stream(client, api.url, chat_id).events) == state["text"]


def test_cancel_stops_the_upstream_generation(long_cluster, llama_long, client):
    """DELETE /chat/{id} closes the SDK's stream and llama-server stops: its
    slot goes idle long before max_tokens (seen through its /slots)."""
    api = long_cluster.api
    max_tokens = 4000  # ~30 s of generation on 2 cores if nothing stopped it
    chat_id = create_chat(
        client, api.url, "Write a very long story about a river.", max_tokens=max_tokens, temperature=0
    )

    def generating() -> list[dict]:
        return [s for s in llama_long.slots() if s.get("is_processing")]

    wait_until(lambda: get_chat(client, api.url, chat_id)["text"], 30, 0.05, "the first tokens")
    busy = generating()
    assert busy, "llama-server is not generating for the chat"
    r = client.delete(f"{api.url}/chat/{chat_id}")
    assert r.status_code == 202, r.text
    cancelled = time.monotonic()
    wait_until(
        lambda: not generating(),
        5,
        0.02,
        "llama-server's slots to go idle after the cancel",
        ignore=(httpx.TransportError,),
    )
    idle_after = time.monotonic() - cancelled
    state = wait_until(
        lambda: (s := get_chat(client, api.url, chat_id))["status"] == "done" and s, 10, 0.05, "the chat to end"
    )
    assert state["finish_reason"] == "cancelled"
    # The server's own account: it cancelled the task and released the slot
    # with the prompt and a fraction of max_tokens in it.
    slot, task = busy[0]["id"], busy[0]["id_task"]
    pattern = rf"id +{slot} \| task {task} \| stop processing: n_tokens = (\d+)"
    released = wait_until(
        lambda: re.search(pattern, llama_long.log_text()),
        5,
        0.02,
        lambda: f"the slot's release in llama-server's log:\n{llama_long.tail()}",
    )
    assert f"cancel task, id_task = {task}" in llama_long.log_text()
    assert int(released.group(1)) < max_tokens / 2, released.group(0)
    assert idle_after < 5
