"""Logs, metrics and the CLI's stream logic, without processes or Redis."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api import metrics as api_metrics
from api.hub import Subscription
from shared.events import Event
from shared.observability import ContextFilter, JsonFormatter, TextFormatter, chat_context
from tokenfan.cli import ChatFailed, RawView, StreamReader
from tokenfan.cli import Event as CliEvent
from worker import metrics as worker_metrics

CHAT = "c" * 32


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The ``tokenfan`` loggers, written as JSON to a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tokenfan")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_the_chat_of_the_context(captured):
    logger, buffer = captured
    log = logging.getLogger("tokenfan.test")
    log.info("outside")
    with chat_context(CHAT, attempt=2):
        log.warning("inside %d", 7, extra={"tokens": 3})
    log.info("after")
    outside, inside, after = lines(buffer)
    assert "chat_id" not in outside and "chat_id" not in after
    assert inside["msg"] == "inside 7" and inside["level"] == "warning" and inside["logger"] == "tokenfan.test"
    assert inside["chat_id"] == CHAT and inside["attempt"] == 2 and inside["tokens"] == 3
    assert isinstance(inside["t_ms"], float) and inside["t_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", inside["ts"])
    assert inside["process"] == "test" and isinstance(inside["pid"], int)


def test_arq_job_lines_name_the_chat():
    record = logging.LogRecord("arq.worker", logging.INFO, "", 0, "  0.37s → %s:generate('%s')", (CHAT, CHAT), None)
    ContextFilter().filter(record)
    assert record.chat_id == CHAT


def test_text_format_for_terminals():
    record = logging.LogRecord("tokenfan.worker", logging.INFO, "", 0, "chat ended", None, None)
    record.chat_id, record.attempt, record.t_ms, record.tokens = CHAT, 1, 12.3, 5
    text = TextFormatter().format(record)
    assert re.search(r"INFO  tokenfan.worker \[cccccccc #1 \+12ms\] chat ended tokens=5$", text), text


def test_prompt_text_only_with_debug_on(captured):
    logger, buffer = captured
    stored = {"messages": [{"role": "user", "content": "my secret prompt"}], "model": "m", "max_tokens": 9}
    api_metrics.chat_submitted(CHAT, stored)
    logger.setLevel(logging.DEBUG)
    api_metrics.chat_submitted(CHAT, stored)
    quiet, debug = lines(buffer)
    assert quiet["event"] == "chat.created" and quiet["prompt_chars"] == len("my secret prompt")
    assert "my secret prompt" not in json.dumps(quiet)
    assert debug["prompt"] == stored["messages"]


def test_worker_summary_line_and_counts(captured):
    _, buffer = captured
    stop_before = worker_metrics.ATTEMPTS.labels("stop")._value.get()
    tokens_before = worker_metrics.TOKENS._value.get()
    with worker_metrics.attempt(CHAT):
        worker_metrics.claimed(1, "queued")
        worker_metrics.provider_called()
        worker_metrics.first_token()
        usage = {"prompt_tokens": 4, "completion_tokens": 21}
        worker_metrics.terminal_appended(("done", {"finish_reason": "stop", "usage": usage}), 9)
    with worker_metrics.attempt(CHAT):
        worker_metrics.claimed(0, "done")
    start, end, skipped = lines(buffer)
    assert start["event"] == "attempt.start" and start["attempt"] == 1
    assert end["event"] == "chat.end" and end["chat_id"] == CHAT and end["attempt"] == 1
    assert (end["outcome"], end["tokens"], end["prompt_tokens"], end["events"]) == ("stop", 21, 4, 9)
    assert end["ttft_ms"] >= 0 and end["duration_ms"] >= end["ttft_ms"]
    assert skipped["event"] == "attempt.end" and skipped["outcome"] == "skipped" and "attempt" not in skipped
    assert worker_metrics.ATTEMPTS.labels("stop")._value.get() == stop_before + 1
    assert worker_metrics.TOKENS._value.get() == tokens_before + 21


def test_worker_snapshots_merge_into_one_family_each():
    payloads = [json.loads(worker_metrics.snapshot(wid)) for wid in ("host-a:1", "host-b:2")]
    text = generate_latest(api_metrics._Families(api_metrics.worker_families(payloads))).decode()
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types)) and "tokenfan_worker_tokens_total" in types
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tokens = families["tokenfan_worker_tokens"].samples
    assert sorted(s.labels["worker"] for s in tokens) == ["host-a:1", "host-b:2"]
    buckets = [s for s in families["tokenfan_worker_provider_ttft_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in buckets} >= {"0.05", "+Inf"}


def test_slow_client_fallback_is_counted():
    sub = Subscription(hub=None, chat_id=CHAT, after=0, queue_size=2)  # type: ignore[arg-type]
    before = api_metrics.COUNTS.slow_client_fallbacks
    for seq in (1, 2, 3):
        sub._push(Event(seq, "token", b'{"text":"x"}'))
    assert api_metrics.COUNTS.slow_client_fallbacks == before + 1


# --- the CLI's stream logic ------------------------------------------------------------


def sse(*events: tuple[int | None, str, dict], retry: int | None = 50) -> bytes:
    out = b"retry: %d\n\n" % retry if retry else b""
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


def test_loop_histogram_buckets_are_cumulative_and_inclusive():
    histogram = api_metrics._LoopHistogram("tf_test_seconds", "test", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    (family,) = text_string_to_metric_families(generate_latest(api_metrics._Families([histogram.family()])).decode())
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("tf_test_seconds_bucket", "0.1")] == 2  # le: a value equal to the bound is in its bucket
    assert values[("tf_test_seconds_bucket", "1.0")] == 4
    assert values[("tf_test_seconds_bucket", "+Inf")] == values[("tf_test_seconds_count", None)] == 5
    assert values[("tf_test_seconds_sum", None)] == pytest.approx(8.65)
