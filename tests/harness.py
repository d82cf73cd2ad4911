"""Helpers for end-to-end tests: real API (uvicorn) and worker (arq) processes
started as subprocesses, waiting on conditions with deadlines, and reading SSE
streams.

Every process is started with its own environment (no ``TOKENFAN_*`` variable
leaks in from the caller, and no ``.env`` file is read: the working directory
is the artifacts folder), its output goes to a log file under
``tests/artifacts/e2e/run-*/``, and it is stopped by PID: SIGTERM, then SIGKILL after
a grace period.

A ``Cluster`` groups the processes of one test (or one module): its own Redis
database number and its own arq queue name, so that its workers never take
another cluster's jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

import httpx
import redis
from httpx_sse import aconnect_sse, connect_sse

from bench.processes import STOP_GRACE_S, Child, async_wait_until, stop_all, wait_until  # noqa: F401 - re-exported
from bench.sampler import Sampler  # noqa: F401 - re-exported for tests and scenarios
from tokenfan.embedded_redis import free_port

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "e2e"
HOST = "127.0.0.1"

START_TIMEOUT_S = 20.0

# Fast simulated LLM and quick recovery, unless a test says otherwise.
FAST_ENV: dict[str, str] = {
    "TOKENFAN_SIM_TTFT_MS": "5",
    "TOKENFAN_SIM_TOKENS_PER_S": "300",
    "TOKENFAN_POLL_DELAY_S": "0.1",
    "TOKENFAN_LEASE_S": "2",
    "TOKENFAN_REAPER_INTERVAL_S": "0.5",
    "TOKENFAN_WORKER_HEALTH_CHECK_S": "5",
}

# The product's own lease settings (shared/settings.py), which FAST_ENV
# shortens: for the tests that measure what a deployment gets.
DEFAULT_LEASE_S, DEFAULT_REAPER_S = 6.0, 1.0


def lease_env(lease_s: float, reaper_interval_s: float) -> dict[str, str]:
    """How long a worker's lease on a chat lasts and how often workers look
    for lapsed ones: together, how long a dead worker's chat waits."""
    return {"TOKENFAN_LEASE_S": str(lease_s), "TOKENFAN_REAPER_INTERVAL_S": str(reaper_interval_s)}


def stub_provider_env(spec: str, folder: str) -> dict[str, str]:
    """Workers that use one of the tests' own providers, ``spec``
    (``module:function``) from tests/``folder``, which goes on their
    PYTHONPATH beside the repository. (Not ``test*``: pytest would collect it.)"""
    return {"TOKENFAN_PROVIDER": spec, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / folder)])}


# --- processes -------------------------------------------------------------

_log_counter = itertools.count(1)
_run_dir: Path | None = None
KEEP_RUNS_S = 24 * 3600


def artifacts_dir() -> Path:
    """This test session's folder of process logs,
    ``tests/artifacts/e2e/run-<time>-<pid>/`` (``latest`` points to it).
    Sessions may run at the same time: each has its own folder, and only
    folders older than a day are removed."""
    global _run_dir
    if _run_dir is None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in [*ARTIFACTS.glob("run-*"), *ARTIFACTS.glob("*.log")]:
            try:
                if now - old.stat().st_mtime > KEEP_RUNS_S:
                    if old.is_dir():
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        old.unlink()
            except OSError:
                pass
        run = ARTIFACTS / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        run.mkdir()
        link = ARTIFACTS / f".latest-{os.getpid()}"
        try:
            link.unlink(missing_ok=True)
            link.symlink_to(run.name)
            os.replace(link, ARTIFACTS / "latest")
        except OSError:
            pass
        _run_dir = run
    return _run_dir


def process_env(redis_url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFAN_")}
    paths = [str(REPO)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])
    base.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", TOKENFAN_REDIS_URL=redis_url)
    base.update(env or {})
    return base


