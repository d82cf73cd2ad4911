"""The AI SDK's useChat against real processes (api/ui_stream.py): the ``ai``
package's own AbstractChat and DefaultChatTransport, React-free, in Node
(tests/clients/ui_chat.mjs), used as an app uses them.

Two versions of the package: ``ai`` (6.x, the newest that runs on Node 20)
and ``ai-v5``, ai 5.0.215, whose chunk schema is strict: any field beyond it
fails the stream, so these tests also prove that tokenfan sends exactly the
documented fields."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from harness import get_chat, prompt_with_length, wait_chat_status, wait_until
from redis.asyncio import Redis

from shared import keys
from shared.events import EventType
from shared.store import ChatStore, terminal_meta

from .nodekit import NodeChat

pytestmark = pytest.mark.e2e

PACKAGES = ["ai", "ai-v5"]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


@pytest.fixture
def chats() -> Iterator[list[NodeChat]]:
    made: list[NodeChat] = []
    try:
        yield made
    finally:
        for chat in made:
            chat.close()


def conversation() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


def user_message(text: str) -> dict:
    return {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}


def assistant_messages(state: dict) -> list[dict]:
    return [m for m in state["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("package", PACKAGES)
def test_send(cluster, client, chats, package):
    chat = NodeChat(package, cluster.api.url, conversation())
    chats.append(chat)
    chat.command("send", text="Tell me about queues", body={"max_tokens": 30})
    chat_id = chat.posted()
    state = chat.done("send")["state"]
    assert state["status"] == "ready" and state["error"] is None, state
    [answer] = assistant_messages(state)
    assert answer["text"] == get_chat(client, cluster.api.url, chat_id)["text"] != ""
    assert answer["id"] == f"msg-{chat_id}"
    assert [p["type"] for p in answer["parts"]] == ["text"]
    assert len(chat.texts()) > 2, "the text arrived in pieces"


@pytest.mark.parametrize("package", PACKAGES)
def test_resume_mid_answer_from_a_second_client(cluster, client, chats, package):
    """A second client with the same chat id (a page reload, another tab)
    resumes the running answer: all of it, then live, and both end with the
    server's text."""
    conv = conversation()
    prompt = prompt_with_length(120, 180, tag=f"resume-{package}")  # 1.5 to 2.3 s at 80 tokens/s
    first = NodeChat(package, cluster.api.url, conv)
    chats.append(first)
    first.command("send", text=prompt, body={"max_tokens": 400})
    chat_id = first.posted()
    wait_until(lambda: get_chat(client, cluster.api.url, chat_id)["last_seq"] >= 5, 10, message="a few tokens")

    second = NodeChat(package, cluster.api.url, conv, [user_message(prompt)])
    chats.append(second)
    second.command("resume")
    resumed = second.done("resume")["state"]
    final = get_chat(client, cluster.api.url, chat_id)
    assert final["status"] == "done"
    assert resumed["status"] == "ready" and resumed["error"] is None, resumed
    [answer] = assistant_messages(resumed)
    assert answer["text"] == final["text"]
    assert answer["id"] == f"msg-{chat_id}"
    assert len(second.texts()) > 2, "the resumed client followed the answer live, not after its end"
    sent = first.done("send")["state"]
    assert assistant_messages(sent)[0]["text"] == final["text"]


@pytest.mark.parametrize("package", PACKAGES)
def test_resume_after_completion_is_204(cluster, client, chats, package):
    conv = conversation()
    first = NodeChat(package, cluster.api.url, conv)
    chats.append(first)
    first.command("send", text="short", body={"max_tokens": 5})
    first.done("send")

    later = NodeChat(package, cluster.api.url, conv, [user_message("short")])
    chats.append(later)
    later.command("resume")
    state = later.done("resume")["state"]
    assert state["status"] == "ready" and state["error"] is None
    assert assistant_messages(state) == []  # nothing to resume: the client was told so
    assert client.get(f"{cluster.api.url}/api/chat/{conv}/stream").status_code == 204
    assert client.get(f"{cluster.api.url}/api/chat/never-seen/stream").status_code == 204


@pytest.mark.parametrize("package", PACKAGES)
def test_stop_cancels_the_answer(cluster, client, chats, package):
    conv = conversation()
    chat = NodeChat(package, cluster.api.url, conv)
    chats.append(chat)
    chat.command("send", text=prompt_with_length(200, tag=f"stop-{package}"), body={"max_tokens": 400})
    chat_id = chat.posted()
    chat.wait(lambda line: bool(line.get("text")), "some text")
    chat.command("stop")
    stopped = chat.wait(lambda line: "stopped" in line, "the stop route's answer")
    assert stopped["stopped"] == 200
    assert stopped["body"]["success"] is True and stopped["body"]["id"] == chat_id
    assert stopped["body"]["status"] in ("cancelling", "finished")
    state = chat.done("send")["state"]
    assert state["status"] == "ready" and state["error"] is None  # useChat's stop() is a quiet end
    final = wait_chat_status(client, cluster.api.url, chat_id, ["done"])
    assert final["finish_reason"] == "cancelled"
    assert client.get(f"{cluster.api.url}/api/chat/{conv}/stream").status_code == 204
    again = client.post(f"{cluster.api.url}/api/chat/{conv}/stop").json()
    assert again == {"success": True, "id": chat_id, "status": "finished"}


def _store_op(cluster, op) -> None:
    async def run() -> None:
        redis = Redis.from_url(cluster.redis_url)
        try:
            await op(ChatStore(redis, ttl_s=300, maxlen=10_000))
        finally:
            await redis.aclose()

    asyncio.run(run())


