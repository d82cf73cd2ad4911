"""Cancelling chats, and bad input against the real API."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from harness import (
    assert_complete_sequence,
    create_chat,
    expected_text,
    get_chat,
    prompt_with_length,
    read_in_background,
    read_stream,
    text_of,
    wait_chat_status,
    wait_until,
)

pytestmark = pytest.mark.e2e

TOKENS_PER_S = 150  # a 380-token answer takes ~2.7 s: time to cancel it mid-way


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(env={"TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)})


@pytest.fixture(scope="module")
def idle_cluster(module_clusters):
    """An API with no worker: its chats stay queued."""
    return module_clusters("idle", workers=0)


def test_cancel_running_chat(cluster, client):
    api = cluster.api
    prompt = prompt_with_length(380, 419, "cancel")  # ~2.7 s at TOKENS_PER_S
    chat_id = create_chat(client, api.url, prompt, max_tokens=500)
    cancelled_at: list[float] = []
    responses: list[httpx.Response] = []

    def on_event(ev):
        if ev[0] == 5 and not responses:
            # From another thread: this one keeps reading the stream.
            def cancel():
                cancelled_at.append(time.monotonic())
                with httpx.Client(timeout=10.0) as c2:
                    responses.append(c2.delete(f"{api.url}/chat/{chat_id}"))

            threading.Thread(target=cancel, daemon=True).start()

    read = read_stream(client, api.url, chat_id, on_event=on_event)
    wait_until(lambda: responses, 10, message="the DELETE to answer")
    assert responses[0].status_code == 202, responses[0].text
    assert responses[0].json()["status"] == "cancelling"

    assert read.closed_by_server
    assert_complete_sequence(read.events)
    last = read.events[-1]
    assert last[1] == "done"
    done = json.loads(last[2])
    assert done["finish_reason"] == "cancelled"
    full_text = expected_text(prompt, 500)
    text = text_of(read.events)
    assert full_text.startswith(text) and len(text) < len(full_text), "the generation was not cut short"
    stopped_after = read.times[-1] - cancelled_at[0]
    assert stopped_after < 1.5, f"done came {stopped_after:.2f} s after the cancel"

    # The worker's job ended: arq's in-progress key and the lease are gone ...
    wait_until(
        lambda: (
            not cluster.redis.exists(f"arq:in-progress:{chat_id}")
            and cluster.redis.zscore("tf:running", chat_id) is None
        ),
        10,
        message="the worker's job to end",
    )
    # ... and nothing was appended after the done event.
    state = get_chat(client, api.url, chat_id)
    assert state["status"] == "done"
    assert state["finish_reason"] == "cancelled"
    assert state["last_seq"] == last[0]
    assert state["text"] == text
    assert cluster.redis.xlen(f"tf:{{{chat_id}}}:log") == last[0]

    again = client.delete(f"{api.url}/chat/{chat_id}")
    assert again.status_code == 409
    assert again.json()["error"]["code"]


def test_cancel_queued_chat(idle_cluster, client):
    api = idle_cluster.api
    chat_id = create_chat(client, api.url, "nobody will run this", max_tokens=20)
    assert get_chat(client, api.url, chat_id)["status"] == "queued"
    reader, result = read_in_background(client, api.url, chat_id)

    r = client.delete(f"{api.url}/chat/{chat_id}")
    assert r.status_code == 200, r.text
    assert r.json()["finish_reason"] == "cancelled"
    reader.join(10)
    assert not reader.is_alive(), "the open stream did not end after the cancel"
    (read,) = result
    assert read.closed_by_server
    assert [e[:2] for e in read.events] == [(1, "done")]
    assert json.loads(read.events[0][2])["finish_reason"] == "cancelled"
    assert read_stream(client, api.url, chat_id).events == read.events

    state = get_chat(client, api.url, chat_id)
    assert (state["status"], state["finish_reason"], state["last_seq"]) == ("done", "cancelled", 1)
    assert client.delete(f"{api.url}/chat/{chat_id}").status_code == 409


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def test_bad_input(cluster, client):
    base = cluster.api.url
    unknown = uuid.uuid4().hex
    for method, path in [
        ("GET", f"/chat/{unknown}"),
        ("GET", f"/chat/{unknown}/stream"),
        ("DELETE", f"/chat/{unknown}"),
        ("GET", "/chat/not-a-chat-id"),
        ("GET", "/chat/not-a-chat-id/stream"),
        ("DELETE", "/chat/not-a-chat-id"),
    ]:
        assert_error(client.request(method, base + path), 404)

    post = f"{base}/chat"
    assert_error(client.post(post, content=b'{"prompt": "hi"', headers={"content-type": "application/json"}), 422)
    assert_error(client.post(post, content=b"not json at all", headers={"content-type": "application/json"}), 422)
    assert_error(client.post(post, json={}), 422)
    assert_error(client.post(post, json={"max_tokens": 5}), 422)
    assert_error(client.post(post, json={"prompt": ""}), 422)
    assert_error(client.post(post, json={"prompt": "   "}), 422)
    assert_error(client.post(post, json={"prompt": "hi", "max_tokens": 0}), 422)
    assert_error(client.post(post, json={"prompt": 12}), 422)

    prompt = prompt_with_length(20, 40, "bad")
    chat_id = create_chat(client, base, prompt, max_tokens=10)
    wait_chat_status(client, base, chat_id, ["done"])
    last_seq = get_chat(client, base, chat_id)["last_seq"]
    stream = f"{base}/chat/{chat_id}/stream"
    for bad in ["abc", "-1", "1e9", "1.5", "+1", str(last_seq + 1), "99999999999999999999999"]:
        assert_error(client.get(stream, headers={"Last-Event-ID": bad}), 400)
        assert_error(client.get(stream, params={"last_event_id": bad}), 400)
