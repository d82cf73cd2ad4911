"""API keys, ownership, stream tokens, body size, rate limit and queue
admission, in process on fakeredis. The same against real processes:
tests/hardening/test_security.py."""

from __future__ import annotations

import hashlib
import time

import fakeredis
import httpx
import pytest
from arq.connections import ArqRedis
from waiting import eventually

from api import auth, tokens
from api.app import create_app
from api.hub import Hub
from api.ratelimit import RateLimiter
from api.services import Services
from shared import keys
from shared.settings import Settings
from shared.store import ChatStore

pytestmark = pytest.mark.anyio

KEY_A, KEY_B, KEY_A2 = "key-for-alice", "key-for-bob", "alice-rotated"
SECRET = b"unit-secret"


def keyed_settings(**overrides) -> Settings:
    entries = [
        f"alice={auth.hash_key(KEY_A)}",
        f"alice={auth.hash_key(KEY_A2)}",  # same label: same owner (rotation)
        auth.hash_key(KEY_B),
    ]
    base = dict(
        secret=SECRET.decode(),
        queue_name="unit:hardening",
        api_keys=",".join(entries),
        max_body_bytes=4096,
        max_messages=3,
        rate_limit_per_s=0,
    )
    return Settings(**{**base, **overrides})


@pytest.fixture
async def redis():
    client = ArqRedis(connection_pool=fakeredis.aioredis.FakeRedis().connection_pool)
    yield client
    await client.aclose()


def client_for(settings: Settings, redis: ArqRedis) -> httpx.AsyncClient:
    app = create_app(settings)
    store = ChatStore(redis, ttl_s=60, maxlen=1000)
    app.state.services = Services(settings, redis, store, Hub(lambda: None, store))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- keys ----------------------------------------------------------------------


def test_key_ring_parses_hashes_labels_and_raw_keys():
    ring = auth.KeyRing.from_setting(f" team={auth.hash_key('a')} , {auth.hash_key('b')},raw-key-c,, ")
    assert len(ring) == 3 and ring.raw_entries == 1
    assert ring.owner_of("a") == "team"
    assert ring.owner_of("b") == "key-" + hashlib.sha256(b"b").hexdigest()[:16]
    assert ring.owner_of("raw-key-c") == "key-" + hashlib.sha256(b"raw-key-c").hexdigest()[:16]
    assert ring.owner_of("d") is None
    assert ring.owner_of(auth.hash_key("a")) is None  # the hash is not the key
    assert not auth.KeyRing.from_setting("")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer   abc  ", "abc"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (None, None),
        (b"Bearer \xff\xfe", None),
        (b"Bearer " + b"x" * 600, None),
    ],
)
def test_bearer_header_parsing(header, key):
    assert auth.bearer_key(header) == key


# --- the guard, open ---------------------------------------------------------------


async def test_open_service_needs_no_key_and_records_no_owner(redis):
    async with client_for(Settings(secret="s", queue_name="unit:open", rate_limit_per_s=1), redis) as client:
        for _ in range(5):  # no rate limit without keys
            r = await client.post("/chat", json={"prompt": "hi"})
            assert r.status_code == 202
        meta = await redis.hgetall(keys.meta(r.json()["id"]))
        assert meta[b"owner"] == b""
        assert (await client.get(f"/chat/{r.json()['id']}")).status_code == 200


# --- the guard, with keys ------------------------------------------------------------


