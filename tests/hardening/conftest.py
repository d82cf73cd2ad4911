"""Fixtures of the hardening tests: the end-to-end ones' clusters of real
processes (tests/e2e/conftest.py), and the switch between the CI variant and
the long one of the chaos runs.

``TOKENFAN_HARDENING_LONG=1 ./dev test tests/hardening`` runs the long
variants (minutes: more chats, more kills, arq's and tokenfan's default lease
settings); without it each run is sized for CI (seconds)."""

from __future__ import annotations

import os

import pytest
from e2e.conftest import clusters, module_clusters, pytest_runtest_makereport  # noqa: F401  (fixtures, hook)

LONG = os.environ.get("TOKENFAN_HARDENING_LONG", "") not in ("", "0")


def scale(ci, long):
    """The CI value, or the long variant's."""
    return long if LONG else ci


@pytest.fixture(scope="session")
def long_run() -> bool:
    return LONG


def pytest_terminal_summary(terminalreporter, config):
    """The measurements of the run, when tests/e2e's conftest (which prints
    them too) is not part of it."""
    from harness import MEASUREMENTS

    if any(str(getattr(p, "__file__", "")).endswith("e2e/conftest.py") for p in config.pluginmanager.get_plugins()):
        return
    if MEASUREMENTS:
        terminalreporter.section("hardening measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
