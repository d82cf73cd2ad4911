"""``tokenfan run`` (what ``./dev run`` starts) as a person uses it: the API
child is killed, the launcher says so and starts it again, the service
answers again; SIGTERM then stops everything."""

from __future__ import annotations

import signal
import sys

import httpx
import psutil
import pytest
from harness import HOST, Child, Cluster, artifacts_dir, create_chat, process_env, wait_chat_status, wait_until

from tokenfan.embedded_redis import free_port

pytestmark = pytest.mark.e2e


def api_children(launcher: Child) -> list[psutil.Process]:
    return [p for p in launcher.ps.children() if p.cmdline()[-2:] == ["-m", "api"]]


def serves(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_run_restarts_a_child_that_dies_and_stops_on_sigterm(redis_server):
    cluster = Cluster(redis_server, "launcher")  # a database and queue of its own; no process
    port = free_port()
    url = f"http://{HOST}:{port}"
    env = process_env(cluster.redis_url, {**cluster.env, "TOKENFAN_HOST": HOST})
    argv = [sys.executable, "-m", "tokenfan", "run", "--port", str(port), "--workers", "1"]
    launcher = Child("launcher", argv, env, artifacts_dir() / "launcher.log", cwd=artifacts_dir())
    try:
        with httpx.Client(timeout=5.0) as client:
            # Up once the launcher says so: before that, a child that dies stops the start-up.
            wait_until(
                lambda: f"tokenfan is running at {url}" in launcher.log_text(),
                30,
                message=lambda: f"the launcher to say it is running\n{launcher.tail()}",
            )
            assert serves(client, url)
            [api] = api_children(launcher)
            workers_before = {p.pid for p in launcher.ps.children()} - {api.pid}

            api.send_signal(signal.SIGKILL)  # by PID, as a crash
            wait_until(
                lambda: f"api (pid {api.pid}) was killed by SIGKILL; restarting it in" in launcher.log_text(),
                10,
                message=lambda: f"the launcher to say it restarts the API\n{launcher.tail()}",
            )
            wait_until(
                lambda: serves(client, url) and [p.pid for p in api_children(launcher)] not in ([], [api.pid]),
                30,
                message=lambda: f"a new API to serve\n{launcher.tail()}",
            )
            assert launcher.alive()
            assert f"restarted api (pid {api_children(launcher)[0].pid})" in launcher.log_text()
            assert workers_before <= {p.pid for p in launcher.ps.children()}  # the worker ran on

            chat_id = create_chat(client, url, "after the restart", max_tokens=20)
            assert wait_chat_status(client, url, chat_id, ["done"])["text"]

            children = launcher.ps.children()
            launcher.terminate()
            launcher.wait_stopped(20)
            assert launcher.popen.returncode == 0, launcher.tail()
            assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            assert "SIGTERM received; stopping" in launcher.log_text()
    finally:
        launcher.stop()
        cluster.close()