async def test_every_route_but_health_needs_a_key(redis):
    async with client_for(keyed_settings(), redis) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code != 401
        assert (await client.get("/")).status_code == 200  # the page: static, asks for the key itself
        assert (await client.get("/static/app.js")).status_code == 200
        for sneaky in ("/static/x/../../chat/" + "0" * 32, "/static//chat", "/healthz/", "/static/a/b"):
            assert (await client.get(sneaky)).status_code == 401, sneaky
        for method, path in [
            ("POST", "/chat"),
            ("GET", f"/chat/{'0' * 32}"),
            ("DELETE", f"/chat/{'0' * 32}"),
            ("GET", f"/chat/{'0' * 32}/stream"),
            ("GET", "/openapi.json"),
            ("GET", "/no/such/route"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
        ]:
            for headers in ({}, bearer("wrong"), {"authorization": "Basic " + KEY_A}, {"x-api-key": KEY_A}):
                r = await client.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.headers["www-authenticate"].startswith("Bearer")
                error = r.json()["error"]
                assert error["code"] and error["message"]
                if path.startswith("/v1/"):
                    assert error["type"] == "authentication_error"
        # The key is never taken from the URL.
        r = await client.get("/v1/models", params={"api_key": KEY_A, "token": KEY_A, "key": KEY_A})
        assert r.status_code == 401
        assert (await client.get("/v1/models", headers=bearer(KEY_A))).status_code == 200


async def test_a_chat_belongs_to_its_key(redis):
    async with client_for(keyed_settings(), redis) as client:
        r = await client.post("/chat", json={"prompt": "mine"}, headers=bearer(KEY_A))
        assert r.status_code == 202
        chat_id = r.json()["id"]
        assert (await redis.hget(keys.meta(chat_id), "owner")) == b"alice"
        assert (await client.get(f"/chat/{chat_id}", headers=bearer(KEY_A))).status_code == 200
        assert (await client.get(f"/chat/{chat_id}", headers=bearer(KEY_A2))).status_code == 200  # same label
        for method, path in [
            ("GET", f"/chat/{chat_id}"),
            ("GET", f"/chat/{chat_id}/stream"),
            ("DELETE", f"/chat/{chat_id}"),
            ("GET", f"/v1/chat/completions/{chat_id}/stream"),
        ]:
            r = await client.request(method, path, headers=bearer(KEY_B))
            assert r.status_code == 404, (method, path)  # not 403: its existence is not confirmed
        assert (await redis.hget(keys.meta(chat_id), "status")) == b"queued"  # Bob's DELETE did nothing


async def test_stream_tokens(redis):
    async with client_for(keyed_settings(), redis) as client:
        r = await client.post("/chat", json={"prompt": "hi"}, headers=bearer(KEY_A))
        chat_id, token = r.json()["id"], r.json()["stream_token"]
        other = keys.new_chat_id()
        # Finish the chat, so that a stream from its last id answers at once (no hub here).
        store = ChatStore(redis, ttl_s=60, maxlen=10)
        await store.append(chat_id, 0, [("done", {"finish_reason": "stop"})], {"status": "done"})
        stream = f"/chat/{chat_id}/stream"
        ok = await client.get(stream, params={"token": token}, headers={"last-event-id": "1"})
        assert ok.status_code == 204  # allowed in: nothing more to send
        # A token opens that chat's stream and nothing else.
        assert (await client.get(f"/chat/{chat_id}", params={"token": token})).status_code == 401
        assert (await client.get(f"/chat/{other}/stream", params={"token": token})).status_code == 401
        expired = tokens.sign(SECRET, chat_id, 60, now=1_000_000)
        tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        forged = tokens.sign(b"another secret", chat_id, 60)
        for bad in (expired, tampered, forged, "", "abc", KEY_A, token + "x", "9" * 30 + "." + token.split(".")[1]):
            r = await client.get(stream, params={"token": bad}, headers=bearer(KEY_A))
            assert r.status_code == 401, bad
            assert r.json()["error"]["code"] == "invalid_stream_token"
        r = await client.get(f"/v1/chat/completions/{chat_id}/stream", params={"token": tampered})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        resume = f"/v1/chat/completions/{chat_id}/stream"
        r = await client.get(resume, params={"token": token}, headers={"last-event-id": "1"})
        assert r.status_code == 200


async def test_body_size_limit(redis):
    async with client_for(keyed_settings(), redis) as client:
        big = {"prompt": "x" * 5000}
        r = await client.post("/chat", json=big, headers=bearer(KEY_A))
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunked():
            for _ in range(10):
                yield b" " * 1000

        r = await client.post("/chat", content=chunked(), headers={**bearer(KEY_A), "content-type": "application/json"})
        assert r.status_code == 413
        r = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]}, headers=bearer(KEY_A)
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"

        # Under the limit, a chunked body reaches the route whole.
        async def small():
            yield b'{"prompt": '
            yield b'"hello"}'

        r = await client.post("/chat", content=small(), headers={**bearer(KEY_A), "content-type": "application/json"})
        assert r.status_code == 202, r.text
        assert await redis.zcard("unit:hardening") == 1


