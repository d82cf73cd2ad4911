"""Fixtures of the tests of what users see (the page, the CLI, metrics and
logs): clusters of real processes as in tests/e2e (helpers in uxkit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ClusterFactory

from .uxkit import ARTIFACTS


@pytest.fixture(scope="module")
def module_clusters(redis_server) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(redis_server, "ux")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as c:
        yield c


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, the tails of the processes' logs (as tests/e2e does)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for cluster in ClusterFactory.active:
            for proc in cluster.processes:
                report.sections.append((f"log of {proc} (alive={proc.alive()})", proc.tail(40)))
