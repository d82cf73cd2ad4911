"""An API process whose Redis goes away answers 503 quickly (never hangs,
never 500) and recovers when Redis is back."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from harness import FAST_ENV, record, start_api, wait_until

from tokenfan.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_redis():
    servers: list[EmbeddedRedis] = []

    def start(port: int) -> EmbeddedRedis:
        server = EmbeddedRedis(port=port, persistent=False)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def api_on(request):
    procs = []

    def start(url):
        proc = start_api(
            url,
            {**FAST_ENV, "TOKENFAN_QUEUE_NAME": f"tf-e2e:redis-down:{uuid.uuid4().hex[:8]}"},
            label="redis_down-api",
        )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers.get("retry-after"), "503 without Retry-After"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"]


def test_redis_down_and_back(own_redis, api_on):
    port = free_port()
    server = own_redis(port)
    api = api_on(server.url)
    with httpx.Client(timeout=httpx.Timeout(15.0)) as client:
        assert client.get(f"{api.url}/readyz").status_code == 200
        server.stop()

        timings = {}
        r, timings["readyz"] = timed(lambda: client.get(f"{api.url}/readyz"))
        assert_unavailable(r)
        r, timings["post"] = timed(lambda: client.post(f"{api.url}/chat", json={"prompt": "hello", "max_tokens": 5}))
        assert_unavailable(r)
        r, timings["get"] = timed(lambda: client.get(f"{api.url}/chat/{uuid.uuid4().hex}"))
        assert_unavailable(r)
        r, timings["stream"] = timed(lambda: client.get(f"{api.url}/chat/{uuid.uuid4().hex}/stream"))
        assert_unavailable(r)
        r, timings["healthz"] = timed(lambda: client.get(f"{api.url}/healthz"))
        assert r.status_code == 200, "liveness must not depend on Redis"
        record("redis down: " + ", ".join(f"{k} answered in {v:.2f} s" for k, v in timings.items()))
        for what, elapsed in timings.items():
            assert elapsed < 3.0, f"{what} took {elapsed:.2f} s with Redis down"

        own_redis(port)
        wait_until(lambda: client.get(f"{api.url}/readyz").status_code == 200, 15, 0.1, "/readyz to recover")
        wait_until(lambda: client.get(f"{api.url}/readyz").json().get("hub_connected"), 15, 0.1, "the hub to reconnect")
        r = client.post(f"{api.url}/chat", json={"prompt": "hello again", "max_tokens": 5})
        assert r.status_code == 202, r.text
    assert api.alive()
