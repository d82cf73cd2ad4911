"""The encodings of the AI SDK's UI message stream (api/ui_stream.py) and of
the Responses API's events (api/responses.py), event by event: what the
relay writes for each kind of event and failure."""

from __future__ import annotations

import json

from api.response_object import ResponseShape
from api.responses import PREAMBLE, ResponseEvents, last_number
from api.ui_stream import UIMessageEncoding
from shared.events import Event

CHAT = "0123456789abcdef0123456789abcdef"
META = {"created_at": "1700000000.5", "model": "simulated", "request": '{"responses": {"max_output_tokens": 9}}'}


def ev(seq: int, etype: str, **data) -> Event:
    return Event(seq, etype, json.dumps(data).encode())


def chunks(raw: bytes) -> list:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_ui_stream_text_then_finish():
    enc = UIMessageEncoding(CHAT)
    assert chunks(enc.start()) == [{"type": "start", "messageId": f"msg-{CHAT}"}]
    out = chunks(enc.events([ev(1, "token", text="Hi"), ev(2, "token", text=""), ev(3, "token", text=" you")]))
    assert out == [
        {"type": "text-start", "id": "text"},
        {"type": "text-delta", "id": "text", "delta": "Hi"},
        {"type": "text-delta", "id": "text", "delta": " you"},
    ]
    done = ev(4, "done", finish_reason="length", usage={})
    assert chunks(enc.events([done])) == [{"type": "text-end", "id": "text"}, {"type": "finish"}, "[DONE]"]
    assert enc.ended and enc.failure("unavailable", "x") == b""


def test_ui_stream_cancel_without_text_is_an_abort():
    enc = UIMessageEncoding(CHAT)
    assert chunks(enc.events([ev(1, "done", finish_reason="cancelled")])) == [{"type": "abort"}, "[DONE]"]


def test_ui_stream_a_reset_ends_the_stream_with_an_error():
    enc = UIMessageEncoding(CHAT)
    out = chunks(enc.events([ev(1, "token", text="a"), ev(2, "reset", attempt=2), ev(3, "token", text="b")]))
    assert [c if c == "[DONE]" else c["type"] for c in out] == ["text-start", "text-delta", "error", "[DONE]"]
    assert "restarts" in out[2]["errorText"] and set(out[2]) == {"type", "errorText"}
    assert enc.ended


def test_ui_stream_errors_and_failures():
    enc = UIMessageEncoding(CHAT)
    out = chunks(enc.events([ev(1, "error", code="upstream_error", message="boom")]))
    assert out == [{"type": "error", "errorText": "boom (upstream_error)"}, "[DONE]"]
    enc = UIMessageEncoding(CHAT)
    out = chunks(enc.failure("unavailable", "Redis is unavailable"))
    assert "resume" in out[0]["errorText"] and out[1] == "[DONE]"


def sse(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            event, data = block.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            assert event == f"event: {payload['type']}"
            out.append(payload)
    return out


def test_responses_numbering_is_a_function_of_the_log():
    shape = ResponseShape(CHAT, META)
    enc = ResponseEvents(shape, -1)
    pre = sse(enc.preamble())
    assert [(e["sequence_number"], e["type"]) for e in pre] == [
        (0, "response.created"),
        (1, "response.in_progress"),
        (2, "response.output_item.added"),
        (3, "response.content_part.added"),
    ]
    assert pre[0]["response"]["created_at"] == 1700000000 and pre[0]["response"]["max_output_tokens"] == 9
    body = sse(enc.events([ev(1, "token", text="a"), ev(2, "reset", attempt=2, reason="x"), ev(3, "token", text="b")]))
    assert [e["sequence_number"] for e in body] == [PREAMBLE, PREAMBLE + 1, PREAMBLE + 2]
    assert body[1]["tokenfan_reset"] == {"attempt": 2, "reason": "x"} and body[1]["delta"] == ""
    end = sse(enc.events([ev(4, "done", finish_reason="stop", usage={"prompt_tokens": 2, "completion_tokens": 1})]))
    assert [e["sequence_number"] for e in end] == [7, 8, 9, 10]
    assert end[0]["text"] == "b" and end[-1]["response"]["output"][0]["content"][0]["text"] == "b"
    assert end[-1]["response"]["usage"]["total_tokens"] == 3
    assert last_number({"status": "done", "last_seq": "4"}) == 10
    assert last_number({"status": "error", "last_seq": "4"}) == 7
    assert last_number({"status": "running", "last_seq": "4"}) == 7


def test_responses_resume_inside_the_terminal_group():
    enc = ResponseEvents(ResponseShape(CHAT, META), 8, text="abc")
    assert enc.preamble() == b""
    end = sse(enc.events([ev(4, "done", finish_reason="cancelled", usage={})]))
    assert [(e["sequence_number"], e["type"]) for e in end] == [
        (9, "response.output_item.done"),
        (10, "response.incomplete"),
    ]
    assert end[-1]["response"]["status"] == "cancelled" and end[0]["item"]["content"][0]["text"] == "abc"


def test_responses_failure_repeats_the_last_number():
    enc = ResponseEvents(ResponseShape(CHAT, META), -1)
    enc.preamble()
    enc.events([ev(1, "token", text="a")])
    [failure] = sse(enc.failure("unavailable", "Redis is unavailable"))
    assert failure["type"] == "error" and failure["sequence_number"] == PREAMBLE
    assert failure["error"]["code"] == "unavailable" and failure["code"] == "unavailable"
    assert "starting_after" in failure["message"]
