"""Browsers on another origin (TOKENFAN_CORS_ORIGINS, api/middleware.py): a
page served from a second origin calls tokenfan from headless Chromium, with
API keys on, as a front end on its own domain would: preflighted POSTs with
``Authorization``, the exposed ``X-Chat-Id`` and ``X-Stream-Token`` headers,
an EventSource on the native stream with the stream token, the AI SDK's
route. A page on an origin that is not listed gets nothing.

No skip: without /usr/bin/chromium these tests fail (CI installs it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from harness import HOST
from playwright.sync_api import Browser, Page

from api.auth import hash_key
from tokenfan.embedded_redis import free_port

pytestmark = pytest.mark.e2e

KEY = "cors-test-key"
PAGE = b"<!doctype html><title>another origin</title><p>a front end on its own origin</p>"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


def _origin_server() -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, free_port()), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def allowed_origin() -> Iterator[str]:
    yield from _origin_server()


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    yield from _origin_server()


@pytest.fixture(scope="module")
def cluster(module_clusters, allowed_origin):
    env = {
        "TOKENFAN_API_KEYS": f"front={hash_key(KEY)}",
        "TOKENFAN_CORS_ORIGINS": f"https://app.example, {allowed_origin}",
        "TOKENFAN_SIM_TOKENS_PER_S": "300",
    }
    return module_clusters("cors", env=env)


def page_at(browser: Browser, origin: str) -> Iterator[Page]:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/")
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser, allowed_origin) -> Iterator[Page]:
    yield from page_at(browser, allowed_origin)


# What the front end does, in the page (its origin is not the API's).
FRONT_END = """async ([api, key]) => {
  const auth = {Authorization: `Bearer ${key}`, "Content-Type": "application/json"};
  const out = {};

  // 1. The OpenAI route: a preflighted POST; the headers it exposes.
  const completion = await fetch(`${api}/v1/chat/completions`, {method: "POST", headers: auth,
    body: JSON.stringify({model: "simulated", messages: [{role: "user", content: "cors"}], max_tokens: 6})});
  out.completion = {status: completion.status, chatId: completion.headers.get("X-Chat-Id"),
    token: completion.headers.get("X-Stream-Token"), text: (await completion.json()).choices[0].message.content};

  // 2. The native stream in an EventSource, opened with the stream token.
  out.events = await new Promise((resolve, reject) => {
    const seen = [];
    const source = new EventSource(`${api}/chat/${out.completion.chatId}/stream?token=${out.completion.token}`);
    source.addEventListener("token", (e) => seen.push(JSON.parse(e.data).text));
    source.addEventListener("done", () => { source.close(); resolve(seen.join("")); });
    source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
  });

  // 3. The AI SDK's route: a UI message stream, read whole.
  const ui = await fetch(`${api}/api/chat`, {method: "POST", headers: auth, body: JSON.stringify({
    id: "cors-conv", messages: [{id: "u", role: "user", parts: [{type: "text", text: "cors"}]}], max_tokens: 4})});
  out.ui = {status: ui.status, chatId: ui.headers.get("X-Chat-Id"),
    protocol: ui.headers.get("x-vercel-ai-ui-message-stream"), body: await ui.text()};

  // 4. A refusal is readable too (no key): status and JSON.
  const refused = await fetch(`${api}/chat`, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({prompt: "no key"})});
  out.refused = {status: refused.status, body: await refused.json()};
  return out;
}"""


def test_a_page_on_an_allowed_origin(cluster, page):
    out = page.evaluate(FRONT_END, [cluster.api.url, KEY])
    completion = out["completion"]
    assert completion["status"] == 200 and len(completion["chatId"]) == 32 and completion["token"]
    assert out["events"] == completion["text"] != ""
    assert out["ui"]["status"] == 200 and out["ui"]["protocol"] == "v1" and out["ui"]["chatId"]
    assert out["ui"]["body"].rstrip().endswith("data: [DONE]")
    assert out["refused"]["status"] == 401 and out["refused"]["body"]["error"]["code"] == "unauthorized"


def test_a_page_on_another_origin_gets_nothing(cluster, browser, other_origin):
    for page in page_at(browser, other_origin):
        failed = page.evaluate(
            """async ([api, key]) => {
                try {
                    await fetch(`${api}/chat`, {method: "POST", body: '{"prompt": "x"}',
                        headers: {Authorization: `Bearer ${key}`, "Content-Type": "application/json"}});
                    return "answered";
                } catch (e) { return e.name; }
            }""",
            [cluster.api.url, KEY],
        )
        assert failed == "TypeError"  # the browser refused: the preflight did not allow this origin


def test_preflights_are_answered_before_auth(cluster, allowed_origin):
    preflight = {
        "Origin": allowed_origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
    }
    with httpx.Client(base_url=cluster.api.url, timeout=10.0) as client:
        for path in ("/chat", "/v1/chat/completions", "/v1/responses", "/api/chat", "/chat/x/stream"):
            r = client.options(path, headers=preflight)  # no API key: a preflight never has one
            assert r.status_code == 200, (path, r.status_code, r.text)
            assert r.headers["access-control-allow-origin"] == allowed_origin
            assert "authorization" in r.headers["access-control-allow-headers"].lower()
            assert "POST" in r.headers["access-control-allow-methods"]
        denied = client.options("/chat", headers={**preflight, "Origin": "http://evil.example"})
        assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
        answer = client.get("/healthz", headers={"Origin": allowed_origin})
        assert answer.headers["access-control-allow-origin"] == allowed_origin
        assert "X-Chat-Id" in answer.headers["access-control-expose-headers"]
        assert "X-Stream-Token" in answer.headers["access-control-expose-headers"]
        assert "access-control-allow-origin" not in client.get("/healthz").headers  # no Origin, no CORS