class Process(Child):
    """One tokenfan process (``python -m <module>``), its output in this
    session's artifacts folder, no ``.env`` read (it runs there)."""

    def __init__(self, kind: str, module: str, env: dict[str, str], label: str = "") -> None:
        self.kind = kind
        label = label or kind
        directory = artifacts_dir()
        log_path = directory / f"{next(_log_counter):03d}-{label}.log"
        super().__init__(label, [sys.executable, "-m", module], env, log_path, cwd=directory)


class ApiProcess(Process):
    def __init__(self, env: dict[str, str], label: str = "api") -> None:
        self.port = int(env["TOKENFAN_PORT"])
        self.url = f"http://{HOST}:{self.port}"
        super().__init__("api", "api", env, label)

    def wait_ready(self, timeout: float = START_TIMEOUT_S, require_redis: bool = True) -> None:
        """/healthz answers; with ``require_redis``, /readyz too, hub connected."""

        def ready() -> bool:
            self.check_alive()
            with httpx.Client(timeout=2.0) as client:
                if client.get(f"{self.url}/healthz").status_code != 200:
                    return False
                if not require_redis:
                    return True
                r = client.get(f"{self.url}/readyz")
                return r.status_code == 200 and r.json().get("hub_connected") is True

        wait_until(ready, timeout, 0.05, f"{self} to be ready", ignore=(httpx.TransportError,))

    def redis_clients(self, r: redis.Redis) -> list[dict[str, Any]]:
        """The Redis connections this API process holds (named tokenfan-api-<pid>*)."""
        name = f"tokenfan-api-{self.pid}"
        return [c for c in r.client_list() if c.get("name") in (name, f"{name}-hub")]


