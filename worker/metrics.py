"""Metrics and the end-of-chat log line of a worker process.

A worker has no HTTP server, so its metrics reach Prometheus through the API:
every ``TOKENFAN_WORKER_METRICS_INTERVAL_S`` (5 s) the worker SETs a JSON
snapshot of its registry in Redis (``tf:metrics:w:<host>:<pid>``, expiring
after three intervals, listed in the set ``tf:metrics:workers``), and every
API process's ``GET /metrics`` serves all live workers' series with a
``worker="<host>:<pid>"`` label. Nothing to open or publish per worker
(``docker compose up --scale worker=N`` just works), and a worker that dies
drops out of the output when its snapshot expires. The snapshot doubles as
the worker's health signal (``python -m worker.health``).

Per process, not prometheus-client's multiprocess mode: a worker is one
process. Observations happen per attempt or per batch, never per token.

Attempts: ``attempt(chat_id)`` wraps one run of the ``generate`` job. Inside
it every log record carries ``chat_id``, ``attempt`` and ``t_ms``; the hooks
below (called from worker/generation.py) note what happened, and its end logs
one line: ``chat.end`` with the chat's totals when this attempt ended the
chat, ``attempt.end`` when it did not (fenced out, interrupted, not run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from redis.exceptions import RedisError

from shared import keys
from shared.observability import ChatContext, chat_context

log = logging.getLogger("tokenfan.worker")

disable_created_metrics()  # no *_created series
REGISTRY = CollectorRegistry()
ProcessCollector(namespace="tokenfan_worker", registry=REGISTRY)

PROVIDER_TTFT = Histogram(
    "tokenfan_worker_provider_ttft_seconds",
    "Provider-side time to first token: from calling the provider to its first token (when it is flushed).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "tokenfan_worker_attempt_seconds",
    "Duration of an attempt at a chat, from its claim to its end.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "tokenfan_worker_attempts",
    "Attempts at chats, by outcome: stop, length, cancelled (done); error; refused (fenced out by a "
    "newer attempt); skipped (the chat had ended or expired); interrupted (shutdown); failed (a bug).",
    ["outcome"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "tokenfan_worker_tokens",
    "Completion tokens of the chats this worker ended with done (the provider's usage).",
    registry=REGISTRY,
)
ERRORS = Counter("tokenfan_worker_errors", "Chats ended with an error event, by code.", ["code"], registry=REGISTRY)
RESETS = Counter(
    "tokenfan_worker_resets",
    "Answers restarted by a new attempt (reset events), by reason.",
    ["reason"],
    registry=REGISTRY,
)
LEASES_REAPED = Counter(
    "tokenfan_worker_leases_reaped", "Lapsed leases (dead workers) this worker handed on.", registry=REGISTRY
)
JOBS_RUNNING = Gauge("tokenfan_worker_jobs_running", "Chats this worker is generating now.", registry=REGISTRY)


# --- one attempt at one chat ---------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    ctx: ChatContext
    previous_status: str = ""
    provider_started: float = 0.0
    ttft_s: float | None = None
    terminal: tuple[str, dict[str, Any]] | None = None
    last_seq: int = 0


_attempt: ContextVar[Attempt | None] = ContextVar("tokenfan_attempt", default=None)


@contextmanager
def attempt(chat_id: str) -> Iterator[Attempt]:
    """Around one run of the job: binds the chat to log records, and logs and
    counts how the attempt ended."""
    with chat_context(chat_id) as ctx:
        current = Attempt(ctx)
        token = _attempt.set(current)
        outcome = ""
        try:
            yield current
        except asyncio.CancelledError:
            outcome = "interrupted"
            raise
        except BaseException:
            outcome = "failed"
            raise
        finally:
            _attempt.reset(token)
            _ended(current, outcome)


def claimed(number: int, previous_status: str) -> None:
    """The claim's result: attempt ``number`` (0: nothing to run)."""
    current = _attempt.get()
    if current is None:
        return
    current.previous_status = previous_status
    if number:
        current.ctx.attempt = number
        log.info("attempt started (chat was %s)", previous_status, extra={"event": "attempt.start"})


def provider_called() -> None:
    current = _attempt.get()
    if current is not None:
        current.provider_started = time.monotonic()


