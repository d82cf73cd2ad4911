"""Helpers of the tests of what users see (the page, the CLI, metrics and logs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness import HOST, REPO, ApiProcess, Cluster, process_env

ARTIFACTS = REPO / "tests" / "artifacts" / "ux"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def restart_api(cluster: Cluster, old: ApiProcess) -> ApiProcess:
    """SIGKILL ``old`` (by PID) and start a new API process on the same port
    with the cluster's environment; it is stopped with the cluster."""
    old.kill()
    env = process_env(cluster.redis_url, {"TOKENFAN_HOST": HOST, "TOKENFAN_PORT": str(old.port), **cluster.env})
    new = ApiProcess(env, f"{old.label}-restarted")
    cluster.apis.append(new)
    new.wait_ready()
    return new


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFAN_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def cli_argv(base_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tokenfan", "chat", "--url", base_url, *args]
