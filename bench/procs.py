"""The processes a benchmark run starts: one embedded Redis for the whole run,
and per scenario a ``Stack`` of API processes, workers, the direct baseline
and the peer (Vercel's resumable-stream on Node, ``bench/peer``), all real
processes on loopback.

Every child gets its own environment (no ``TOKENFAN_*`` variable leaks in from
the caller; the working directory is the run's log folder, so no ``.env`` is
read), its output in a log file, its open-file limit raised to the hard limit
(10,000 idle streams need 10,000 sockets in the API process) and, on Linux, a
parent-death signal, so a killed benchmark leaves nothing behind. Children run
in their own session: a Ctrl-C reaches only the benchmark, which then stops
them by PID (SIGTERM, then SIGKILL after a grace period).

Starting, stopping and waiting are bench/processes.py's, shared with the tests.
"""

from __future__ import annotations

import http.client
import itertools
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import redis

from bench.processes import (  # noqa: F401 - re-exported for the scenarios
    Child,
    fd_limit_of,
    npm_ci,
    raise_fd_limit,
    sleep_until,
    stop_all,
    wait_until,
)
from bench.sampler import Sampler  # noqa: F401 - re-exported for tests and scenarios
from tokenfan.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER = REPO / "bench" / "peer"
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


# --- processes -------------------------------------------------------------------


class Run:
    """One benchmark run: its log folder, its Redis, and every child process,
    so that ``close`` stops them all whatever happened."""

    KEEP_LOGS_S = 3 * 24 * 3600

    def __init__(self, label: str) -> None:
        logs = RESULTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for old in logs.iterdir():  # other runs' logs, once they are a few days old
            try:
                if time.time() - old.stat().st_mtime > self.KEEP_LOGS_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        self.dir = logs / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.dir.mkdir(parents=True)
        self.redis_server: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self._counter = itertools.count(1)

    def start_redis(self) -> EmbeddedRedis:
        # Must be called from the main thread (the parent-death signal is per thread).
        self.redis_server = EmbeddedRedis(port=free_port(), persistent=False).start()
        return self.redis_server

    @property
    def redis_url(self) -> str:
        assert self.redis_server is not None
        return self.redis_server.url

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFAN_")}
        paths = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", TOKENFAN_REDIS_URL=self.redis_url)
        env.update(extra or {})
        return env

    def child(self, label: str, argv: list[str], env: dict[str, str], *, pipes: bool = False) -> Child:
        """A new child (not tracked: ``spawn`` tracks one), run in the run's folder, so no .env is read."""
        return Child(label, argv, env, self.dir / f"{next(self._counter):03d}-{label}.log", cwd=self.dir, pipes=pipes)

    def spawn(self, label: str, args: list[str], env: dict[str, str], *, pipes: bool = False) -> Child:
        child = self.child(label, args, env, pipes=pipes)
        self.children.append(child)
        return child

    def stop(self, children: list[Child]) -> None:
        """SIGTERM them all, then wait for each (SIGKILL after the grace period)."""
        stop_all(children)
        for c in children:
            if c in self.children:
                self.children.remove(c)

    def close(self) -> None:
        try:
            self.stop(list(reversed(self.children)))
        finally:
            if self.redis_server is not None:
                self.redis_server.stop()
                self.redis_server = None


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server(Child):
    """An HTTP server child (the tokenfan API, the direct baseline or the peer)."""

    def __init__(
        self, run: Run, label: str, module: str, env: dict[str, str], port: int, args: list[str] | None = None
    ) -> None:
        argv = args or [sys.executable, "-m", module]
        super().__init__(label, argv, env, run.dir / f"{next(run._counter):03d}-{label}.log", cwd=run.dir)
        self.port = port

    def ready(self, path: str, check: Callable[[bytes], bool] = lambda body: True) -> bool:
        self.check_alive()
        try:
            status, body = http_get(self.port, path)
        except OSError:
            return False
        return status == 200 and check(body)


