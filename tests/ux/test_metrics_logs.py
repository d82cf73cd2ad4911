"""``GET /metrics`` (the API's own series, and the workers' pushed through
Redis) and the structured logs, from real API and worker processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from harness import (
    assert_complete_sequence,
    create_chat,
    get_chat,
    prompt_with_length,
    read_stream,
    wait_chat_status,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from .uxkit import cli_env

pytestmark = pytest.mark.e2e

WORKERS = 2


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        "metrics",
        workers=WORKERS,
        env={
            "TOKENFAN_SIM_TOKENS_PER_S": "150",
            "TOKENFAN_WORKER_METRICS_INTERVAL_S": "0.2",
            "TOKENFAN_WORKER_MAX_JOBS": "1",  # so that a third chat has to wait in the queue
        },
    )


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list:
        out = []
        for family in self.families.values():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out.append(s)
        return out

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` matching ``labels`` (0 when none)."""
        return sum(s.value for s in self.samples(name, **labels))


def scrape(client, api, scope: str = "all") -> Scrape:
    r = client.get(f"{api.url}/metrics", params={"scope": scope})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    # Valid exposition: each family is declared once.
    types = re.findall(r"^# TYPE (\S+) ", r.text, re.M)
    assert len(types) == len(set(types)), [t for t, n in Counter(types).items() if n > 1]
    return Scrape(r.text)


def test_a_chat_in_the_metrics(cluster, client):
    api = cluster.api
    before = scrape(client, api)
    prompt = prompt_with_length(100, 200, "metrics")
    chat_id = create_chat(client, api.url, prompt)
    full = read_stream(client, api.url, chat_id)
    assert_complete_sequence(full.events)
    n = len(full.events)
    resumed = read_stream(client, api.url, chat_id, last_event_id=3)
    assert len(resumed.events) == n - 3
    assert client.get(f"{api.url}/chat/{'0' * 32}").status_code == 404
    usage = json.loads(full.events[-1][2])["usage"]

    def settled() -> Scrape | None:
        s = scrape(client, api)
        worker_done = s.value("tokenfan_worker_attempts_total", outcome="stop") - before.value(
            "tokenfan_worker_attempts_total", outcome="stop"
        )
        return s if worker_done == 1 and s.value("tokenfan_active_streams") == 0 else None

    after = wait_until(settled, 10, 0.1, "the worker's push and the streams' ends")

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # The API process.
    assert delta("tokenfan_chats_created_total") == 1
    assert delta("tokenfan_streams_opened_total") == 2
    assert delta("tokenfan_events_relayed_total") == n + (n - 3)
    assert delta("tokenfan_events_relayed_total", type="token") == (n - 1) + (n - 4)
    assert delta("tokenfan_events_relayed_total", type="done") == 2
    assert delta("tokenfan_replays_served_total") == 1
    assert delta("tokenfan_events_replayed_total") >= n - 3
    assert delta("tokenfan_errors_total", code="not_found") == 1
    assert delta("tokenfan_ttft_seconds_count") == 1
    assert 0 < delta("tokenfan_ttft_seconds_sum") < 5
    assert delta("tokenfan_relay_lag_seconds_count") >= 1  # one live event in 8 is timed
    assert after.value("tokenfan_hub_subscriptions") == 0
    assert after.value("tokenfan_hub_clients") == 0
    assert after.value("tokenfan_hub_connected") == 1
    assert after.value("process_resident_memory_bytes") > 0

    # The workers, through Redis, one series per worker.
    assert after.value("tokenfan_workers") == WORKERS
    assert after.value("tokenfan_redis_up") == 1
    workers = {s.labels["worker"] for s in after.samples("tokenfan_worker_jobs_running")}
    assert len(workers) == WORKERS, workers
    assert len({s.labels["worker"] for s in after.samples("tokenfan_worker_process_resident_memory_bytes")}) == WORKERS
    assert delta("tokenfan_worker_tokens_total") == usage["completion_tokens"]
    assert delta("tokenfan_worker_provider_ttft_seconds_count") == 1
    assert delta("tokenfan_worker_attempt_seconds_count") == 1
    assert not after.samples("tokenfan_worker_tokens_created"), "no *_created series"

    # Scopes: this process only, or the fleet only.
    process = scrape(client, api, "process")
    assert "tokenfan_events_relayed" in process.families and "tokenfan_queue_depth" not in process.families
    assert not any(name.startswith("tokenfan_worker_") for name in process.families)
    fleet = scrape(client, api, "fleet")
    assert "tokenfan_queue_depth" in fleet.families and "tokenfan_worker_tokens" in fleet.families
    assert "tokenfan_events_relayed" not in fleet.families


