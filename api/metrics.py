"""Prometheus metrics of an API process, and ``GET /metrics``.

Per process, not prometheus-client's multiprocess mode: an API process is one
uvicorn process (``python -m api``; run more of them, not ``--workers``), it
keeps its metrics in memory and serves them itself, and Prometheus scrapes
each process as its own target. Nothing is written to files on the hot path.

Hot path: what happens per event and per client is a plain integer increment
(``COUNTS``, ``_RELAYED``; the event loop is single-threaded, so no lock) and,
for one live event in ``LAG_SAMPLE_MASK + 1``, one histogram observation. The
integers become Prometheus counters when scraped (``_CountsCollector``).

Worker metrics: workers have no HTTP server. Each worker pushes its metrics to
Redis every ``TOKENFAN_WORKER_METRICS_INTERVAL_S`` (worker/metrics.py); every
API process serves them too, with a ``worker`` label, along with the queue's
depth. Those "fleet" series are the same from every API process: when
Prometheus scrapes several API processes, scrape one with ``?scope=all`` (the
default) and the others with ``?scope=process``, or aggregate with ``max``.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from shared import keys
from shared.events import Event
from shared.observability import bind_chat, prompts_allowed
from shared.store import queue_depth

log = logging.getLogger("tokenfan.api")

disable_created_metrics()  # no *_created series: they double the output for nothing here

# One live event in 8 (by seq) has its arrival time taken by the hub, and its
# relay lag observed when it has been written to each client.
LAG_SAMPLE_MASK = 7
EVENT_TYPES = ("token", "reset", "done", "error")


class _Counts:
    """Plain integers incremented on the hot path; exposed when scraped."""

    __slots__ = (
        "chats_created",
        "streams_opened",
        "streams_closed",
        "replays_served",
        "events_replayed",
        "slow_client_fallbacks",
    )

    def __init__(self) -> None:
        self.chats_created = 0
        self.streams_opened = 0
        self.streams_closed = 0
        self.replays_served = 0
        self.events_replayed = 0
        self.slow_client_fallbacks = 0


class _LoopHistogram:
    """A histogram for the hot path: a plain list of bucket counts, no lock
    (only the event loop's thread observes); exposed when scraped."""

    __slots__ = ("name", "documentation", "bounds", "counts", "sum")

    def __init__(self, name: str, documentation: str, bounds: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket with value <= bound
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        buckets, cumulative = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


COUNTS = _Counts()
# Event type -> events written to clients (a plain dict: the cheapest increment).
_RELAYED: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
_ERRORS: Counter[str] = Counter()  # error code -> error responses and stream errors sent

TTFT = Histogram(
    "tokenfan_ttft_seconds",
    "Client-side time to first token: from POST /chat to the first token written to a stream that "
    "was opened from the start while the chat was unfinished (the chat's created_at is the clock).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30),
)
RELAY_LAG = _LoopHistogram(
    "tokenfan_relay_lag_seconds",
    "From the hub receiving a live event from Redis to its SSE frame having been written to a "
    f"client (sampled: events whose seq is a multiple of {LAG_SAMPLE_MASK + 1}).",
    (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def _by_label(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted(counts):
        family.add_metric([value], counts[value])
    return family


class _CountsCollector:
    def collect(self) -> Iterator[Metric]:
        c = COUNTS
        yield CounterMetricFamily("tokenfan_chats_created", "Chats accepted by this process.", c.chats_created)
        yield CounterMetricFamily(
            "tokenfan_streams_opened", "SSE streams opened (after the hub join).", c.streams_opened
        )
        yield GaugeMetricFamily("tokenfan_active_streams", "SSE streams open now.", c.streams_opened - c.streams_closed)
        yield CounterMetricFamily(
            "tokenfan_replays_served", "Streams opened with a Last-Event-ID (resumes).", c.replays_served
        )
        yield CounterMetricFamily(
            "tokenfan_events_replayed",
            "Events sent to clients from the log rather than live (late joins, resumes, catch-ups).",
            c.events_replayed,
        )
        yield CounterMetricFamily(
            "tokenfan_slow_client_fallbacks",
            "Client queues that overflowed: the client caught up from the log instead.",
            c.slow_client_fallbacks,
        )
        yield _by_label(
            "tokenfan_events_relayed",
            "Events written to SSE clients, by type. A token event is one batch of tokens: "
            "tokens themselves are counted by the workers (tokenfan_worker_tokens_total).",
            "type",
            _RELAYED,
        )
        yield RELAY_LAG.family()
        yield CounterMetricFamily("tokenfan_resets_relayed", "Reset events written to clients.", _RELAYED["reset"])
        yield _by_label(
            "tokenfan_errors",
            "Errors this process reported to clients, by code: error responses, and stream errors "
            '(log_expired; generation errors are tokenfan_events_relayed{type="error"}).',
            "code",
            _ERRORS,
        )


REGISTRY.register(_CountsCollector())


# --- hooks called by the routes, the relay and the hub ------------------------------


def count_error(code: str) -> None:
    _ERRORS[code] += 1


def chat_submitted(chat_id: str, stored: dict[str, Any]) -> None:
    """A chat was recorded and enqueued. Logs its shape, and its prompt only with debug on."""
    COUNTS.chats_created += 1
    messages = stored.get("messages") or []
    fields: dict[str, Any] = {
        "event": "chat.created",
        "chat_id": chat_id,
        "attempt": 0,
        "t_ms": 0.0,
        "model": stored.get("model"),
        "max_tokens": stored.get("max_tokens"),
        "messages": len(messages),
        "prompt_chars": sum(len(m.get("content", "")) for m in messages) + len(stored.get("system") or ""),
    }
    if prompts_allowed():
        fields["prompt"] = messages
        fields["system"] = stored.get("system")
    log.info("chat queued", extra=fields)


def ttft_origin(meta: dict[str, str], after: int) -> float:
    """The wall-clock start of a chat, for streams that measure time to first token."""
    if after or meta.get("status") in ("done", "error"):
        return 0.0
    return float(meta.get("created_at") or 0.0)


class Stream:
    """One SSE stream of the native API, from the hub join to its end: counts
    it, observes what it sends, binds its chat to the log records of the
    stream's task, and logs one line when it ends."""

    __slots__ = ("chat_id", "after", "started", "ttft_from", "ctx", "terminal", "outcome")

    def __init__(self, chat_id: str, after: int, meta: dict[str, str] | None = None) -> None:
        COUNTS.streams_opened += 1
        if after:
            COUNTS.replays_served += 1
        self.chat_id = chat_id
        self.after = after
        self.started = time.monotonic()
        self.ttft_from = ttft_origin(meta, after) if meta else 0.0
        # The stream's task serves this chat only: its log records carry it.
        self.ctx = bind_chat(chat_id, int(meta["attempt"]) if meta and "attempt" in meta else None)
        self.terminal = ""
        self.outcome = ""

    def sent(self, event: Event) -> None:
        """Per event and client, after its frame was written: keep this cheap."""
        try:
            _RELAYED[event.type] += 1
        except KeyError:  # a type this version does not know
            _RELAYED[event.type] = 1
        if event.received:
            RELAY_LAG.observe(time.monotonic() - event.received)
        if self.ttft_from or event.type != "token":
            self._note(event)

    def _note(self, event: Event) -> None:
        if event.type == "token":
            TTFT.observe(max(time.time() - self.ttft_from, 0.0))
            self.ttft_from = 0.0
        elif event.type == "reset":
            try:
                self.ctx.attempt = int(orjson.loads(event.data)["attempt"])
            except (ValueError, KeyError, TypeError):
                pass
        elif event.terminal:
            self.terminal = event.type

    def closed(self, last_seq: int) -> None:
        COUNTS.streams_closed += 1
        outcome = self.outcome or (f"complete ({self.terminal})" if self.terminal else "disconnected")
        if self.outcome == "log_expired":  # sent to the client as an error event
            count_error(self.outcome)
        log.info(
            "stream ended: %s",
            outcome,
            extra={
                "event": "stream.end",
                "after": self.after,
                "last_seq": last_seq,
                "events": max(last_seq - self.after, 0),
                "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                "outcome": outcome,
            },
        )


# --- GET /metrics --------------------------------------------------------------------

router = APIRouter()


class _Families:
    """What ``generate_latest`` needs: something with ``collect()``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def hub_families(hub: Any) -> list[Metric]:
    return [
        GaugeMetricFamily(
            "tokenfan_hub_subscriptions", "Chats this process's hub is subscribed to.", hub.channel_count
        ),
        GaugeMetricFamily("tokenfan_hub_clients", "Clients registered with this process's hub.", hub.client_count),
        GaugeMetricFamily(
            "tokenfan_hub_connected", "1 while the hub's pub/sub connection is up.", int(hub.connected.is_set())
        ),
        CounterMetricFamily(
            "tokenfan_hub_reconnects", "Reconnections of the hub's pub/sub connection.", hub.reconnects
        ),
    ]


def worker_families(payloads: Iterable[dict[str, Any]]) -> list[Metric]:
    """Merge the metrics pushed by each worker into one family per name, each
    sample labelled with its ``worker``."""
    families: dict[str, Metric] = {}
    for payload in payloads:
        worker = str(payload.get("worker", "?"))
        for fam in payload.get("families", []):
            metric = families.get(fam["name"])
            if metric is None:
                metric = families[fam["name"]] = Metric(fam["name"], fam["help"], fam["type"])
            elif metric.type != fam["type"]:
                continue  # a worker of another version; never emit a family twice
            for name, labels, value in fam["samples"]:
                if value is None:
                    continue
                metric.add_sample(name, {**labels, "worker": worker}, value)
    return list(families.values())


async def fleet_families(redis: Any, queue_name: str) -> list[Metric]:
    """The queue, as Redis holds it, and every live worker's pushed metrics."""
    waiting, running = await queue_depth(redis, queue_name)
    members = await redis.smembers(keys.WORKER_METRICS_SET)
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    raw = await redis.mget([keys.worker_metrics(i) for i in ids]) if ids else []
    gone = [i for i, data in zip(ids, raw, strict=True) if data is None]
    if gone:
        await redis.srem(keys.WORKER_METRICS_SET, *gone)
    payloads = [orjson.loads(data) for data in raw if data is not None]
    return [
        GaugeMetricFamily(
            "tokenfan_queue_depth",
            "Jobs waiting in the queue for a worker (arq queue entries less the running ones).",
            waiting,
        ),
        GaugeMetricFamily("tokenfan_jobs_in_progress", "Chats being generated now (holding a lease).", running),
        GaugeMetricFamily("tokenfan_workers", "Worker processes whose metrics are current.", len(payloads)),
        *worker_families(payloads),
    ]


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    scope: Literal["all", "process", "fleet"] = Query(
        "all", description="process: this API process only; fleet: the queue and the workers only"
    ),
) -> Response:
    services = request.app.state.services
    body = b""
    if scope != "fleet":
        body += generate_latest(REGISTRY) + generate_latest(_Families(hub_families(services.hub)))
    if scope != "process":
        try:
            fleet = await fleet_families(services.redis, services.settings.queue_name)
            up = 1
        except (RedisError, OSError) as exc:
            log.warning("metrics: fleet metrics unavailable: %s", exc)
            fleet, up = [], 0
        fleet.append(GaugeMetricFamily("tokenfan_redis_up", "1 when this scrape could read Redis.", up))
        body += generate_latest(_Families(fleet))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
