"""A provider for the slow-client test (``TOKENFAN_PROVIDER=fat_provider:generate``):
``max_tokens`` pieces of ``TF_E2E_PIECE_BYTES`` bytes at ``TF_E2E_PIECES_PER_S``,
so that a stream is far larger than any socket buffer. Piece ``i`` starts with
``<i>`` so a reader can check that nothing was lost or repeated."""

from __future__ import annotations

import asyncio
import os

from worker.providers.base import ChatRequest, Finish


def piece(i: int, size: int) -> str:
    head = f"<{i:07d}>"
    return head + "x" * max(size - len(head), 0)


async def generate(request: ChatRequest):
    size = int(os.environ.get("TF_E2E_PIECE_BYTES", "2048"))
    rate = float(os.environ.get("TF_E2E_PIECES_PER_S", "5000"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(request.max_tokens):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 50 == 0:
            await asyncio.sleep(0)
        yield piece(i, size)
    yield Finish("length", {"prompt_tokens": 1, "completion_tokens": request.max_tokens})
