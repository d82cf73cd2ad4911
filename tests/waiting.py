"""Waiting on a condition with a deadline, in a coroutine: the only
synchronisation tests use (bench/processes.py holds the one implementation)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.processes import async_wait_until


async def eventually(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0, interval: float = 0.01):
    """Await until ``predicate()`` is truthy (returned); fail after ``timeout`` seconds."""
    return await async_wait_until(predicate, timeout, interval, message=repr(predicate))
