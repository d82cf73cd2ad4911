"""Fixtures of the tests that drive third-party clients in Node (the AI SDK's
useChat and its OpenAI provider): the packages of package.json, installed on
first use, and clusters of real processes.

No skip: without Node 20+ and npm these tests fail (CI has them)."""

from __future__ import annotations

import pytest

from .nodekit import install

# A simulated model slow enough that a second client can join mid-answer,
# and heartbeats often enough that every stream here carries some.
ENV = {"TOKENFAN_SIM_TTFT_MS": "5", "TOKENFAN_SIM_TOKENS_PER_S": "80", "TOKENFAN_HEARTBEAT_S": "0.1"}


@pytest.fixture(scope="session")
def node_packages() -> None:
    problem = install()
    if problem is not None:
        pytest.fail(f"the Node clients cannot run: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def cluster(module_clusters, node_packages):
    return module_clusters("clients", env=ENV)


@pytest.fixture(scope="module")
def idle_cluster(module_clusters, node_packages):
    """An API with no worker: the test writes the chats' events itself."""
    return module_clusters("clients-idle", workers=0, env=ENV)
