"""A deterministic stand-in for an LLM: the same prompt gives the same answer
on every attempt and every machine, at a configurable speed. Serves demos,
tests and benchmarks with no network."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from worker.providers.base import ChatRequest, Finish

_WORDS = (
    "the queue carries every token from the model to each reader in order and a stream that "
    "drops comes back where it left off while workers scale on their own so nothing is lost "
    "when a process restarts because the log in redis keeps what was said"
).split()


def prompt_text(request: ChatRequest) -> str:
    parts = ([request.system] if request.system else []) + [m["content"] for m in request.messages]
    return "\n".join(parts)


def answer_length(prompt: str) -> int:
    """How many tokens the simulated model says before it stops by itself."""
    return 20 + _seed(prompt) % 400


def answer_tokens(prompt: str, max_tokens: int) -> list[str]:
    rng = random.Random(_seed(prompt))
    count = min(answer_length(prompt), max_tokens)
    tokens = []
    for i in range(count):
        word = rng.choice(_WORDS)
        if i == 0:
            tokens.append(word.capitalize())
        elif rng.random() < 0.08:
            tokens.append(rng.choice((",", ".")) + " " + word)
        else:
            tokens.append(" " + word)
    return tokens


def _seed(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")


class SimulatedProvider:
    def __init__(self, ttft_ms: float = 50.0, tokens_per_s: float = 50.0) -> None:
        self.ttft_s = ttft_ms / 1000
        self.interval_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0

    async def __call__(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        prompt = prompt_text(request)
        tokens = answer_tokens(prompt, request.max_tokens)
        loop = asyncio.get_running_loop()
        start = loop.time() + self.ttft_s
        for i, token in enumerate(tokens):
            # An absolute schedule: the rate holds however long the consumer takes.
            delay = start + i * self.interval_s - loop.time()
            await asyncio.sleep(max(delay, 0))
            yield token
        finish_reason = "length" if len(tokens) < answer_length(prompt) else "stop"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens)}
        yield Finish(finish_reason, usage)
