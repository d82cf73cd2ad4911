"""The page at ``/`` in a real browser (Debian's chromium, headless, driven by
playwright): text arrives, the API is killed mid-stream and started again, and
the page resumes by itself (the browser's own EventSource reconnect, with
Last-Event-ID) and ends with exactly the text of ``GET /chat/{id}``. A worker
killed mid-stream: the page drops the text on ``reset`` and ends right too.

No skip: without /usr/bin/chromium these tests fail (CI installs it)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from harness import expected_text, get_chat, prompt_with_length, record, wait_until
from playwright.sync_api import Page

from shared import keys

from .uxkit import restart_api

pytestmark = pytest.mark.e2e

TOKENS_PER_S = 60  # a 300-419 token answer takes 5-7 s: time to kill and restart the API


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        "page",
        workers=2,
        env={"TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S), "TOKENFAN_SSE_RETRY_MS": "250"},
    )


class Watched:
    """A page, the stream URLs it requested and the script errors it raised."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.stream_urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.stream_urls.append(r.url) if "/stream" in r.url else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def status(self, name: str) -> str:
        return self.page.get_attribute("#status", f"data-{name}") or ""

    def answer(self) -> str:
        return self.page.eval_on_selector("#answer", "e => e.textContent")

    def wait_state(self, state: str, timeout_s: float) -> None:
        self.page.wait_for_function(
            "s => document.getElementById('status').dataset.state === s", arg=state, timeout=timeout_s * 1000
        )


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 900, "height": 760}, device_scale_factor=1)
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def ask(w: Watched, base_url: str, prompt: str) -> str:
    w.page.goto(f"{base_url}/")
    w.page.fill("#prompt", prompt)
    w.page.click("#send")
    w.page.wait_for_function("document.getElementById('answer').textContent.length > 0", timeout=15_000)
    chat_id = w.status("chat-id")
    assert keys.is_chat_id(chat_id), chat_id
    return chat_id


def test_page_resumes_after_the_api_restarts(cluster, client, watched, artifacts):
    w = watched
    api = cluster.api
    prompt = prompt_with_length(300, 419, "page-restart")
    chat_id = ask(w, api.url, prompt)
    wait_until(lambda: int(w.status("last-event-id") or 0) >= 20, 15, message="twenty events on the page")

    # Mid-stream: the chat is still being generated while the API goes away.
    assert cluster.redis.hget(keys.meta(chat_id), "status") == "running"
    assert w.status("state") == "streaming" and w.page.inner_text("#st-state") == "streaming"
    api.kill()
    killed_at = time.monotonic()
    w.wait_state("reconnecting", 10)
    seen_before = int(w.status("last-event-id"))
    text_before = w.answer()
    w.page.screenshot(path=str(artifacts / "page-reconnecting.png"))
    assert "reconnecting" in w.page.inner_text("#status")

    new_api = restart_api(cluster, api)
    w.wait_state("done", 30)
    record(f"page: resumed {time.monotonic() - killed_at:.1f} s after the API was killed (restart included)")
    w.page.screenshot(path=str(artifacts / "page-resumed.png"), full_page=True)

    state = get_chat(client, new_api.url, chat_id)
    assert state["status"] == "done"
    assert w.answer() == state["text"] == expected_text(prompt, 512)
    assert text_before and state["text"].startswith(text_before)
    resumed_from = int(w.status("resumed-from"))
    assert int(w.status("resumes")) >= 1
    assert seen_before <= resumed_from < state["last_seq"] == int(w.status("last-event-id"))
    assert f"resumed from event {resumed_from}" in w.page.inner_text("#status")
    assert "done (stop)" in w.page.inner_text("#status")
    assert "TTFT" in w.page.inner_text("#status") and "tok/s" in w.page.inner_text("#status")
    # The stream URL carries the chat's stream token (never an API key), on
    # every connection, the browser's reconnects included.
    assert len(w.stream_urls) >= 2, w.stream_urls
    assert all(f"/chat/{chat_id}/stream?token=" in url for url in w.stream_urls), w.stream_urls
    assert not w.errors, w.errors


def test_a_reload_mid_stream_brings_the_whole_chat_back(cluster, client, watched):
    """The chat on screen is kept in sessionStorage: a reload replays it from
    its first event and follows it live to the end."""
    w = watched
    api = cluster.apis[-1]  # the previous test may have restarted it
    prompt = prompt_with_length(250, 419, "page-reload")
    chat_id = ask(w, api.url, prompt)
    wait_until(lambda: int(w.status("last-event-id") or 0) >= 10, 15, message="ten events on the page")
    assert cluster.redis.hget(keys.meta(chat_id), "status") == "running"
    text_before = w.answer()

    w.page.reload()
    w.page.wait_for_function(
        "id => document.getElementById('status').dataset.chatId === id", arg=chat_id, timeout=10_000
    )
    assert w.status("restored") == "true"
    assert w.page.input_value("#prompt") == prompt
    w.wait_state("done", 30)
    state = get_chat(client, api.url, chat_id)
    assert state["status"] == "done"
    assert w.answer() == state["text"] == expected_text(prompt, 512)
    assert state["text"].startswith(text_before)
    assert "done (stop)" in w.page.inner_text("#status")
    assert "TTFT" not in w.page.inner_text("#status")  # a replay has no time to first token

    # A finished chat comes back too, from its log.
    w.page.reload()
    w.wait_state("done", 10)
    assert w.status("chat-id") == chat_id and w.answer() == state["text"]
    assert all(f"/chat/{chat_id}/stream?token=" in url for url in w.stream_urls), w.stream_urls
    assert not w.errors, w.errors


def test_page_drops_the_text_on_reset_when_a_worker_dies(cluster, client, watched):
    w = watched
    api = cluster.apis[-1]  # the previous test may have restarted it
    prompt = prompt_with_length(250, 419, "page-reset")
    chat_id = ask(w, api.url, prompt)
    wait_until(lambda: int(w.status("last-event-id") or 0) >= 3, 10, message="three events on the page")
    cluster.worker_running(chat_id, timeout=5).kill()
    w.wait_state("done", 30)

    state = get_chat(client, api.url, chat_id)
    assert state["attempt"] == 2
    assert w.answer() == state["text"] == expected_text(prompt, 512)
    assert "answer restarted (attempt 2" in w.page.inner_text("#status")
    assert not w.errors, w.errors


def test_page_shows_an_error_the_api_sends_without_an_id(clusters, watched):
    """An error that is not in the log (chat_expired: the chat's data is gone)
    has no id, so EventSource hands it over with the previous event's id. The
    page shows it and stops, instead of reconnecting into a 404."""
    w = watched
    env = {"TOKENFAN_SIM_TOKENS_PER_S": "20", "TOKENFAN_HEARTBEAT_S": "0.3"}
    cluster = clusters("page-expired", workers=1, env=env)
    chat_id = ask(w, cluster.api.url, prompt_with_length(300, 419, "page-expired"))
    wait_until(lambda: int(w.status("last-event-id") or 0) >= 3, 15, message="three events on the page")
    worker = cluster.workers[0]
    worker.signal(signal.SIGSTOP)  # no more appends: the chat's data can go
    try:
        cluster.redis.delete(keys.meta(chat_id), keys.log(chat_id))
        w.wait_state("error", 15)
    finally:
        worker.kill()
    assert "chat_expired" in w.page.inner_text("#error")
    assert "error: chat_expired" in w.page.inner_text("#status")
    assert not w.errors, w.errors
