"""The CLI's stream logic (``tokenfan chat``): resume, refusals, the raw
view across a reset; over a mock transport, without processes or Redis."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from tokenfan.chat_stream import ChatFailed, StreamReader
from tokenfan.chat_stream import Event as CliEvent
from tokenfan.cli import RawView

CHAT = "c" * 32


def sse(*events: tuple[int | None, str, dict], retry: int | None = 50) -> bytes:
    out = b"retry: %d\n" % retry if retry else b""  # part of the first event, as the API sends it
    for seq, etype, data in events:
        out += (
            b"id: %d\n" % seq if seq is not None else b""
        ) + f"event: {etype}\ndata: {json.dumps(data)}\n\n".encode()
    return out


def reader_over(responses: list, **kwargs) -> tuple[StreamReader, list[dict]]:
    """A StreamReader whose HTTP answers are ``responses``, in turn."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"last_event_id": request.headers.get("last-event-id"), "params": dict(request.url.params)})
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        ctype = "text/event-stream" if status == 200 else "application/json"
        return httpx.Response(status, content=body, headers={"content-type": ctype})

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://tf")
    return StreamReader(client, CHAT, token="tok", sleep=lambda s: None, **kwargs), seen


def test_reader_resumes_after_drops_and_unavailability():
    statuses: list[tuple[str, int]] = []
    reader, seen = reader_over(
        [
            (200, sse((1, "token", {"text": "a"}), (2, "token", {"text": "b"}))),  # closed without done
            httpx.ConnectError("refused"),
            (503, b'{"error": {"code": "unavailable", "message": "Redis"}}'),
            (
                200,
                sse((2, "token", {"text": "b"}), (3, "token", {"text": "c"}), (4, "done", {"finish_reason": "stop"})),
            ),
        ],
        on_status=lambda kind, **d: statuses.append((kind, d["last_id"])),
    )
    events = list(reader.events())
    assert [(e.id, e.type) for e in events] == [(1, "token"), (2, "token"), (3, "token"), (4, "done")]
    assert [s["last_event_id"] for s in seen] == [None, "2", "2", "2"]
    assert all(s["params"] == {"token": "tok"} for s in seen)
    assert statuses[-1] == ("resumed", 2) and ("reconnecting", 2) in statuses
    assert reader.retry_s == 0.05


def test_reader_gives_up_on_refusals_and_passes_idless_errors():
    reader, _ = reader_over([(404, b'{"error": {"code": "not_found", "message": "no such chat"}}')])
    with pytest.raises(ChatFailed) as failed:
        list(reader.events())
    assert failed.value.code == "not_found" and failed.value.exit_code == 3

    reader, _ = reader_over([(200, sse((5, "token", {"text": "x"}), (None, "error", {"code": "log_expired"})))])
    events = list(reader.events())
    assert events[-1].type == "error" and events[-1].data["code"] == "log_expired"


def test_reader_stops_on_204_when_it_holds_the_terminal_event_already():
    reader, seen = reader_over([(204, b"")], after=7)
    assert list(reader.events()) == []
    assert seen == [{"last_event_id": "7", "params": {"token": "tok"}}]


def test_reader_gives_up_after_the_reconnect_timeout():
    reader, _ = reader_over([httpx.ConnectError("refused")] * 100, reconnect_timeout=0.0)
    with pytest.raises(ChatFailed) as failed:
        list(reader.events())
    assert failed.value.code == "unreachable"


def raw_output(events: list[CliEvent]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    view = RawView(out, err)
    for event in events:
        view.event(event)
    view.finish()
    return out.getvalue(), err.getvalue()


def tok(seq: int, text: str) -> CliEvent:
    return CliEvent(seq, "token", {"text": text})


DONE = {"finish_reason": "stop", "usage": {"completion_tokens": 3}}


def test_raw_output_after_a_reset_that_repeats_the_answer():
    out, err = raw_output(
        [
            tok(1, "Hello"),
            tok(2, " wor"),
            CliEvent(3, "reset", {"attempt": 2, "reason": "worker_lost"}),
            tok(4, "Hello wo"),
            tok(5, "rld"),
            CliEvent(6, "done", DONE),
        ]
    )
    assert out == "Hello world\n" and err == ""


def test_raw_output_after_a_reset_that_says_something_else():
    out, err = raw_output(
        [
            tok(1, "Hello"),
            CliEvent(2, "reset", {"attempt": 2, "reason": "retry"}),
            tok(3, "Bye"),
            CliEvent(4, "done", DONE),
        ]
    )
    assert out == "Hello\nBye\n" and "restarted" in err
