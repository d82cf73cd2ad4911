"""The ``run`` and ``redis`` commands: the whole stack (embedded Redis, one API
process, N workers) supervised in one terminal, and the embedded redis-server
alone. ``python -m tokenfan`` (tokenfan/__main__.py) parses the command line.

``run`` restarts a child that dies once the stack is up (killing the API to
watch a stream resume is a demo, not a reason to stop): after
``RESTART_BACKOFF_S``, doubled for each death in a row up to
``RESTART_BACKOFF_MAX_S``; a child that ran ``RESTART_STABLE_S`` counts as a
first death again. A child that dies during start-up stops everything: that
is a configuration error, which a restart would only repeat."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from tokenfan.embedded_redis import (
    DataDirInUse,
    EmbeddedRedis,
    EmbeddedRedisError,
    child_preexec_fn,
    free_port,
    port_is_free,
)

HEALTH_DEADLINE_S = 30.0
CHILD_STOP_GRACE_S = 10.0
SUPERVISE_INTERVAL_S = 0.1
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_STABLE_S = 60.0


def _log(message: str) -> None:
    print(f"tokenfan: {message}", file=sys.stderr, flush=True)


class _StopSignals:
    """Turns SIGINT/SIGTERM/SIGHUP into an event the main loop checks, and
    restores the previous handlers on exit."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def __enter__(self) -> _StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "?"


# --- redis ---------------------------------------------------------------------


