"""Third-party Node clients driven by the tests: the packages of
tests/clients/package.json (installed by ``npm ci`` from the committed lock
file on first use, bench/processes.py's ``npm_ci``, as the bench's peer is),
run as real ``node`` processes against real tokenfan processes.

``NodeChat`` is one useChat conversation (ui_chat.mjs): commands go to its
stdin, and everything it sees comes back as JSON lines, which a test waits
on with a deadline. ``run_node`` runs a one-shot script and returns its last
JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import artifacts_dir

from bench.processes import Child, npm_ci, wait_until

CLIENTS = Path(__file__).resolve().parent
NODE = shutil.which("node") or "node"
Line = dict[str, Any]

_counter = iter(range(1, 10**6))


def _log(label: str) -> Path:
    return artifacts_dir() / f"node-{next(_counter):03d}-{label}.log"


def install() -> str | None:
    """``npm ci`` into tests/clients/node_modules unless the lock file is
    installed there already; None when ready, else why not."""
    return npm_ci(
        CLIENTS,
        lambda label, argv: Child(label, argv, dict(os.environ), _log(label), cwd=CLIENTS),
        lambda child: child.stop(),
    )


class NodeChat:
    """One useChat conversation in a ``node`` process (ui_chat.mjs)."""

    def __init__(self, package: str, base_url: str, chat_id: str, messages: list[dict] | None = None) -> None:
        argv = [NODE, str(CLIENTS / "ui_chat.mjs"), package, base_url, chat_id]
        if messages is not None:
            argv.append(json.dumps(messages))
        label = f"usechat-{package}"
        self.child = Child(label, argv, dict(os.environ), _log(label), cwd=CLIENTS, pipes=True)
        self.lines: list[Line] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.popen.stdout is not None
        for raw in self.child.popen.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"unparsed": raw.decode(errors="replace")}
            with self._lock:
                self.lines.append(line)

    def command(self, cmd: str, **fields: Any) -> None:
        assert self.child.popen.stdin is not None
        self.child.popen.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        self.child.popen.stdin.flush()

    def wait(self, predicate: Callable[[Line], bool], what: str, timeout: float = 20.0) -> Line:
        """The first line (from the start) that ``predicate`` accepts."""

        def found() -> Line | None:
            self.child.check_alive()
            with self._lock:
                return next((line for line in self.lines if predicate(line)), None)

        return wait_until(found, timeout, 0.02, lambda: f"{what}; lines so far: {self.lines[-5:]}")

    def done(self, cmd: str, timeout: float = 20.0, nth: int = 1) -> Line:
        """The ``nth`` completion of command ``cmd``."""

        def found() -> Line | None:
            self.child.check_alive()
            with self._lock:
                hits = [line for line in self.lines if line.get("done") == cmd]
            return hits[nth - 1] if len(hits) >= nth else None

        return wait_until(found, timeout, 0.02, lambda: f"'{cmd}' #{nth} to finish; lines so far: {self.lines[-5:]}")

    def posted(self, timeout: float = 20.0) -> str:
        """tokenfan's chat id of the (first) POST."""
        return self.wait(lambda line: "posted" in line, "the POST to be answered", timeout)["posted"]

    def texts(self) -> list[str]:
        with self._lock:
            return [line["text"] for line in self.lines if "text" in line and "done" not in line]

    def close(self) -> None:
        if self.child.alive():
            try:
                self.command("exit")
            except OSError:
                pass
        self.child.stop(grace=2.0)


def run_node(script: str, *args: str, timeout: float = 30.0) -> Line:
    """Run ``node <script> <args>`` in tests/clients; its last JSON line."""
    log = _log(Path(script).stem)
    child = Child(Path(script).stem, [NODE, str(CLIENTS / script), *args], dict(os.environ), log, cwd=CLIENTS)
    try:
        code = child.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.stop()
        raise AssertionError(f"node {script} did not finish within {timeout} s; log {log}:\n{child.tail(20)}") from None
    lines = [line for line in child.log_text().splitlines() if line.startswith("{")]
    assert code == 0 and lines, f"node {script} exited with {code}; log {log}:\n{child.tail(20)}"
    return json.loads(lines[-1])
