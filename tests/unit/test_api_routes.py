"""The HTTP routes' validation and bookkeeping, on fakeredis (no server).
Streaming is tested against real processes in tests/e2e."""

from __future__ import annotations

import time

import fakeredis
import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool

from api import tokens
from api.app import create_app
from api.hub import Hub
from api.services import Services
from shared import keys
from shared.settings import Settings
from shared.store import ChatStore

pytestmark = pytest.mark.anyio

SETTINGS = Settings(max_prompt_chars=1000, max_tokens_limit=2000, secret="test-secret", queue_name="unit:queue")


def services_on(redis: ArqRedis) -> Services:
    store = ChatStore(redis, ttl_s=60, maxlen=1000)
    return Services(SETTINGS, redis, store, Hub(lambda: None, store))  # the hub is not started here


@pytest.fixture
async def redis():
    client = ArqRedis(connection_pool=fakeredis.aioredis.FakeRedis().connection_pool)
    yield client
    await client.aclose()


@pytest.fixture
async def client(redis):
    app = create_app(SETTINGS)
    app.state.services = services_on(redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_post_chat_records_the_request_and_enqueues_one_job(client, redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.WORKERS_CHANNEL)
    response = await client.post("/chat", json={"prompt": "Hi", "max_tokens": 7, "temperature": 0.5})

    assert response.status_code == 202
    body = response.json()
    chat_id = body["id"]
    assert keys.is_chat_id(chat_id)
    assert body["status"] == "queued"
    assert body["stream_url"] == f"/chat/{chat_id}/stream"
    assert response.headers["location"] == f"/chat/{chat_id}"
    assert tokens.verify(b"test-secret", chat_id, body["stream_token"])
    assert not tokens.verify(b"test-secret", keys.new_chat_id(), body["stream_token"])

    meta = await redis.hgetall(keys.meta(chat_id))
    assert meta[b"status"] == b"queued" and meta[b"attempt"] == b"0"
    assert orjson.loads(meta[b"request"]) == {
        "messages": [{"role": "user", "content": "Hi"}],
        "model": "simulated",
        "max_tokens": 7,
        "temperature": 0.5,
        "system": None,
    }
    assert await redis.zrange("unit:queue", 0, -1) == [chat_id.encode()]
    messages = [await pubsub.get_message(timeout=1) for _ in range(2)]
    assert messages[-1]["data"] == b"wake"  # idle workers poll now
    await pubsub.aclose()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"prompt": ""}, 422),
        ({"prompt": "   "}, 422),
        ({"prompt": 5}, 422),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422),
        ({"messages": []}, 422),
        ({"messages": [{"role": "assistant", "content": "b"}]}, 422),
        ({"messages": [{"role": "wizard", "content": "b"}]}, 422),
        ({"prompt": "a", "max_tokens": 0}, 422),
        ({"prompt": "a", "max_tokens": 2001}, 422),
        ({"prompt": "a", "temperature": 3}, 422),
        ({"prompt": "x" * 1001}, 413),
        ({"prompt": "x" * 10, "system": "y" * 995}, 413),
    ],
)
async def test_bad_chat_requests_get_a_json_error(client, redis, body, status):
    response = await client.post("/chat", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert await redis.zcard("unit:queue") == 0  # nothing enqueued


async def test_malformed_json_is_a_422_not_a_500(client):
    response = await client.post("/chat", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    response = await client.post("/chat", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("chat_id", ["nope", "0" * 31, "0" * 32, "../../etc", "A" * 32])
async def test_unknown_chats_are_404_on_every_route(client, chat_id):
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/chat/{chat_id}")
        assert response.status_code == 404, (method, chat_id)
        assert response.json()["error"]["code"] == "not_found"
    response = await client.get(f"/chat/{chat_id}/stream")
    assert response.status_code == 404


@pytest.mark.parametrize("value", ["abc", "-1", "1e9", "1.5", " 3", "٣", "9" * 40])
async def test_a_bad_last_event_id_is_a_400(client, value):
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    response = await client.get(f"/chat/{chat_id}/stream", headers={"last-event-id": value.encode()})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_last_event_id"
    response = await client.get(f"/chat/{chat_id}/stream", params={"last_event_id": value})
    assert response.status_code == 400


async def test_a_last_event_id_beyond_the_stream_is_a_400(client):
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    response = await client.get(f"/chat/{chat_id}/stream", headers={"last-event-id": "1"})
    assert response.status_code == 400


async def test_cancelling_a_queued_chat_ends_it_at_once(client, redis):
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]

    response = await client.delete(f"/chat/{chat_id}")
    assert response.status_code == 200
    assert response.json() == {"id": chat_id, "status": "done", "finish_reason": "cancelled"}
    state = (await client.get(f"/chat/{chat_id}")).json()
    assert (state["status"], state["finish_reason"], state["last_seq"]) == ("done", "cancelled", 1)
    # A worker picking the job up later finds it finished and does nothing.
    assert (await ChatStore(redis, ttl_s=60, maxlen=10).claim(chat_id, 1000)).attempt == 0

    again = await client.delete(f"/chat/{chat_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"


async def test_cancelling_a_running_chat_tells_its_worker(client, redis):
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    await ChatStore(redis, ttl_s=60, maxlen=10).claim(chat_id, 1000)  # a worker runs it
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.WORKERS_CHANNEL)

    response = await client.delete(f"/chat/{chat_id}")
    assert response.status_code == 202
    assert await redis.exists(keys.cancel(chat_id))
    messages = [await pubsub.get_message(timeout=1) for _ in range(2)]
    assert messages[-1]["data"] == f"cancel {chat_id}".encode()
    await pubsub.aclose()


async def test_get_chat_assembles_the_text_after_the_last_reset(client, redis):
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    store = ChatStore(redis, ttl_s=60, maxlen=10)
    first = await store.claim(chat_id, 1000)
    await store.append(chat_id, first.attempt, [("token", {"text": "lost "})])
    second = await store.claim(chat_id, 1000)
    await store.append(chat_id, second.attempt, [("reset", {"attempt": 2, "reason": "worker_lost"})])
    await store.append(chat_id, second.attempt, [("token", {"text": "Hello"}), ("token", {"text": " world"})])

    state = (await client.get(f"/chat/{chat_id}")).json()
    assert (state["status"], state["text"], state["attempt"], state["last_seq"]) == ("running", "Hello world", 2, 4)


async def test_redis_down_is_a_quick_503_with_retry_after():
    from tokenfan.embedded_redis import free_port

    pool = BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{free_port()}/0", max_connections=2, timeout=1, socket_connect_timeout=1
    )
    app = create_app(SETTINGS)
    app.state.services = services_on(ArqRedis(connection_pool=pool))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        started = time.monotonic()
        for method, path, body in [
            ("POST", "/chat", {"prompt": "hi"}),
            ("GET", f"/chat/{'0' * 32}", None),
            ("GET", f"/chat/{'0' * 32}/stream", None),
            ("DELETE", f"/chat/{'0' * 32}", None),
            ("GET", "/readyz", None),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code == 503, path
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "unavailable"
        assert time.monotonic() - started < 5
        assert (await client.get("/healthz")).status_code == 200