async def test_too_many_messages(redis):
    async with client_for(keyed_settings(), redis) as client:
        messages = [{"role": "user", "content": "hi"}] * 4
        r = await client.post("/chat", json={"messages": messages}, headers=bearer(KEY_A))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_messages"
        r = await client.post("/v1/chat/completions", json={"messages": messages}, headers=bearer(KEY_A))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_messages"
        assert await redis.zcard("unit:hardening") == 0


async def test_rate_limit_per_key(redis):
    async with client_for(keyed_settings(rate_limit_per_s=0.5, rate_limit_burst=3), redis) as client:
        codes = [(await client.get("/v1/models", headers=bearer(KEY_A))).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = await client.get(f"/chat/{'0' * 32}", headers=bearer(KEY_A))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        r = await client.get("/v1/models", headers=bearer(KEY_A2))  # same owner, same bucket
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert (await client.get("/v1/models", headers=bearer(KEY_B))).status_code == 200  # another key
        assert (await client.get("/healthz")).status_code == 200
        # Streams and resumes are not counted (404: no such chat, past the limiter).
        for stream in ("/chat/{}/stream", "/api/chat/{}/stream", "/v1/responses/resp_{}"):
            r = await client.get(stream.format("0" * 32), headers=bearer(KEY_A))
            assert r.status_code in (204, 404), (stream, r.status_code)
        r = await client.post(f"/v1/responses/resp_{'0' * 32}/cancel", headers=bearer(KEY_A))
        assert r.status_code == 429  # a cancel is an ordinary request
        ttl = await redis.pttl("tf:ratelimit:alice")
        assert 0 < ttl <= 3 / 0.5 * 1000 + 1000


async def test_token_bucket_refills(redis):
    limiter = RateLimiter(redis, rate_per_s=20, burst=2)
    assert [(await limiter.take("k")).allowed for _ in range(3)] == [True, True, False]
    refused = await limiter.take("k")
    assert not refused.allowed and refused.retry_after_s == 1
    # Refilled on the bucket's own clock (Redis TIME): a token is back after 50 ms.
    started = time.monotonic()
    await eventually(lambda: _allowed(limiter.take("k")), timeout=2.0)
    assert time.monotonic() - started < 1.0


async def _allowed(verdict) -> bool:
    return (await verdict).allowed


async def test_queue_admission(redis):
    async with client_for(keyed_settings(max_queued=2, queue_full_retry_after_s=3), redis) as client:
        accepted = []
        for _ in range(2):
            r = await client.post("/chat", json={"prompt": "hi"}, headers=bearer(KEY_A))
            assert r.status_code == 202
            accepted.append(r.json()["id"])
        r = await client.post("/chat", json={"prompt": "hi"}, headers=bearer(KEY_B))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "queue_full"
        r = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=bearer(KEY_B)
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert await redis.zcard("unit:hardening") == 2  # the refused left nothing behind
        # A chat that starts running no longer counts as waiting.
        await ChatStore(redis, ttl_s=60, maxlen=10).claim(accepted[0], 10_000)
        r = await client.post("/chat", json={"prompt": "hi"}, headers=bearer(KEY_B))
        assert r.status_code == 202


@pytest.mark.parametrize(
    "token",
    ["9" * 5000 + ".abc", "1" * 13 + ".abc", "١٢٣.abc", "123.é", "123.", ".abc", "", "123", "9999999999.\x00"],
)
def test_hostile_stream_tokens_are_refused_not_crashed(token):
    assert tokens.verify(SECRET, "0" * 32, token) is False
