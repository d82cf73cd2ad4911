"""The switch between the CI variant and the long one of the chaos runs
(clusters of real processes come from tests/conftest.py).

``TOKENFAN_HARDENING_LONG=1 ./dev test tests/hardening`` runs the long
variants (minutes: more chats, more kills, arq's and tokenfan's default lease
settings); without it each run is sized for CI (seconds)."""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("TOKENFAN_HARDENING_LONG", "") not in ("", "0")


def scale(ci, long):
    """The CI value, or the long variant's."""
    return long if LONG else ci


@pytest.fixture(scope="session")
def long_run() -> bool:
    return LONG