class WorkerProcess(Process):
    def __init__(self, env: dict[str, str], label: str = "worker") -> None:
        super().__init__("worker", "worker", env, label)

    def subscribed(self, r: redis.Redis) -> bool:
        """Whether this process's own pub/sub connection (the workers' channel)
        is up: a Redis client with a subscription whose address is one of
        this process's sockets."""
        ports = self.local_ports()
        for c in r.client_list():
            if int(c.get("sub", 0)) > 0 and int(c["addr"].rsplit(":", 1)[1]) in ports:
                return True
        return False

    def wait_ready(self, r: redis.Redis, timeout: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            self.check_alive()
            return self.subscribed(r)

        wait_until(ready, timeout, 0.05, f"{self} to subscribe to tf:workers")

    def ran_job(self, job_id: str) -> bool:
        """arq logs ``→ <job_id>:generate(...)`` when it starts a job."""
        return f"→ {job_id}:generate" in self.log_text()


def start_api(
    redis_url: str,
    env: Mapping[str, str] | None = None,
    *,
    label: str = "api",
    wait: bool = True,
    require_redis: bool = True,
) -> ApiProcess:
    port = free_port()
    full = process_env(redis_url, {"TOKENFAN_HOST": HOST, "TOKENFAN_PORT": str(port), **(env or {})})
    proc = ApiProcess(full, label)
    if wait:
        try:
            proc.wait_ready(require_redis=require_redis)
        except BaseException:
            proc.stop()
            raise
    return proc


def start_worker(
    redis_url: str,
    env: Mapping[str, str] | None = None,
    *,
    label: str = "worker",
    wait: bool = True,
) -> WorkerProcess:
    proc = WorkerProcess(process_env(redis_url, env), label)
    if wait:
        r = redis.Redis.from_url(redis_url)
        try:
            proc.wait_ready(r)
        except BaseException:
            proc.stop()
            raise
        finally:
            r.close()
    return proc


# --- clusters --------------------------------------------------------------

P = TypeVar("P", ApiProcess, WorkerProcess)

_db_numbers = itertools.cycle(range(1, 16))  # db 0 is left to other tests


class Cluster:
    """API and worker processes sharing a Redis database and an arq queue
    that no other cluster uses."""

    def __init__(self, redis_server: Any, name: str, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.db = next(_db_numbers)
        self.redis_url = f"redis://{HOST}:{redis_server.port}/{self.db}"
        self.env = {
            **FAST_ENV,
            "TOKENFAN_QUEUE_NAME": f"tf-e2e:{name}:{uuid.uuid4().hex[:8]}",
            **(env or {}),
        }
        self.apis: list[ApiProcess] = []
        self.workers: list[WorkerProcess] = []
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.redis.flushdb()

    def __repr__(self) -> str:
        return f"<Cluster {self.name} db={self.db} apis={self.apis} workers={self.workers}>"

    @property
    def api(self) -> ApiProcess:
        return self.apis[0]

    @property
    def processes(self) -> list[Process]:
        return [*self.apis, *self.workers]

    def start(
        self,
        apis: int = 1,
        workers: int = 1,
        api_env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> Cluster:
        """Start processes in parallel, then wait until each is ready."""
        new_apis = [self.add_api(api_env, wait=False) for _ in range(apis)]
        new_workers = [self.add_worker(worker_env, wait=False) for _ in range(workers)]
        for a in new_apis:
            a.wait_ready()
        for w in new_workers:
            w.wait_ready(self.redis)
        return self

    def add_api(self, env: Mapping[str, str] | None = None, wait: bool = True) -> ApiProcess:
        proc = self._add(start_api, self.apis, "api", env)
        if wait:
            proc.wait_ready()
        return proc

    def add_worker(self, env: Mapping[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        proc = self._add(start_worker, self.workers, "worker", env)
        if wait:
            proc.wait_ready(self.redis)
        return proc

    def _add(self, start: Callable[..., P], group: list[P], kind: str, env: Mapping[str, str] | None) -> P:
        """Start one more process of ``kind`` without waiting for it: the
        cluster's env with ``env`` over it, a label numbered within its group."""
        label = f"{self.name}-{kind}{len(group) + 1}"
        proc = start(self.redis_url, {**self.env, **(env or {})}, label=label, wait=False)
        group.append(proc)
        return proc

    def worker_running(self, chat_id: str, timeout: float = 10.0) -> WorkerProcess:
        """The (first) worker that started the chat's job."""
        running = wait_until(
            lambda: [w for w in self.workers if w.alive() and w.ran_job(chat_id)],
            timeout,
            message=f"a worker running chat {chat_id}",
        )
        assert len(running) == 1, running
        return running[0]

    def close(self) -> None:
        try:
            stop_all(self.processes)
            for p in self.processes:
                if p.killed_hard:
                    record(f"warning: {p} ignored SIGTERM for {STOP_GRACE_S:g} s and was SIGKILLed")
        finally:
            try:
                self.redis.flushdb()
            except redis.RedisError:
                pass
            self.redis.close()


class ClusterFactory:
    """Makes clusters and closes them all at the end (a fixture's teardown)."""

    active: list[Cluster] = []  # every open cluster, for failure reports

    def __init__(self, redis_server: Any, prefix: str) -> None:
        self.redis_server = redis_server
        self.prefix = prefix
        self.clusters: list[Cluster] = []

    def __call__(
        self,
        name: str = "",
        *,
        apis: int = 1,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        api_env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> Cluster:
        cluster = Cluster(self.redis_server, f"{self.prefix}{('-' + name) if name else ''}", env)
        self.clusters.append(cluster)
        ClusterFactory.active.append(cluster)
        cluster.start(apis, workers, api_env, worker_env)
        return cluster

    def close(self) -> None:
        clusters, self.clusters = self.clusters, []
        for cluster in reversed(clusters):
            try:
                cluster.close()
            finally:
                if cluster in ClusterFactory.active:
                    ClusterFactory.active.remove(cluster)


# --- the HTTP API and SSE --------------------------------------------------

Ev = tuple[int, str, str]  # (id, event type, raw JSON data): what a stream delivers


class ReadOptions(TypedDict, total=False):
    """How ``read_stream`` and ``aread_stream`` read a chat's stream, beyond
    where from (``last_event_id``)."""

    via: str  # how last_event_id is sent: "header" (Last-Event-ID, the default) or "query"
    max_events: int | None  # stop after this many events: we close the connection
    on_event: Callable[[Ev], Any] | None  # called with each event


@dataclass
class StreamRead:
    max_events: int | None = None  # stop reading after this many events
    events: list[Ev] = field(default_factory=list)
    retry: int | None = None
    status_code: int = 0
    closed_by_server: bool = False  # the server ended the response (we did not cut it)
    times: list[float] = field(default_factory=list)  # monotonic arrival time per event

    def opened(self, response: httpx.Response) -> bool:
        """Record the response's status: whether it carries a stream to read."""
        self.status_code = response.status_code
        return self.status_code == 200

    def take(self, sse: Any) -> Ev | None:
        """Record one SSE message: an event (returned), and its ``retry:``, if any."""
        if sse.retry is not None:
            self.retry = sse.retry
        ev = _event_of(sse)
        if ev is None:
            return None
        self.events.append(ev)
        self.times.append(time.monotonic())
        return ev

    def full(self) -> bool:
        return self.max_events is not None and len(self.events) >= self.max_events


def stream_request(base_url: str, chat_id: str, last_event_id: int | str | None, via: str = "header") -> dict[str, Any]:
    """The URL, headers and query of ``GET /chat/{id}/stream`` resuming after ``last_event_id``."""
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if last_event_id is not None:
        if via == "header":
            headers["Last-Event-ID"] = str(last_event_id)
        elif via == "query":
            params["last_event_id"] = str(last_event_id)
        else:
            raise ValueError(via)
    return {"url": f"{base_url}/chat/{chat_id}/stream", "headers": headers, "params": params}


def _event_of(sse: Any) -> Ev | None:
    if not sse.data:
        # A shutdown's farewell (a lone "retry:" line), or a stream cut after
        # one: httpx-sse reports it as an empty event. Not an event.
        return None
    return (int(sse.id) if sse.id else -1, sse.event, sse.data)


def read_stream(
    client: httpx.Client,
    base_url: str,
    chat_id: str,
    last_event_id: int | str | None = None,
    **options: Unpack[ReadOptions],
) -> StreamRead:
    """Read ``GET /chat/{id}/stream`` until the server closes it, or until
    ``max_events`` events (then the connection is closed by us)."""
    out, on_event = StreamRead(max_events=options.get("max_events")), options.get("on_event")
    request = stream_request(base_url, chat_id, last_event_id, options.get("via", "header"))
    with connect_sse(client, "GET", **request) as es:
        if not out.opened(es.response):
            es.response.read()
            return out
        for sse in es.iter_sse():
            ev = out.take(sse)
            if ev is not None and on_event:
                on_event(ev)
            if out.full():
                return out
        out.closed_by_server = True
    return out


def read_in_background(
    client: httpx.Client, base_url: str, chat_id: str, **kwargs: Any
) -> tuple[threading.Thread, list[StreamRead]]:
    """``read_stream`` in a thread: (the thread, a list that gets its result)."""
    result: list[StreamRead] = []
    reader = threading.Thread(
        target=lambda: result.append(read_stream(client, base_url, chat_id, **kwargs)), daemon=True
    )
    reader.start()
    return reader, result


async def aread_stream(
    client: httpx.AsyncClient,
    base_url: str,
    chat_id: str,
    last_event_id: int | str | None = None,
    *,
    on_open: Callable[[], Any] | None = None,
    **options: Unpack[ReadOptions],
) -> StreamRead:
    """``read_stream`` with an async client: ``on_open`` is called once the
    stream's 200 is in, and what ``on_event`` returns is awaited if it is a coroutine."""
    out, on_event = StreamRead(max_events=options.get("max_events")), options.get("on_event")
    request = stream_request(base_url, chat_id, last_event_id, options.get("via", "header"))
    async with aconnect_sse(client, "GET", **request) as es:
        if not out.opened(es.response):
            await es.response.aread()
            return out
        if on_open:
            on_open()
        async for sse in es.aiter_sse():
            ev = out.take(sse)
            if ev is not None and on_event and asyncio.iscoroutine(r := on_event(ev)):
                await r
            if out.full():
                return out
        out.closed_by_server = True
    return out


def create_chat(client: httpx.Client, base_url: str, prompt: str, max_tokens: int | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"prompt": prompt, **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    r = client.post(f"{base_url}/chat", json=body)
    assert r.status_code == 202, (r.status_code, r.text)
    return r.json()["id"]


async def acreate_chat(client: httpx.AsyncClient, base_url: str, prompt: str, max_tokens: int | None = None) -> str:
    body: dict[str, Any] = {"prompt": prompt}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    r = await client.post(f"{base_url}/chat", json=body)
    assert r.status_code == 202, (r.status_code, r.text)
    return r.json()["id"]


def get_chat(client: httpx.Client, base_url: str, chat_id: str) -> dict[str, Any]:
    r = client.get(f"{base_url}/chat/{chat_id}")
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def wait_chat_status(
    client: httpx.Client, base_url: str, chat_id: str, statuses: Iterable[str], timeout: float = 20.0
) -> dict[str, Any]:
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)  # "done" is not {"d", "o", "n", "e"}
    return wait_until(
        lambda: (s := get_chat(client, base_url, chat_id))["status"] in wanted and s,
        timeout,
        0.02,
        f"chat {chat_id} to reach {sorted(wanted)}",
    )


def text_of(events: Iterable[Ev]) -> str:
    """What a client shows: the token text after the last ``reset``."""
    import json

    parts: list[str] = []
    for _, etype, data in events:
        if etype == "token":
            parts.append(json.loads(data)["text"])
        elif etype == "reset":
            parts.clear()
    return "".join(parts)


def assert_answer_text(events: Iterable[Ev], state: Mapping[str, Any], prompt: str, max_tokens: int) -> None:
    """What a client shows from ``events`` (the text after the last ``reset``)
    is the chat's text from ``GET /chat/{id}`` (``state``) and the simulated
    model's answer to ``prompt``."""
    assert text_of(events) == state["text"] == expected_text(prompt, max_tokens)


def assert_complete_sequence(events: list[Ev], first: int = 1) -> None:
    """Ids ``first``..N exactly, in order, no gap, no duplicate; the last event
    (and only it) is terminal."""
    ids = [e[0] for e in events]
    assert ids == list(range(first, first + len(ids))), f"ids not consecutive from {first}: {ids}"
    assert events, "no events"
    assert events[-1][1] in ("done", "error"), f"does not end with a terminal event: {events[-1]}"
    assert all(e[1] not in ("done", "error") for e in events[:-1]), "terminal event before the end"


# --- the simulated model -----------------------------------------------------


def prompt_with_length(min_tokens: int, max_tokens: int = 419, tag: str = "") -> str:
    """A prompt whose simulated answer has between ``min_tokens`` and
    ``max_tokens`` tokens (deterministic search; a fresh ``tag`` gives a new one)."""
    from worker.providers.simulated import answer_length

    if max(min_tokens, 20) > min(max_tokens, 419):  # else the search below never ends
        raise ValueError(f"the simulated model answers 20..419 tokens, not {min_tokens}..{max_tokens}")
    for i in itertools.count():
        prompt = f"e2e prompt {tag} {i}"
        if min_tokens <= answer_length(prompt) <= max_tokens:
            return prompt
    raise AssertionError("unreachable")


def expected_text(prompt: str, max_tokens: int) -> str:
    from worker.providers.simulated import answer_tokens

    return "".join(answer_tokens(prompt, max_tokens))


def tcp_queued_bytes(server_port: int, client_port: int) -> int:
    """Bytes the kernel holds on a loopback TCP connection: the server's send
    queue plus the client's receive queue (Linux, /proc/net/tcp)."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
            tx, rx = (int(v, 16) for v in fields[4].split(":"))
            if (local, remote) == (server_port, client_port):
                total += tx
            elif (local, remote) == (client_port, server_port):
                total += rx
    return total


# --- measurements ------------------------------------------------------------

MEASUREMENTS: list[str] = []  # printed in the terminal summary of the run


def record(line: str) -> None:
    print(line)
    MEASUREMENTS.append(line)


# --- sampling ----------------------------------------------------------------