def _append(cluster, chat_id: str, *events: tuple[str, dict]) -> None:
    async def op(store: ChatStore) -> None:
        terminal = events[-1] if events[-1][0] in (EventType.DONE, EventType.ERROR) else None
        result = await store.append(chat_id, 0, events, terminal_meta(*terminal) if terminal else None)
        assert result.accepted, result

    _store_op(cluster, op)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_reset_is_an_error_then_the_resume_has_the_new_answer(idle_cluster, client, chats, package):
    """A worker lost mid-answer: the client gets an ``error`` chunk (status
    "error", the text so far kept); resuming then shows the restarted answer
    alone: ai 6 replaces the message, an ai 5 app drops the partial one first.
    (No worker here: the test writes the chat's events.)"""
    cluster = idle_cluster
    conv = conversation()
    chat = NodeChat(package, cluster.api.url, conv)
    chats.append(chat)
    chat.command("send", text="hello", body={"max_tokens": 50})
    chat_id = chat.posted()
    _append(cluster, chat_id, (EventType.TOKEN, {"text": "Cut "}), (EventType.TOKEN, {"text": "short"}))
    chat.wait(lambda line: line.get("text") == "Cut short", "the first attempt's text")
    _append(cluster, chat_id, (EventType.RESET, {"attempt": 2, "reason": "worker_lost"}))
    cut = chat.done("send")["state"]
    assert cut["status"] == "error" and "restarts" in cut["error"], cut
    assert assistant_messages(cut)[0]["text"] == "Cut short"

    _append(cluster, chat_id, (EventType.TOKEN, {"text": "Whole "}))
    if package == "ai-v5":
        chat.command("drop-partial")
        chat.done("drop-partial")
    chat.command("resume")
    chat.wait(lambda line: line.get("text") == "Whole ", "the replay of the new attempt")
    usage = {"prompt_tokens": 1, "completion_tokens": 2}
    _append(
        cluster,
        chat_id,
        (EventType.TOKEN, {"text": "answer"}),
        (EventType.DONE, {"finish_reason": "stop", "usage": usage}),
    )
    resumed = chat.done("resume")["state"]
    assert resumed["status"] == "ready" and resumed["error"] is None, resumed
    [answer] = assistant_messages(resumed)
    assert answer["text"] == "Whole answer" == get_chat(client, cluster.api.url, chat_id)["text"]


def test_the_stream_is_exactly_the_protocol(cluster, client):
    """The bytes: the header, one ``data:`` JSON chunk per message with only
    the documented fields, heartbeats as comment lines, ``[DONE]`` last."""
    body = {"id": conversation(), "messages": [user_message("raw bytes")], "trigger": "submit-message", "max_tokens": 8}
    with client.stream("POST", f"{cluster.api.url}/api/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["content-type"].startswith("text/event-stream")
        chat_id = response.headers["x-chat-id"]
        assert response.headers["x-stream-token"]  # the chat's native stream token, as POST /chat gives
        raw = response.read().decode()
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    assert blocks[-1].strip().endswith("data: [DONE]")
    chunks = []
    for block in blocks[:-1]:
        data = [line for line in block.split("\n") if line and not line.startswith(":")]
        assert len(data) == 1 and data[0].startswith("data: "), block
        chunks.append(json.loads(data[0][6:]))
    fields = {
        "start": {"type", "messageId"},
        "text-start": {"type", "id"},
        "text-delta": {"type", "id", "delta"},
        "text-end": {"type", "id"},
        "finish": {"type"},
    }
    for chunk in chunks:
        assert set(chunk) == fields[chunk["type"]], chunk
    assert [c["type"] for c in chunks[:2]] == ["start", "text-start"]
    assert [c["type"] for c in chunks[-2:]] == ["text-end", "finish"]
    assert (
        "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
        == get_chat(client, cluster.api.url, chat_id)["text"]
    )


@pytest.mark.parametrize(
    "body, status",
    [
        ({"messages": [user_message("x")]}, 422),  # no id
        ({"id": "a/b", "messages": [user_message("x")]}, 422),
        ({"id": "ok", "messages": []}, 422),
        ({"id": "ok", "messages": [{"role": "user", "content": "v4 shape"}]}, 422),
        (
            {
                "id": "ok",
                "messages": [{"role": "user", "parts": [{"type": "file", "url": "x", "mediaType": "image/png"}]}],
            },
            422,
        ),
        ({"id": "ok", "messages": [{"role": "assistant", "parts": [{"type": "text", "text": "no user"}]}]}, 422),
        ({"id": "ok", "messages": [user_message("x")], "max_tokens": 0}, 422),
    ],
)
def test_bad_bodies_are_clear_422s(cluster, client, body, status):
    response = client.post(f"{cluster.api.url}/api/chat", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] in ("invalid_request", "unsupported") and error["message"]


def test_bad_ids_on_resume_and_stop(cluster, client):
    assert client.get(f"{cluster.api.url}/api/chat/{'x' * 201}/stream").status_code == 404
    assert client.post(f"{cluster.api.url}/api/chat/{'x' * 201}/stop").status_code == 404
    assert client.post(f"{cluster.api.url}/api/chat/unknown/stop").json() == {
        "success": True,
        "id": None,
        "status": "none",
    }
    r = client.post(
        f"{cluster.api.url}/api/chat/unknown/stop", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


def test_the_conversation_key_is_owned():
    assert keys.ui_active("conv", "alice") != keys.ui_active("conv", "bob")
    assert not keys.is_conversation_id("a:b") and keys.is_conversation_id("Ab-1_2.3~")