class Stack:
    """The processes of one scenario. ``start`` launches them all at once
    (startup overlaps), then waits until each is ready."""

    def __init__(self, run: Run, name: str, env: Mapping[str, str] | None = None) -> None:
        self.run = run
        self.name = name
        self.env = dict(env or {})
        self.apis: list[Server] = []
        self.workers: list[Child] = []
        self.baselines: list[Server] = []
        self.peers: list[Server] = []

    @property
    def api(self) -> Server:
        return self.apis[0]

    @property
    def peer(self) -> Server:
        return self.peers[0]

    @property
    def children(self) -> list[Child]:
        return [*self.apis, *self.workers, *self.baselines, *self.peers]

    def start(
        self,
        *,
        apis: int = 1,
        workers: int = 0,
        baseline: bool = False,
        peer: bool = False,
        api_env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> Stack:
        for i in range(apis):
            port = free_port()
            env = self.run.env({**self.env, **(api_env or {}), "TOKENFAN_HOST": HOST, "TOKENFAN_PORT": str(port)})
            self._add(self.apis, Server(self.run, f"{self.name}-api{i + 1}", "api", env, port))
        for i in range(workers):
            env = self.run.env({**self.env, **(worker_env or {})})
            label = f"{self.name}-worker{i + 1}"
            self._add(self.workers, self.run.child(label, [sys.executable, "-m", "worker"], env))
        if baseline:
            port = free_port()
            env = self.run.env({**self.env, **(worker_env or {}), "BENCH_PORT": str(port)})
            self._add(self.baselines, Server(self.run, f"{self.name}-direct", "bench.baseline", env, port))
        if peer:  # prepare_peer() first
            port = free_port()
            env = self.run.env({**self.env, **(worker_env or {}), "BENCH_PORT": str(port)})
            env.pop("DEBUG", None)  # resumable-stream logs every chunk when DEBUG is set
            args = [shutil.which("node") or "node", str(PEER / "server.mjs")]
            self._add(self.peers, Server(self.run, f"{self.name}-peer", "", env, port, args=args))
        try:
            self._wait_ready(workers)
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, group: list, child: Child) -> None:
        group.append(child)
        self.run.children.append(child)

    def _wait_ready(self, workers: int) -> None:
        import orjson

        for api in self.apis:
            # Ready means Redis reachable and the hub's pub/sub connection up.
            wait_until(
                lambda api=api: api.ready("/readyz", lambda b: orjson.loads(b).get("hub_connected") is True),
                START_TIMEOUT_S,
                message=f"{api} to be ready",
            )
        for b in [*self.baselines, *self.peers]:
            wait_until(lambda b=b: b.ready("/healthz"), START_TIMEOUT_S, message=f"{b} to be ready")
        if workers:
            # A worker is ready once it listens for nudges on tf:workers.
            r = self.run.redis()
            try:

                def subscribed() -> bool:
                    for w in self.workers:
                        w.check_alive()
                    return r.pubsub_numsub("tf:workers")[0][1] >= len(self.workers)

                wait_until(subscribed, START_TIMEOUT_S, message=f"{len(self.workers)} workers to subscribe")
            finally:
                r.close()

    def api_connections(self, r: redis.Redis, api: Server | None = None) -> int:
        """Redis connections held by an API process (named tokenfan-api-<pid>[-hub])."""
        api = api or self.api
        names = {f"tokenfan-api-{api.pid}", f"tokenfan-api-{api.pid}-hub"}
        return sum(1 for c in r.client_list() if c.get("name") in names)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.run.stop(list(reversed(self.children)))
        self.apis, self.workers, self.baselines, self.peers = [], [], [], []


def prepare_peer(run: Run, timeout: float = 300.0) -> str | None:
    """Make the peer runnable: Node >= 20 and npm on PATH, and ``npm ci`` into
    ``bench/peer/node_modules`` (from the committed package-lock.json) unless
    that lock file is already installed there. Returns None when the peer can
    run, else why not (the benchmark then runs without it)."""
    return npm_ci(PEER, lambda label, argv: run.spawn(label, argv, run.env()), lambda child: run.stop([child]), timeout)


class CpuMeter:
    """CPU seconds spent by some processes between ``start`` and ``stop``."""

    def __init__(self, procs: Mapping[str, Child | psutil.Process]) -> None:
        self.procs = dict(procs)
        self.t0 = self.t1 = 0.0
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    @staticmethod
    def _cpu(p: Child | psutil.Process) -> float:
        if isinstance(p, Child):
            return p.cpu_s()
        t = p.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.before = {name: self._cpu(p) for name, p in self.procs.items()}

    def stop(self) -> dict[str, float]:
        self.t1 = time.monotonic()
        self.used = {name: self._cpu(p) - self.before[name] for name, p in self.procs.items()}
        return self.used

    @property
    def elapsed(self) -> float:
        return self.t1 - self.t0

    def utilisation(self) -> dict[str, float]:
        """Share of one core each process used over the window."""
        return {name: used / self.elapsed for name, used in self.used.items()} if self.elapsed else {}
