"""Fixtures of the tests of what users see (the page, the CLI, metrics and
logs): clusters of real processes as in tests/e2e (helpers in uxkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .uxkit import ARTIFACTS


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
