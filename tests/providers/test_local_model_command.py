"""``python -m tokenfan local-model``: the one command that runs tokenfan
against a real model on this machine (llama-server on loopback + the embedded
Redis + API + worker), and stops all of it on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
from harness import REPO, assert_complete_sequence, read_stream, text_of, wait_until

from tokenfan.embedded_redis import free_port

pytestmark = pytest.mark.e2e


def test_local_model_command_serves_a_real_model(llama_files, tmp_path, client):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENFAN_", "OPENAI_", "ANTHROPIC_"))}
    if "TOKENFAN_LLAMA_CACHE" in os.environ:
        env["TOKENFAN_LLAMA_CACHE"] = os.environ["TOKENFAN_LLAMA_CACHE"]
    env.update(PYTHONPATH=str(REPO), TOKENFAN_EMBEDDED_REDIS_PORT=str(free_port()), TOKENFAN_POLL_DELAY_S="0.1")
    log_path = tmp_path / "local-model.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenfan", "local-model", "--port", str(port), "--ctx", "2048", "--parallel", "1"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is None and httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            60,
            0.1,
            lambda: f"local-model to serve {url}:\n{log_path.read_text(errors='replace')}",
            ignore=(httpx.TransportError,),
        )
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any(c.name() == "llama-server" for c in children) or "llama-server (pid" in log_path.read_text()
        r = client.post(f"{url}/chat", json={"prompt": "Say hello.", "max_tokens": 12, "temperature": 0})
        assert r.status_code == 202, r.text
        read = read_stream(client, url, r.json()["id"])
        assert_complete_sequence(read.events)
        assert read.events[-1][1] == "done", read.events[-1]
        assert text_of(read.events).strip()
    finally:
        llama_pids = (
            [p.pid for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "llama-server"]
            if proc.poll() is None
            else []
        )
        os.kill(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    assert code == 0, log_path.read_text(errors="replace")
    for pid in llama_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
