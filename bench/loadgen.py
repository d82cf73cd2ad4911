"""Load-generator processes: the client side of a scenario runs in one or
more separate processes (``python -m bench.loadgen``), so that its CPU is
its own and can be measured, and so that several can share a load the server
must not be starved of by a single-threaded client.

The protocol over stdin/stdout, one JSON object per line:

    bench -> loadgen   {"job": "package.module:function", "args": {...}}
    loadgen -> bench   {"type": "ready"}                 (imported, loop up)
    bench -> loadgen   {"start_at": <wall clock>}        (a common start for all loadgens)
    loadgen -> bench   {"type": "progress", ...}         (optional, any number)
    bench -> loadgen   {"stop": true}                    (optional: jobs that hold until told)
    loadgen -> bench   {"type": "result", "result": {...}} or {"type": "error", "error": "..."}

A job is ``async def job(args: dict, start_at: float, ctl: Control) -> dict``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import orjson

from bench.procs import Child, Run, raise_fd_limit

# --- the loadgen process ---------------------------------------------------------


class Control:
    """What a running job can do besides its work: report progress, and wait
    for the benchmark's stop message."""

    def progress(self, **fields: Any) -> None:
        _emit({"type": "progress", **fields})

    async def wait_stop(self) -> None:
        # The stop line, or EOF: the benchmark went away, stop too.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _emit(message: dict) -> None:
    # One write() is not enough: children run with PYTHONUNBUFFERED, so stdout
    # is a raw FileIO whose write() may take only part of a large result (a
    # full pipe, a signal), and the benchmark then read a line cut short.
    data = memoryview(orjson.dumps(message) + b"\n")
    fd = sys.stdout.fileno()
    os.set_blocking(fd, True)  # the event loop may have left it non-blocking
    while data:
        data = data[os.write(fd, data) :]


def main() -> None:
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    request = orjson.loads(sys.stdin.readline())
    module_name, _, name = request["job"].partition(":")
    job = getattr(importlib.import_module(module_name), name)
    _emit({"type": "ready"})
    go = orjson.loads(sys.stdin.readline() or b"{}")
    if "start_at" not in go:
        return
    try:
        result = asyncio.run(job(request["args"], go["start_at"], Control()))
    except BaseException:
        _emit({"type": "error", "error": traceback.format_exc()})
        sys.exit(1)
    _emit({"type": "result", "result": result})


# --- the benchmark's side ----------------------------------------------------------


class LoadGen:
    """A running loadgen process and the messages it sent."""

    def __init__(self, run: Run, label: str, job: str, args: dict[str, Any]) -> None:
        self.child: Child = run.spawn(label, [sys.executable, "-m", "bench.loadgen"], run.env(), pipes=True)
        self._messages: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send({"job": job, "args": args})

    def _read(self) -> None:
        stdout = self.child.popen.stdout
        assert stdout is not None
        try:
            for line in stdout:
                try:
                    self._messages.put(orjson.loads(line))
                except ValueError as exc:
                    error = f"not a JSON message ({exc}; {len(line)} bytes): {line[:200]!r} ... {line[-200:]!r}"
                    self._messages.put({"type": "error", "error": error})
        except OSError:
            pass
        self._messages.put(None)  # EOF

    def send(self, message: dict) -> None:
        stdin = self.child.popen.stdin
        assert stdin is not None
        try:
            stdin.write(orjson.dumps(message) + b"\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            self.child.check_alive()
            raise

    def expect(self, kind: str, timeout: float) -> dict:
        """The next message of type ``kind`` (progress messages before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.child} sent no {kind!r} within {timeout:.0f} s; log:\n{self.child.tail()}")
            try:
                message = self._messages.get(timeout=left)
            except queue.Empty:
                continue
            if message is None:
                code = self.child.popen.wait(timeout=5)
                raise RuntimeError(
                    f"{self.child} ended (exit code {code}) before sending {kind!r}; log:\n{self.child.tail()}"
                )
            if message["type"] == "error":
                raise RuntimeError(f"{self.child} failed:\n{message['error']}")
            if message["type"] == kind:
                return message


def start_loadgens(
    run: Run, label: str, job: str, args_list: Sequence[dict[str, Any]], lead_s: float = 0.3
) -> tuple[list[LoadGen], float]:
    """Start one loadgen per args, wait until all are ready, then give them a
    common start time ``lead_s`` from now (so that their schedules line up)."""
    gens = [LoadGen(run, f"{label}-client{i + 1}", job, args) for i, args in enumerate(args_list)]
    for g in gens:
        g.expect("ready", 30)
    start_at = time.time() + lead_s
    for g in gens:
        g.send({"start_at": start_at})
    return gens, start_at


def finish_loadgens(run: Run, gens: Sequence[LoadGen], timeout: float) -> list[dict]:
    """Wait for every loadgen's result, then reap the processes."""
    try:
        return [g.expect("result", timeout)["result"] for g in gens]
    finally:
        run.stop([g.child for g in gens])


if __name__ == "__main__":
    main()
