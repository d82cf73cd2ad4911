"""Logs and metrics, without processes or Redis."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api import metrics as api_metrics
from api.subscription import Subscription
from shared.events import Event
from shared.observability import ContextFilter, JsonFormatter, TextFormatter, chat_context
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