def test_queue_depth_and_jobs_in_progress(cluster, client):
    """Two workers of one job each, three long chats: two run, one waits."""
    api = cluster.api
    ids = [create_chat(client, api.url, prompt_with_length(350, 419, f"queue-{i}")) for i in range(3)]

    def busy() -> Scrape | None:
        s = scrape(client, api)
        return s if s.value("tokenfan_worker_jobs_running") == 2 else None

    s = wait_until(busy, 10, 0.05, "both workers busy")
    assert s.value("tokenfan_jobs_in_progress") == 2
    assert s.value("tokenfan_queue_depth") == 1
    for chat_id in ids:
        wait_chat_status(client, api.url, chat_id, ["done"], timeout=30)
    s = wait_until(lambda: (x := scrape(client, api)).value("tokenfan_worker_jobs_running") == 0 and x, 5, 0.05)
    assert s.value("tokenfan_jobs_in_progress") == 0 and s.value("tokenfan_queue_depth") == 0


def json_lines(proc) -> list[dict]:
    lines = []
    for raw in proc.log_text().splitlines():
        line = json.loads(raw)  # every line, uvicorn's and arq's too
        assert {"ts", "level", "logger", "msg", "process", "pid"} <= line.keys(), line
        lines.append(line)
    return lines


def test_logs_are_json_with_the_chat_on_every_line_and_one_summary(cluster, client):
    api = cluster.api
    secret = f"do not log me {uuid.uuid4().hex}"
    chat_id = create_chat(client, api.url, secret, max_tokens=30)
    read_stream(client, api.url, chat_id)
    state = get_chat(client, api.url, chat_id)

    def summaries() -> list[dict]:
        return [
            line
            for proc in cluster.workers
            for line in json_lines(proc)
            if line.get("event") == "chat.end" and line.get("chat_id") == chat_id
        ]

    (summary,) = wait_until(summaries, 10, 0.05, "the chat's summary line")
    assert summary["level"] == "info" and summary["process"] == "worker"
    assert summary["attempt"] == 1 and summary["outcome"] == "length"
    assert summary["tokens"] == state["usage"]["completion_tokens"] == 30
    assert summary["events"] == state["last_seq"]
    assert summary["ttft_ms"] > 0 and summary["duration_ms"] >= summary["ttft_ms"]
    assert "t_ms" in summary

    api_lines = wait_until(
        lambda: (
            [x for x in json_lines(api) if x.get("chat_id") == chat_id and x.get("event") == "stream.end"]
            and [x for x in json_lines(api) if x.get("chat_id") == chat_id]
        ),
        5,
        message="the API's stream.end line",
    )
    created = [x for x in api_lines if x.get("event") == "chat.created"]
    assert created and created[0]["prompt_chars"] == len(secret) and "prompt" not in created[0]
    (ended,) = [x for x in api_lines if x.get("event") == "stream.end"]
    assert ended["events"] == state["last_seq"] and ended["outcome"] == "complete (done)"

    # Every line about the chat carries its id, attempt and timing...
    for proc in [*cluster.workers, api]:
        for line in json_lines(proc):
            if line.get("chat_id") == chat_id and line["logger"].startswith("tokenfan"):
                assert "attempt" in line and "t_ms" in line, line
    # ... and arq's job lines carry the id too; the prompt is nowhere.
    worker_lines = [x for proc in cluster.workers for x in json_lines(proc)]
    assert any(x["logger"] == "arq.worker" and x.get("chat_id") == chat_id for x in worker_lines)
    for proc in [*cluster.workers, api]:
        assert secret not in proc.log_text()


def test_worker_health_check_sees_the_live_workers(cluster, redis_server):
    """docker compose's worker health check, against the real workers' pushes."""

    def check(redis_url: str) -> subprocess.CompletedProcess[str]:
        env = {**cli_env(), "TOKENFAN_REDIS_URL": redis_url}
        return subprocess.run(
            [sys.executable, "-m", "worker.health"], env=env, capture_output=True, text=True, timeout=30
        )

    alive = check(cluster.redis_url)
    assert alive.returncode == 0, alive.stderr
    empty_db = f"redis://127.0.0.1:{redis_server.port}/0"  # no worker pushes there
    dead = check(empty_db)
    assert dead.returncode == 1 and "no worker" in dead.stderr
