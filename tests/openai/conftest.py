"""Fixtures of the OpenAI-compatibility tests: one cluster of real processes
(uvicorn API + arq worker, from tests/harness.py) on its own Redis database and
arq queue, shared by the module.

No ``__init__.py`` in this folder on purpose: as a package it would be
importable as ``openai`` (tests/ is on sys.path) and shadow the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Cluster, ClusterFactory

# A fast simulated model, heartbeats every 50 ms (so every stream here carries
# some: the SDK must survive them), and low limits for the error tests.
ENV = {
    "TOKENFAN_SIM_TTFT_MS": "5",
    "TOKENFAN_SIM_TOKENS_PER_S": "400",
    "TOKENFAN_HEARTBEAT_S": "0.05",
    "TOKENFAN_MAX_PROMPT_CHARS": "2000",
    "TOKENFAN_MAX_TOKENS_LIMIT": "1000",
}
IDLE_JOB_TIMEOUT_S = 3  # tests read it back from the cluster's env


@pytest.fixture(scope="module")
def cluster(redis_server) -> Iterator[Cluster]:
    factory = ClusterFactory(redis_server, "openai")
    try:
        yield factory(env=ENV)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def idle_cluster(redis_server) -> Iterator[Cluster]:
    """An API with no worker: its chats stay queued, so a waiting client
    waits until it gives up or the deadline (job_timeout_s) passes."""
    factory = ClusterFactory(redis_server, "openai-idle")
    try:
        yield factory(workers=0, env={**ENV, "TOKENFAN_JOB_TIMEOUT_S": str(IDLE_JOB_TIMEOUT_S)})
    finally:
        factory.close()
