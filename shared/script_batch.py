"""Group commit across chats: calls of one Lua script, sent together.

A worker streams hundreds of chats at once, and each token batch is one call
of the append script. One call each is a write, a read and an event-loop
wake-up per call on the worker, and a read and a write per call on Redis.
Here the first call goes out at once, alone (no waiting for company: a quiet
worker's latency is one round trip, as before), and the calls made while it
is in flight go out together as one pipeline when it returns, and so on. A
busy worker sends fewer, larger writes; nobody waits for a window.

Each call still runs as its own script (its own atomic step, its own result
or error); only the round trips are shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Call = tuple[Sequence[Any], Sequence[Any], asyncio.Future]  # keys, args, its result


class ScriptBatch:
    def __init__(self, redis: Redis, script: str) -> None:
        self.redis = redis
        self._script = redis.register_script(script)
        self._source, self._sha = script, self._script.sha
        self._pending: list[Call] = []
        self._sending = False
        self._task: asyncio.Task | None = None  # the pipeline in flight (held: the loop keeps only weak ones)

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._sending:
            future = asyncio.get_running_loop().create_future()
            self._pending.append((keys, args, future))
            return await future
        self._sending = True
        try:
            return await self._script(keys=keys, args=args)
        finally:
            self._send_pending()

    def _send_pending(self) -> None:
        """After a send: those that waited go out in one pipeline (its own task,
        so that the caller whose call just returned is not held up)."""
        if self._pending:
            calls, self._pending = self._pending, []
            self._task = asyncio.get_running_loop().create_task(self._send(calls))
        else:
            self._sending = False

    async def _send(self, calls: list[Call]) -> None:
        try:
            try:
                results = await self._pipeline(calls)
                if any(isinstance(r, NoScriptError) for r in results):
                    # Redis restarted (its script cache is empty): load, send again.
                    await self.redis.script_load(self._source)
                    results = await self._pipeline(calls)
            except Exception as exc:  # the connection failed: every call fails with it
                results = [exc] * len(calls)
            for (_, _, future), result in zip(calls, results, strict=True):
                if future.done():
                    continue  # its caller was cancelled
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except asyncio.CancelledError:  # shutting down
            for _, _, future in calls:
                future.cancel()
            raise
        finally:
            self._send_pending()

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)
