"""API keys, ownership, stream tokens, limits, the rate limit and queue
admission against real processes (uvicorn + arq on the session's Redis). The
logic in detail: tests/unit/test_hardening.py."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from harness import expected_text, prompt_with_length, wait_until

from api import auth, tokens
from hardening.follow import follow

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = "tf-e2e-alice-0123456789abcdef", "tf-e2e-bob-0123456789abcdef"
SECRET = "e2e-hardening-secret"
KEYS = f"alice={auth.hash_key(KEY_A)},bob={auth.hash_key(KEY_B)}"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_json_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def keyed(module_clusters):
    return module_clusters(
        "keyed",
        env={
            "TOKENFAN_API_KEYS": KEYS,
            "TOKENFAN_SECRET": SECRET,
            "TOKENFAN_SIM_TOKENS_PER_S": "400",
            "TOKENFAN_MAX_PROMPT_CHARS": "2000",
            "TOKENFAN_MAX_TOKENS_LIMIT": "1000",
            "TOKENFAN_MAX_MESSAGES": "8",
            "TOKENFAN_MAX_BODY_BYTES": "16384",
            "TOKENFAN_RATE_LIMIT_PER_S": "1000",
            "TOKENFAN_RATE_LIMIT_BURST": "1000",
        },
    )


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=httpx.Timeout(15.0)) as c:
        yield c


def test_open_routes_and_the_rest(keyed, client):
    base = keyed.api.url
    assert client.get(f"{base}/healthz").status_code == 200
    assert client.get(f"{base}/readyz").status_code == 200
    assert client.get(f"{base}/metrics").status_code in (200, 404)  # open whether or not it exists yet
    for method, path in [("POST", "/chat"), ("GET", "/v1/models"), ("GET", "/openapi.json"), ("GET", "/docs")]:
        assert_json_error(client.request(method, base + path), 401, "unauthorized")
        assert_json_error(client.request(method, base + path, headers=bearer("nope")), 401)
    assert "the service runs OPEN" not in keyed.api.log_text()
    assert "API keys: 2 configured" in keyed.api.log_text()


def test_open_service_says_so_once(clusters, client):
    cluster = clusters("open")
    assert cluster.api.log_text().count("the service runs OPEN") == 1
    r = client.post(f"{cluster.api.url}/chat", json={"prompt": "hi", "max_tokens": 3})
    assert r.status_code == 202


def test_ownership_and_stream_tokens(keyed, client):
    base = keyed.api.url
    prompt = prompt_with_length(40, 80, "owner")
    r = client.post(f"{base}/chat", json={"prompt": prompt, "max_tokens": 200}, headers=bearer(KEY_A))
    assert r.status_code == 202, r.text
    chat_id, token = r.json()["id"], r.json()["stream_token"]
    assert tokens.verify(SECRET.encode(), chat_id, token)

    # A browser's EventSource: the token in the URL, no header at all.
    followed = asyncio.run(_follow(base, chat_id, params={"token": token}))
    followed.check()
    assert followed.text == expected_text(prompt, 200)
    state = client.get(f"{base}/chat/{chat_id}", headers=bearer(KEY_A)).json()
    assert state["status"] == "done" and state["text"] == followed.text

    # Bob cannot see it, through any route, and cannot tell that it exists.
    unknown = "0" * 32
    for method, path in [
        ("GET", f"/chat/{chat_id}"),
        ("GET", f"/chat/{chat_id}/stream"),
        ("DELETE", f"/chat/{chat_id}"),
        ("GET", f"/v1/chat/completions/{chat_id}/stream"),
    ]:
        theirs = assert_json_error(client.request(method, base + path, headers=bearer(KEY_B)), 404)
        missing = assert_json_error(
            client.request(method, base + path.replace(chat_id, unknown), headers=bearer(KEY_B)), 404
        )
        assert theirs == missing
    # Bad tokens, whoever presents them.
    expired = tokens.sign(SECRET.encode(), chat_id, 10, now=1_000_000)
    other_chat = tokens.sign(SECRET.encode(), unknown, 600)
    for bad in (expired, token[:-1] + ("A" if token[-1] != "A" else "B"), KEY_A, other_chat):
        for headers in ({}, bearer(KEY_A)):
            r = client.get(f"{base}/chat/{chat_id}/stream", params={"token": bad}, headers=headers)
            assert_json_error(r, 401, "invalid_stream_token")
    r = client.get(f"{base}/chat/{chat_id}", params={"token": token})  # a token opens the stream only
    assert_json_error(r, 401)


def test_openai_sdk_with_a_key(keyed):
    async def main():
        good = openai.AsyncOpenAI(base_url=f"{keyed.api.url}/v1", api_key=KEY_A, max_retries=0)
        bad = openai.AsyncOpenAI(base_url=f"{keyed.api.url}/v1", api_key="wrong", max_retries=0)
        try:
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
            messages = [{"role": "user", "content": "hello there"}]
            raw = await good.chat.completions.with_raw_response.create(
                model="simulated", messages=messages, max_tokens=20
            )
            chat_id, stream_token = raw.headers["x-chat-id"], raw.headers["x-stream-token"]
            completion = raw.parse()
            assert completion.choices[0].message.content
            # The resume route takes the stream token (EventSource) or the owner's key.
            async with httpx.AsyncClient(base_url=keyed.api.url, timeout=10) as http:
                resume = f"/v1/chat/completions/{chat_id}/stream"
                r = await http.get(resume, params={"token": stream_token})
                assert r.status_code == 200 and "[DONE]" in r.text
                r = await http.get(resume, headers=bearer(KEY_B))
                assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
                r = await http.get(resume, params={"token": stream_token + "x"})
                assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        finally:
            await good.close()
            await bad.close()

    asyncio.run(main())


def test_limits(keyed, client):
    base = keyed.api.url
    post = f"{base}/chat"
    h = bearer(KEY_A)
    assert_json_error(client.post(post, json={"prompt": "x" * 20_000}, headers=h), 413, "body_too_large")
    assert_json_error(client.post(post, json={"prompt": "x" * 2001}, headers=h), 413, "prompt_too_long")
    many = [{"role": "user", "content": "hi"}] * 9
    assert_json_error(client.post(post, json={"messages": many}, headers=h), 413, "too_many_messages")
    assert_json_error(client.post(post, json={"prompt": "hi", "max_tokens": 1001}, headers=h), 422)

    def chunked():
        for _ in range(40):
            yield b" " * 1024

    r = client.post(post, content=chunked(), headers={**h, "content-type": "application/json"})
    assert_json_error(r, 413, "body_too_large")
    r = client.post(f"{base}/v1/chat/completions", json={"messages": many}, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_messages"
    assert keyed.api.alive()


def test_rate_limit(clusters, client):
    cluster = clusters(
        "ratelimit",
        workers=0,
        env={"TOKENFAN_API_KEYS": KEYS, "TOKENFAN_RATE_LIMIT_PER_S": "1", "TOKENFAN_RATE_LIMIT_BURST": "5"},
    )
    base = cluster.api.url
    codes = [client.get(f"{base}/v1/models", headers=bearer(KEY_A)).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
    r = client.post(f"{base}/chat", json={"prompt": "hi"}, headers=bearer(KEY_A))
    error = assert_json_error(r, 429, "rate_limited")
    assert "1 requests/s" in error["message"]
    assert r.headers["retry-after"] == "1"
    # Bob has his own bucket; and a second later Alice has a token again.
    assert client.get(f"{base}/v1/models", headers=bearer(KEY_B)).status_code == 200
    wait_until(
        lambda: client.get(f"{base}/v1/models", headers=bearer(KEY_A)).status_code == 200,
        3,
        0.2,
        "Alice's bucket to refill",
    )
    ttl = cluster.redis.pttl("tf:ratelimit:alice")
    assert 0 < ttl <= 6000


def test_queue_admission_never_drops_an_accepted_chat(clusters, client):
    cluster = clusters(
        "admission", workers=0, env={"TOKENFAN_MAX_QUEUED": "3", "TOKENFAN_QUEUE_FULL_RETRY_AFTER_S": "4"}
    )
    base = cluster.api.url
    prompts = [prompt_with_length(20, 60, f"admit-{i}") for i in range(3)]
    accepted = []
    for prompt in prompts:
        r = client.post(f"{base}/chat", json={"prompt": prompt, "max_tokens": 100})
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
    for _ in range(3):
        r = client.post(f"{base}/chat", json={"prompt": "one too many"})
        assert_json_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "4"
    r = client.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "4" and r.json()["error"]["type"] == "server_error"
    assert cluster.redis.zcard(cluster.env["TOKENFAN_QUEUE_NAME"]) == 3
    # A worker arrives: every accepted chat runs to the end.
    cluster.add_worker()
    for chat_id, prompt in zip(accepted, prompts, strict=True):
        state = wait_until(
            lambda c=chat_id: (s := client.get(f"{base}/chat/{c}").json())["status"] == "done" and s,
            20,
            0.05,
            f"chat {chat_id} to finish",
        )
        assert state["text"] == expected_text(prompt, 100)
    assert client.post(f"{base}/chat", json={"prompt": "room again", "max_tokens": 3}).status_code == 202


async def _follow(base: str, chat_id: str, **kwargs):
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client:
        return await follow(client, [base], chat_id, deadline_s=30, **kwargs)
