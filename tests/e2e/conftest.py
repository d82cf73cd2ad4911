"""Fixtures of the end-to-end tests: clusters of real processes, torn down
(by PID) at the end of the test or module that made them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import MEASUREMENTS, ClusterFactory


@pytest.fixture(scope="module")
def module_clusters(redis_server, request) -> Iterator[ClusterFactory]:
    """Make clusters shared by the tests of one module."""
    factory = ClusterFactory(redis_server, request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def clusters(redis_server, request) -> Iterator[ClusterFactory]:
    """Make clusters for one test only."""
    factory = ClusterFactory(redis_server, request.node.name.removeprefix("test_")[:40])
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("e2e"):
        for cluster in ClusterFactory.active:
            for proc in cluster.processes:
                report.sections.append((f"log of {proc} (alive={proc.alive()})", proc.tail(40)))


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("e2e measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
