"""Child processes and waiting, for the tests and the benchmark alike.

A ``Child`` runs in its own session (a Ctrl-C reaches only its parent), writes
its output to a log file, gets the open-file limit raised to the hard limit
(10,000 idle streams need 10,000 sockets), and on Linux dies with the parent
(so a killed test run leaves nothing behind). It is stopped by PID: SIGTERM,
then SIGKILL after a grace period.

``wait_until`` is the only way a test or the benchmark waits for a state: a
condition polled with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil

STOP_GRACE_S = 5.0
NODE_MAJOR = 20  # the Node packages of the bench's peer and of tests/clients need Node 20+
T = TypeVar("T")


# --- waiting -------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy
    (returned) or ``timeout`` s have passed (TimeoutError). Exceptions listed
    in ``ignore`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except ignore as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {text}{extra}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """``wait_until`` in a coroutine: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {message}")
        await asyncio.sleep(interval)


def sleep_until(wall_time: float) -> None:
    """Pacing only (a load schedule), never to let something happen."""
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


# --- file descriptors ------------------------------------------------------------


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fd_limit_of(pid: int) -> int:
    """The soft open-file limit of a running process (to check it took)."""
    return psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)[0]


def _setup_dying_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    raise_fd_limit()
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def _preexec() -> Callable[[], Any]:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits: only a child
    # forked by the main thread may have it (a worker thread ends long before us).
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _setup_dying_with_parent
    return raise_fd_limit


# --- processes -------------------------------------------------------------------


class Child:
    """One child process. Its output goes to ``log_path``; with ``pipes``,
    stdin and stdout are pipes to talk to it (stderr still goes to the log)."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> None:
        self.label = label
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_preexec(),
            )
        self.pid = self.popen.pid
        self.ps = psutil.Process(self.pid)
        self.killed_hard = False  # True once stop() had to SIGKILL it

    def __repr__(self) -> str:
        return f"<{self.label} pid={self.pid} log={self.log_path.name}>"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self} exited with code {code}; log tail:\n{self.tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by PID and reap: connections drop mid-stream, as in a crash."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_GRACE_S)

    def wait_stopped(self, grace: float = STOP_GRACE_S) -> None:
        """Wait for an exit asked for already; SIGKILL after ``grace`` s."""
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.killed_hard = True
            self.kill()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM by PID; SIGKILL if it has not exited after ``grace`` s."""
        self.terminate()
        self.wait_stopped(grace)

    def cpu_s(self) -> float:
        """User + system CPU seconds this process has used so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def local_ports(self) -> set[int]:
        try:
            conns = self.ps.net_connections(kind="tcp")
        except psutil.Error:
            return set()
        return {c.laddr.port for c in conns if c.laddr}


def stop_all(children: Iterable[Child], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM them all at once, then wait for each (SIGKILL after ``grace``)."""
    children = list(children)
    for child in children:
        child.terminate()
    for child in children:
        child.wait_stopped(grace)


# --- Node packages ---------------------------------------------------------------


def npm_ci(
    folder: Path,
    spawn: Callable[[str, list[str]], Child],
    stop: Callable[[Child], None],
    timeout: float = 300.0,
) -> str | None:
    """Make a folder's Node packages usable: Node >= ``NODE_MAJOR`` and npm on
    PATH, and ``npm ci`` into ``folder/node_modules`` from its committed
    package-lock.json, unless that lock file is installed there already (a
    stamp holds its hash). ``spawn(label, argv)`` starts the child (the caller
    decides where its log goes), ``stop`` stops it. Returns None when the
    packages are ready, else why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return f"{'node' if node is None else 'npm'} not found on PATH (Node {NODE_MAJOR}+ and npm are needed)"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return f"'{node} --version' failed"
    if major < NODE_MAJOR:
        return f"node {version} is too old (Node {NODE_MAJOR}+ is needed)"
    lock = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
    stamp = folder / "node_modules" / ".npm-ci-installed"
    if stamp.exists() and stamp.read_text().strip() == lock:
        return None
    child = spawn(f"{folder.name}-npm-ci", [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(folder)])
    try:
        code = child.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(child)
    if code != 0:
        why = f"exit code {code}" if code is not None else f"not done within {timeout:.0f} s"
        return f"npm ci in {folder} failed ({why}); log {child.log_path}:\n{child.tail(5)}"
    stamp.write_text(lock)
    return None
