"""Helpers of the real-LLM tests (tests/providers): a llama-server process,
a loopback server that never answers, cluster environments, measurements."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import httpx
from harness import Child, artifacts_dir, wait_until

from tokenfan import local_model
from tokenfan.embedded_redis import free_port

MODEL = local_model.MODEL_NAME
API_KEY = "test-key"  # llama-server checks none; the SDKs want one

# Fast pickup, quick retries: the tests provoke failures on purpose.
BASE_ENV = {
    "TOKENFAN_MODEL": MODEL,
    "TOKENFAN_OPENAI_API_KEY": API_KEY,
    "TOKENFAN_ANTHROPIC_API_KEY": API_KEY,
    "TOKENFAN_UPSTREAM_RETRY_BACKOFF_S": "0.05",
    "TOKENFAN_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": "30",
    "TOKENFAN_UPSTREAM_READ_TIMEOUT_S": "20",
    # No ":" heartbeat inside these short streams: httpx-sse turns one that
    # follows an event into a phantom event carrying the last id again.
    "TOKENFAN_HEARTBEAT_S": "120",
}

MEASUREMENTS: list[str] = []


class LlamaServer(Child):
    """One llama-server process on 127.0.0.1, its output in the artifacts folder.
    One thread: on 2 cores shared with tokenfan's processes (and whatever else
    runs), two llama.cpp threads spin on each other and the rate collapses."""

    def __init__(
        self,
        files: tuple[Path, Path],
        name: str,
        port: int | None = None,
        *,
        ctx: int = 4096,
        parallel: int = 2,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = local_model.server_argv(
            *files, self.port, ctx=ctx, parallel=parallel, extra=("--threads", "1", "--slots", *extra)
        )
        log_path = artifacts_dir() / f"llama-{name}-{self.port}.log"
        super().__init__(f"llama-{name}", argv, os.environ, log_path)

    def __repr__(self) -> str:
        return f"<llama-server pid={self.pid} {self.url}>"

    def wait_ready(self, timeout: float = 60.0) -> LlamaServer:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self} {local_model.describe_exit(self.popen.returncode)}:\n{self.tail()}")
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200

        wait_until(ready, timeout, 0.05, f"{self} /health", ignore=(httpx.TransportError,))
        return self

    def slots(self) -> list[dict]:
        return httpx.get(f"{self.url}/slots", timeout=5.0).json()


def provider_env(provider: str, server: LlamaServer | str) -> dict[str, str]:
    """A cluster's environment: workers using ``provider`` against ``server``."""
    url = server if isinstance(server, str) else server.url
    return {
        **BASE_ENV,
        "TOKENFAN_PROVIDER": provider,
        "TOKENFAN_OPENAI_BASE_URL": f"{url}/v1",
        "TOKENFAN_ANTHROPIC_BASE_URL": url,
    }


class SilentServer:
    """Accepts TCP connections on loopback and never answers: an upstream that
    hangs before its first byte. Counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def events_json(events) -> list[tuple[int, str, dict]]:
    return [(i, t, json.loads(d)) for i, t, d in events]


def measure(line: str) -> None:
    print(line)
    MEASUREMENTS.append(line)
