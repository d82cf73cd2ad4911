"""The providers read the upstream's server-sent events themselves (orjson,
no pydantic model per chunk): the same pieces, finish and usage as the SDKs'
readers, and the same error codes, against a canned upstream on loopback
whose bytes arrive cut at awkward places."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.settings import Settings
from worker.providers import anthropic_provider, openai_provider
from worker.providers.base import ChatRequest, Finish
from worker.providers.upstream import UpstreamFailure, sse_data

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="m", max_tokens=5)


class Upstream:
    """Answers every POST with ``status`` and ``body``, written in ``cuts``-sized pieces."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.cut = 7
        self.requests = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                upstream.requests += 1
                self.send_response(upstream.status)
                kind = "text/event-stream" if upstream.status == 200 else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Connection", "close")
                self.end_headers()
                body = upstream.body
                for i in range(0, len(body), upstream.cut):
                    self.wfile.write(body[i : i + upstream.cut])
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with closing(Upstream()) as server:
        yield server


def sse(*events: dict | str, names: bool = False) -> bytes:
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        name = f"event: {event['type']}\r\n" if names and isinstance(event, dict) else ""
        out.append(f"{name}data: {data}\r\n\r\n")
    return b": keep-alive comment\n\n" + "".join(out).encode()


def run(provider) -> list:
    async def collect() -> list:
        return [piece async for piece in provider(REQUEST)]

    return asyncio.run(collect())


def settings(**kw) -> Settings:
    return Settings(_env_file=None, upstream_retry_backoff_s=0.01, upstream_first_token_timeout_s=10, **kw)


def test_sse_data_joins_cut_lines_and_multi_line_data() -> None:
    body = b'data: {"a":\n\r\ndata: 1\ndata: 2\r\n\r\n: comment\n\nid: 3\nevent: x\ndata:no-space\n\n'

    async def collect(cut: int) -> list[bytes]:
        async def chunks():
            for i in range(0, len(body), cut):
                yield body[i : i + cut]

        return [data async for data in sse_data(chunks())]

    for cut in (1, 2, 5, len(body)):
        assert asyncio.run(collect(cut)) == [b'{"a":', b"1\n2", b"no-space"], cut


def chat_chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "choices": choices, "usage": usage}


def test_openai_stream_pieces_finish_and_usage(upstream: Upstream) -> None:
    upstream.body = sse(
        chat_chunk("Hel"),
        chat_chunk("lo é"),
        chat_chunk(finish="length"),
        chat_chunk(usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        "[DONE]",
    )
    provider = openai_provider.build(settings(openai_base_url=upstream.url, openai_api_key="k"))
    assert run(provider) == ["Hel", "lo é", Finish("length", {"prompt_tokens": 3, "completion_tokens": 2})]


def test_openai_error_inside_the_stream(upstream: Upstream) -> None:
    upstream.body = sse(chat_chunk("a"), {"error": {"message": "model overloaded", "type": "server_error"}})
    provider = openai_provider.build(settings(openai_base_url=upstream.url, openai_api_key="k"))
    with pytest.raises(UpstreamFailure) as failure:
        run(provider)
    assert failure.value.code == "upstream_error"
    assert "model overloaded" in failure.value.message


def test_openai_status_error_is_retried_then_reported(upstream: Upstream) -> None:
    upstream.status = 503
    upstream.body = json.dumps({"error": {"message": "try later"}}).encode()
    provider = openai_provider.build(settings(openai_base_url=upstream.url, openai_api_key="k", upstream_retries=2))
    with pytest.raises(UpstreamFailure) as failure:
        run(provider)
    assert failure.value.code == "upstream_error"
    assert "answered 503: try later" in failure.value.message
    assert upstream.requests == 3


def test_openai_stream_without_a_finish_is_a_disconnect(upstream: Upstream) -> None:
    upstream.body = sse(chat_chunk("a"))
    provider = openai_provider.build(settings(openai_base_url=upstream.url, openai_api_key="k"))
    with pytest.raises(UpstreamFailure) as failure:
        run(provider)
    assert failure.value.code == "upstream_disconnected"


def test_anthropic_stream_pieces_finish_and_usage(upstream: Upstream) -> None:
    upstream.body = sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 4, "cache_read_input_tokens": 6}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
        names=True,
    )
    provider = anthropic_provider.build(settings(anthropic_base_url=upstream.url, anthropic_api_key="k"))
    assert run(provider) == ["Hi", " there", Finish("stop", {"prompt_tokens": 10, "completion_tokens": 2})]


def test_anthropic_error_event(upstream: Upstream) -> None:
    upstream.body = sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 4}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        names=True,
    )
    provider = anthropic_provider.build(settings(anthropic_base_url=upstream.url, anthropic_api_key="k"))
    with pytest.raises(UpstreamFailure) as failure:
        run(provider)
    assert failure.value.code == "upstream_error"
    assert "Overloaded" in failure.value.message
