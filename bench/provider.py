"""A provider for the resume scenario (``TOKENFAN_PROVIDER=bench.provider:numbered``):
``max_tokens`` short tokens, one every ``TOKEN_INTERVAL_S``. The simulated
model stops by itself after at most 419 tokens; a resume of 500 missed events
needs a longer answer. Spaced out, each token is appended as its own event
(with ``TOKENFAN_BATCH_MAX_TOKENS=1``), so the log has about as many events
as the answer has tokens."""

from __future__ import annotations

import asyncio

from worker.providers.base import ChatRequest, Finish

TOKEN_INTERVAL_S = 0.001


async def numbered(request: ChatRequest):
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(request.max_tokens):
        delay = start + i * TOKEN_INTERVAL_S - loop.time()
        await asyncio.sleep(max(delay, 0))
        yield f" t{i}"
    yield Finish("length", {"prompt_tokens": 1, "completion_tokens": request.max_tokens})
