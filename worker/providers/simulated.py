"""A deterministic stand-in for an LLM: the same prompt gives the same answer
on every attempt and every machine, at a configurable speed. Serves demos,
tests and benchmarks with no network.

The answer is readable prose: whole sentences from a small corpus about
queues and streaming, picked by a generator seeded from a hash of the prompt,
as many as fill the answer's length (``answer_length``, 20..419 tokens)
exactly, so an answer that stops by itself ends at the end of a sentence.
Tokens are words: the first as it is, every other one with one leading space
(the benchmark counts tokens by counting spaces)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from worker.providers.base import ChatRequest, Finish

_SENTENCES = (
    "A queue decouples the request from the work.",
    "Nothing said is ever lost.",
    "Resume is exact, never approximate.",
    "Every reader sees the same text.",
    "The queue never forgets a chat.",
    "A chat accepted by the front door is never dropped, however busy the workers are.",
    "The log in Redis keeps what was said.",
    "Each token is appended once and read many times.",
    "Workers scale on their own, on any machine.",
    "A reader that drops comes back where it left off.",
    "The stream resumes from the last event the client saw.",
    "Every event carries a number, one after another, with no gap.",
    "A slow reader never holds up the others.",
    "When a worker dies, another one takes the chat over within seconds.",
    "The answer then starts again from the beginning, and the page clears its text.",
    "One subscription per process is enough for thousands of readers.",
    "Batching follows the round trip, so a fast model sends fewer, larger events.",
    "Cancelling a chat closes the model's stream at once.",
    "Time to first token is what a person notices first.",
    "The front door answers at once and the work happens elsewhere.",
    "A queue absorbs bursts that the model could not take.",
    "Redis holds the log, the metadata and a channel for each chat.",
    "Replaying a finished chat costs one read of its log.",
    "Heartbeats keep idle connections open through proxies.",
    "Each worker holds a lease on the chats it runs and renews it often.",
    "A lease that lapses tells the others that its worker is gone.",
    "Fencing keeps a worker that wakes up late from writing over newer text.",
    "The client sends the last id it received and gets exactly what it missed.",
    "Streams are plain Server-Sent Events, so any browser can read them.",
    "Logs expire a day after the last write.",
    "Backpressure is handled by dropping the slow reader back to the log.",
    "Nothing in the path waits for the slowest client.",
    "Several API processes can serve the same chat side by side.",
    "A deploy restarts the API, and the streams pick up where they were.",
    "Tokens arrive in order, however many times the connection drops.",
    "This answer comes from a simulated model.",
    "The simulated model writes the same text for the same prompt, every time.",
    "The simulated model's speed is a setting, so tests and benchmarks run quickly.",
    "Point the worker at a real model to hear something new.",
    "Queues make the hard part boring, which is the point.",
)

_BY_LENGTH: dict[int, list[tuple[str, ...]]] = {}
for _sentence in _SENTENCES:
    _words = tuple(_sentence.split())
    _BY_LENGTH.setdefault(len(_words), []).append(_words)
_SHORTEST = min(_BY_LENGTH)
_LONGEST = max(_BY_LENGTH)
# Any remainder from _SHORTEST to _LONGEST words is one sentence: the answer
# always ends on a full stop. (Checked by the unit tests.)
assert all(n in _BY_LENGTH for n in range(_SHORTEST, _LONGEST + 1))


def prompt_text(request: ChatRequest) -> str:
    parts = ([request.system] if request.system else []) + [m["content"] for m in request.messages]
    return "\n".join(parts)


def answer_length(prompt: str) -> int:
    """How many tokens the simulated model says before it stops by itself."""
    return 20 + _seed(prompt) % 400


def answer_tokens(prompt: str, max_tokens: int) -> list[str]:
    """The first ``max_tokens`` tokens of the prompt's answer (a prefix of the
    whole answer, whatever ``max_tokens``)."""
    rng = random.Random(_seed(prompt))
    remaining = answer_length(prompt)
    words: list[str] = []
    recent: list[tuple[str, ...]] = []
    while remaining > 0 and len(words) < max_tokens:
        # A sentence that ends the answer exactly, or leaves room for one more.
        fits = [s for n, group in _BY_LENGTH.items() if n == remaining or n <= remaining - _SHORTEST for s in group]
        fresh = [s for s in fits if s not in recent] or fits
        sentence = rng.choice(fresh)
        recent = (recent + [sentence])[-12:]
        words.extend(sentence)
        remaining -= len(sentence)
    return [word if i == 0 else " " + word for i, word in enumerate(words[:max_tokens])]


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
