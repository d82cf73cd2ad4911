"""Each upstream failure provoked for real, and what a client sees: an
``error`` event with a stable code and the upstream's message, never a hung
stream. Also the retry policy (worker/providers/upstream.py): retried before
the first token, never after."""

from __future__ import annotations

import time

import pytest
from harness import assert_complete_sequence, create_chat, get_chat, read_stream, text_of, wait_until
from llm_support import events_json, provider_env

from tokenfan.embedded_redis import free_port

pytestmark = pytest.mark.e2e

PROVIDERS = ["openai", "anthropic"]


def _error_of(read) -> dict:
    assert read.status_code == 200 and read.closed_by_server
    assert_complete_sequence(read.events)
    kind, data = events_json(read.events)[-1][1:]
    assert kind == "error", f"ended with {kind}: {data}"
    assert set(data) >= {"code", "message"}
    assert "Traceback" not in data["message"]
    return data


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_not_started_is_unavailable_after_retries(provider, clusters, client):
    port = free_port()  # nothing listens there
    cluster = clusters(env={**provider_env(provider, f"http://127.0.0.1:{port}"), "TOKENFAN_UPSTREAM_RETRIES": "2"})
    started = time.monotonic()
    chat_id = create_chat(client, cluster.api.url, "Hello", max_tokens=8)
    error = _error_of(read_stream(client, cluster.api.url, chat_id))
    assert error["code"] == "upstream_unavailable"
    assert f"127.0.0.1:{port}" in error["message"]
    assert time.monotonic() - started < 10
    state = get_chat(client, cluster.api.url, chat_id)
    assert state["status"] == "error" and state["error"]["code"] == "upstream_unavailable"
    log = cluster.workers[0].log_text()
    assert "retry 1/2" in log and "retry 2/2" in log and "retry 3/" not in log


def test_retry_reaches_a_server_that_comes_up(clusters, start_llama, client):
    """Connection refused is retried (with backoff) until the first token:
    a server started while the worker waits still answers the chat."""
    port = free_port()
    cluster = clusters(
        env={
            **provider_env("openai", f"http://127.0.0.1:{port}"),
            "TOKENFAN_UPSTREAM_RETRIES": "8",
            "TOKENFAN_UPSTREAM_RETRY_BACKOFF_S": "0.2",
        }
    )
    worker = cluster.workers[0]
    chat_id = create_chat(client, cluster.api.url, "Say hello.", max_tokens=8, temperature=0)
    wait_until(lambda: "retry 1/8" in worker.log_text(), 10, 0.02, "the worker's first retry")
    start_llama("late", port=port)
    read = read_stream(client, cluster.api.url, chat_id)
    assert_complete_sequence(read.events)
    assert read.events[-1][1] == "done", read.events[-1]
    assert text_of(read.events).strip()
    assert "retry 1/8" in worker.log_text()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_killed_mid_stream_is_disconnected(provider, clusters, start_llama, client):
    server = start_llama(f"doomed-{provider}", ctx=8192, parallel=1, extra=("--ignore-eos",))
    cluster = clusters(env=provider_env(provider, server))
    chat_id = create_chat(client, cluster.api.url, "Write a very long story.", max_tokens=4000, temperature=0)
    wait_until(lambda: get_chat(client, cluster.api.url, chat_id)["text"], 30, 0.02, "the first tokens")
    server.kill()
    read = read_stream(client, cluster.api.url, chat_id)
    error = _error_of(read)
    assert error["code"] == "upstream_disconnected"
    assert text_of(read.events), "the tokens before the drop are kept"
    assert not any(kind == "reset" for _, kind, _ in read.events), "nothing is retried after the first token"
    state = get_chat(client, cluster.api.url, chat_id)
    assert state["status"] == "error" and state["text"] == text_of(read.events)
    assert "retry 1/" not in cluster.workers[0].log_text()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_prompt_beyond_the_context_is_upstream_error(provider, clusters, llama, client):
    """A 4xx from the model server (the prompt does not fit its context): the
    server's own message reaches the client; a 4xx is not retried."""
    cluster = clusters(env=provider_env(provider, llama))
    prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 400  # ~4,000 tokens > 2,048
    chat_id = create_chat(client, cluster.api.url, prompt, max_tokens=8)
    error = _error_of(read_stream(client, cluster.api.url, chat_id))
    assert error["code"] == "upstream_error"
    assert "400" in error["message"]
    assert "context" in error["message"].lower()
    assert "retry 1/" not in cluster.workers[0].log_text()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_silent_server_is_timeout_not_retried(provider, clusters, silent_server, client):
    """A server that accepts the connection and says nothing: upstream_timeout
    at the first-token deadline, one connection only (timeouts are not retried)."""
    cluster = clusters(
        env={**provider_env(provider, silent_server.url), "TOKENFAN_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": "1.5"}
    )
    started = time.monotonic()
    chat_id = create_chat(client, cluster.api.url, "Hello", max_tokens=8)
    error = _error_of(read_stream(client, cluster.api.url, chat_id))
    elapsed = time.monotonic() - started
    assert error["code"] == "upstream_timeout"
    assert 1.5 <= elapsed < 8, elapsed
    assert len(silent_server.accepted) == 1