def first_token() -> None:
    current = _attempt.get()
    if current is not None and current.provider_started:
        current.ttft_s = time.monotonic() - current.provider_started
        PROVIDER_TTFT.observe(current.ttft_s)


def reset(reason: str) -> None:
    RESETS.labels(reason).inc()
    log.warning("answer restarted: %s", reason, extra={"event": "attempt.reset", "reason": reason})


def terminal_appended(terminal: tuple[str, dict[str, Any]], seq: int) -> None:
    current = _attempt.get()
    if current is not None:
        current.terminal = terminal
        current.last_seq = seq
    else:  # outside attempt(): count it anyway
        _count_terminal(*terminal)


def _count_terminal(etype: str, data: dict[str, Any]) -> tuple[str, int | None]:
    if etype == "done":
        outcome = str(data.get("finish_reason", "stop"))
        tokens = (data.get("usage") or {}).get("completion_tokens")
        if isinstance(tokens, int) and tokens > 0:
            TOKENS.inc(tokens)
        return outcome, tokens if isinstance(tokens, int) else None
    ERRORS.labels(str(data.get("code", "error"))).inc()
    return "error", None


def _ended(current: Attempt, outcome: str) -> None:
    ctx = current.ctx
    duration_s = time.monotonic() - ctx.started
    fields: dict[str, Any] = {"duration_ms": round(duration_s * 1000, 1), "previous_status": current.previous_status}
    if current.ttft_s is not None:
        fields["ttft_ms"] = round(current.ttft_s * 1000, 1)
    if current.terminal is not None:
        etype, data = current.terminal
        outcome, tokens = _count_terminal(etype, data)
        usage = data.get("usage") or {}
        fields.update(
            event="chat.end",
            outcome=outcome,
            events=current.last_seq,
            tokens=tokens,
            prompt_tokens=usage.get("prompt_tokens"),
            finish_reason=data.get("finish_reason"),
            error_code=data.get("code"),
            error_message=data.get("message"),
        )
        fields = {k: v for k, v in fields.items() if v is not None}
        summary = f"{outcome}, {tokens} tokens" if etype == "done" else f"error {data.get('code')}"
        log.info("chat ended: %s in %.3f s", summary, duration_s, extra=fields)
    else:
        if not outcome:
            outcome = "refused" if ctx.attempt else "skipped"
        fields.update(event="attempt.end", outcome=outcome)
        log.info("attempt ended without ending the chat: %s", outcome, extra=fields)
    ATTEMPTS.labels(outcome).inc()
    if ctx.attempt:
        ATTEMPT_SECONDS.observe(duration_s)


# --- handing the metrics to the API ----------------------------------------------------


def snapshot(worker_id: str) -> bytes:
    families = []
    for metric in REGISTRY.collect():
        samples = [[s.name, s.labels, s.value] for s in metric.samples]
        families.append({"name": metric.name, "type": metric.type, "help": metric.documentation, "samples": samples})
    return orjson.dumps({"worker": worker_id, "ts": time.time(), "families": families})


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Pusher:
    """Pushes this worker's metrics to Redis every ``interval_s``."""

    def __init__(self, redis: Any, running: dict[str, Any], interval_s: float, wid: str | None = None) -> None:
        self.redis = redis
        self.running = running  # the generator's running chats
        self.interval_s = interval_s
        self.ttl_ms = int(max(3 * interval_s, 5.0) * 1000)
        self.id = wid or worker_id()
        self._task: asyncio.Task | None = None

    async def push(self) -> None:
        JOBS_RUNNING.set(len(self.running))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.worker_metrics(self.id), snapshot(self.id), px=self.ttl_ms)
            pipe.sadd(keys.WORKER_METRICS_SET, self.id)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            try:
                await self.push()
            except (RedisError, OSError) as exc:
                log.warning("metrics push failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    def start(self) -> Pusher:
        self._task = asyncio.create_task(self._run(), name="tokenfan-worker-metrics")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        # Leave the output now rather than when the snapshot expires.
        with suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2):
                await self.redis.delete(keys.worker_metrics(self.id))
                await self.redis.srem(keys.WORKER_METRICS_SET, self.id)