def cmd_redis(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    settings = get_settings()
    with _StopSignals() as stop:
        server = EmbeddedRedis(
            port=settings.embedded_redis_port,
            data_dir=settings.data_dir / "redis",
            persistent=True,
        )
        try:
            server.start()
        except EmbeddedRedisError as exc:
            _log(f"cannot start the embedded Redis: {exc}")
            return 1
        try:
            _log(
                f"embedded Redis ready at {server.url} (pid {server.pid}, "
                f"data {server.data_dir}, log {server.log_path})"
            )
            while not stop.event.wait(SUPERVISE_INTERVAL_S):
                code = server.poll()
                if code is not None:
                    _log(f"redis-server exited unexpectedly with code {code}; see {server.log_path}")
                    return 1
            _log(f"{stop.name} received, stopping Redis")
        finally:
            server.stop()
    return 0


# --- run -----------------------------------------------------------------------


def _start_embedded_redis(port: int, data_dir: os.PathLike[str] | str) -> EmbeddedRedis:
    from pathlib import Path

    if not port_is_free(port):
        new_port = free_port()
        _log(f"port {port} is busy; the embedded Redis uses port {new_port} instead")
        port = new_port
    try:
        return EmbeddedRedis(port=port, data_dir=Path(data_dir), persistent=True).start()
    except DataDirInUse as exc:
        _log(f"{exc}; this run uses a throw-away Redis instead (nothing will persist)")
        return EmbeddedRedis(port=port, persistent=False).start()


def _client_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _spawn(
    name: str, argv: list[str], env: dict[str, str], restarted: bool = False
) -> tuple[str, subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        # Own process group: Ctrl-C reaches only this launcher, which then
        # stops the children in order (API and workers first, Redis last).
        start_new_session=True,
        preexec_fn=child_preexec_fn(),
    )
    _log(f"{'restarted' if restarted else 'started'} {name} (pid {proc.pid}): {' '.join(argv)}")
    return name, proc


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Restarts:
    """One child's deaths in a row and when it is due to start again."""

    started_at: float
    deaths: int = 0
    due_at: float | None = None

    def died(self, now: float) -> float:
        """Record a death; the delay before the restart."""
        self.deaths = 1 if now - self.started_at >= RESTART_STABLE_S else self.deaths + 1
        delay = min(RESTART_BACKOFF_S * 2 ** (self.deaths - 1), RESTART_BACKOFF_MAX_S)
        self.due_at = now + delay
        return delay


def _supervise(
    procs: list[tuple[str, subprocess.Popen[bytes]]],
    argvs: dict[str, list[str]],
    env: dict[str, str],
    redis: EmbeddedRedis | None,
    stop: _StopSignals,
) -> None:
    """Until a stop signal: restart each child that dies, with a back-off.
    ``procs`` is updated in place (the caller stops what it holds)."""
    now = time.monotonic()
    restarts = {name: _Restarts(now) for name in argvs}
    redis_restarts = _Restarts(now)
    while not stop.event.wait(SUPERVISE_INTERVAL_S):
        now = time.monotonic()
        if redis is not None:
            code = redis.poll() if redis_restarts.due_at is None else None
            if code is not None:
                delay = redis_restarts.died(now)
                _log(f"redis {_exit_text(code)}; restarting it in {delay:.1f} s (see {redis.log_path})")
            elif redis_restarts.due_at is not None and now >= redis_restarts.due_at:
                redis_restarts.due_at = None
                redis.stop()
                try:
                    redis.start()
                except EmbeddedRedisError as exc:
                    redis_restarts.started_at = time.monotonic()
                    delay = redis_restarts.died(time.monotonic())
                    _log(f"redis did not start again: {exc}; next try in {delay:.1f} s")
                else:
                    redis_restarts.started_at = time.monotonic()
                    _log(f"restarted redis (pid {redis.pid}) at {redis.url}")
        for i, (name, proc) in enumerate(procs):
            r = restarts[name]
            if r.due_at is None:
                code = proc.poll()
                if code is not None:
                    delay = r.died(now)
                    again = f" ({r.deaths} times in a row)" if r.deaths > 1 else ""
                    _log(f"{name} (pid {proc.pid}) {_exit_text(code)}{again}; restarting it in {delay:.1f} s")
            elif now >= r.due_at:
                r.due_at = None
                r.started_at = now
                procs[i] = _spawn(name, argvs[name], env, restarted=True)


def _first_exited(
    procs: Sequence[tuple[str, subprocess.Popen[bytes]]], redis: EmbeddedRedis | None
) -> tuple[str, int] | None:
    for name, proc in procs:
        code = proc.poll()
        if code is not None:
            return name, code
    if redis is not None:
        code = redis.poll()
        if code is not None:
            return "redis", code
    return None


def _stop_children(procs: Sequence[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> None:
    """SIGTERM every child by PID, wait up to ``grace_s`` in all, then SIGKILL."""
    for _, proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for name, proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace_s:.0f} s; killing it")
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _healthy(url: str) -> bool:
    # No proxies: the health check is for a server on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings

    settings = get_settings()
    port = args.port if args.port is not None else settings.port
    client_host = _client_host(settings.host)
    base_url = f"http://{client_host}:{port}"

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENFAN_PORT"] = str(port)

    with _StopSignals() as stop:
        redis: EmbeddedRedis | None = None
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            try:
                bind_free = port_is_free(port, settings.host or "0.0.0.0")
            except OSError:  # a host name or IPv6 address: let uvicorn decide
                bind_free = True
            if not bind_free:
                _log(f"port {port} on {settings.host} is already in use; pick another with --port")
                return 1

            if settings.redis_url is None:
                try:
                    redis = _start_embedded_redis(settings.embedded_redis_port, settings.data_dir / "redis")
                except EmbeddedRedisError as exc:
                    _log(f"cannot start the embedded Redis: {exc}")
                    return 1
                env["TOKENFAN_REDIS_URL"] = redis.url
                _log(f"embedded Redis at {redis.url} (pid {redis.pid}, data {redis.data_dir})")
            else:
                _log(f"using Redis at {settings.redis_url}")

            argvs = {"api": [sys.executable, "-m", "api"]}
            argvs.update({f"worker-{i + 1}": [sys.executable, "-m", "worker"] for i in range(args.workers)})
            procs.extend(_spawn(name, argv, env) for name, argv in argvs.items())

            health_url = f"{base_url}/healthz"
            deadline = time.monotonic() + HEALTH_DEADLINE_S
            while not _healthy(health_url):
                exited = _first_exited(procs, redis)
                if exited is not None:
                    _log(f"{exited[0]} {_exit_text(exited[1])} during start-up; stopping")
                    return 1
                if time.monotonic() >= deadline:
                    _log(f"{health_url} did not answer 200 within {HEALTH_DEADLINE_S:.0f} s; stopping")
                    return 1
                if stop.event.wait(SUPERVISE_INTERVAL_S):
                    _log(f"{stop.name} received during start-up; stopping")
                    return 0

            workers = f"{args.workers} worker" + ("s" if args.workers != 1 else "")
            print(
                f"\ntokenfan is running at {base_url} (API + {workers}). Try:\n\n"
                f"  curl -s -X POST {base_url}/chat -H 'content-type: application/json' "
                '-d \'{"prompt":"Hello"}\'\n'
                f"  curl -N {base_url}/chat/<id>/stream\n\n"
                "A process that dies is started again; Ctrl-C stops everything.\n",
                flush=True,
            )

            _supervise(procs, argvs, env, redis, stop)
            _log(f"{stop.name} received; stopping")
            return 0
        finally:
            _stop_children(procs, CHILD_STOP_GRACE_S)
            if redis is not None:
                redis.stop()
            if procs or redis is not None:
                _log("stopped")
