"""Load and chaos drivers shared by the reliability tests: run many chats
through real processes while something bad happens, and account for every
event.

``run_chats`` submits chats (at most ``concurrency`` at once), follows each
stream to its end with tests/hardening/follow.py, and checks each one: ids
1..N once each, ``done`` last, and the text after the last ``reset`` equal to
both ``GET /chat/{id}`` and what the simulated model says for that prompt.
Every HTTP status of 500 or more seen on the way is counted.

``Killer`` is the chaos monkey: a thread that SIGKILLs a random worker every
few seconds (by PID) and starts a replacement.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness import Cluster, expected_text, get_chat, prompt_with_length, wait_until

from hardening.follow import Followed, follow

# What both chaos runs need. Faults this frequent can cost one chat its worker
# more than the default 3 times: it would then end with error/worker_lost by
# design, which is not what they test. At 40 tokens/s chats are mid-answer
# when faults hit.
CHAOS_ENV = {"TOKENFAN_MAX_ATTEMPTS": "10", "TOKENFAN_SIM_TOKENS_PER_S": "40"}


@dataclass
class ChatRun:
    chat_id: str
    prompt: str
    max_tokens: int
    posted_at: float = 0.0  # monotonic time of the 202
    followed: Followed | None = None
    state: dict[str, Any] | None = None


@dataclass
class Outcome:
    runs: list[ChatRun]
    fivexx: int = 0
    statuses: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def reconnects(self) -> int:
        return sum(r.followed.reconnects for r in self.runs if r.followed)

    @property
    def events(self) -> int:
        return sum(len(r.followed.events) for r in self.runs if r.followed)

    def worst_first_event_s(self) -> float:
        """The longest wait from a chat's acceptance to its first event (queueing included)."""
        return max(r.followed.times[0] - r.posted_at for r in self.runs)

    def resets(self) -> int:
        return sum(1 for r in self.runs for e in r.followed.events if e[1] == "reset")

    def lost_events(self) -> int:
        """Events the log holds that the client never got (the log's last seq
        minus what the client received, per chat)."""
        return sum(max(0, r.state["last_seq"] - len(r.followed.events)) for r in self.runs)


class StatusCounter:
    def __init__(self) -> None:
        self.statuses: Counter = Counter()

    async def hook(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] += 1


async def run_chats(
    cluster: Cluster,
    n: int,
    *,
    tag: str,
    concurrency: int | None = None,
    min_tokens: int = 60,
    max_tokens: int = 120,
    urls: Sequence[str] | None = None,
    follow_kwargs: Callable[[int], dict[str, Any]] | None = None,
    deadline_s: float = 120.0,
) -> Outcome:
    urls = list(urls or [api.url for api in cluster.apis])
    counter = StatusCounter()
    runs: list[ChatRun] = []
    concurrency = concurrency or n  # all at once unless told otherwise
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency * 2 + 10, max_keepalive_connections=concurrency * 2)
    timeout = httpx.Timeout(30.0, connect=10.0)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, event_hooks={"response": [counter.hook]}) as client:

        async def one(i: int) -> None:
            async with sem:
                prompt = prompt_with_length(min_tokens, max_tokens, f"{tag}-{i}")
                base = urls[i % len(urls)]
                for _ in range(100):  # 503 (queue full, Redis away) says when to come back
                    try:
                        r = await client.post(f"{base}/chat", json={"prompt": prompt, "max_tokens": max_tokens})
                    except httpx.TransportError:
                        await asyncio.sleep(0.2)  # the client's own back-off
                        continue
                    if r.status_code == 202:
                        break
                    assert r.status_code == 503, (r.status_code, r.text)
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                else:
                    raise AssertionError(f"chat {i} was never accepted")
                run = ChatRun(r.json()["id"], prompt, max_tokens, time.monotonic())
                runs.append(run)
                order = [*urls[i % len(urls) :], *urls[: i % len(urls)]]
                run.followed = await follow(
                    client, order, run.chat_id, deadline_s=deadline_s, **(follow_kwargs(i) if follow_kwargs else {})
                )

        await asyncio.gather(*(one(i) for i in range(n)))
        for run in runs:  # the final state, from any API process that answers
            for attempt in range(50):
                try:
                    r = await client.get(f"{urls[-1 - attempt % len(urls)]}/chat/{run.chat_id}")
                except httpx.TransportError:
                    continue
                if r.status_code == 200:
                    run.state = r.json()
                    break
                await asyncio.sleep(0.2)  # 503 while Redis is away: the client's back-off
    outcome = Outcome(runs, sum(c for s, c in counter.statuses.items() if s >= 500), counter.statuses)
    outcome.elapsed_s = time.monotonic() - started
    return outcome


class Progress:
    """How many events each chat of a ``run_chats`` has received, through
    ``follow_kwargs=progress.counting``: to break something once every stream
    is mid-answer."""

    def __init__(self) -> None:
        self.events: dict[int, int] = {}  # chat number -> events received

    def counting(self, i: int) -> dict[str, Any]:
        def on_event(followed: Followed, ev: Any) -> None:
            self.events[i] = len(followed.events)

        return {"on_event": on_event}

    def all_have(self, n: int, events: int) -> bool:
        """Each of the ``n`` chats has received ``events`` events or more."""
        return len(self.events) >= n and min(self.events.values()) >= events


def check_runs(outcome: Outcome) -> None:
    """Every chat complete, in order, once, ``done``, and the same text everywhere."""
    for run in outcome.runs:
        f = run.followed
        f.check()
        assert f.events[-1][1] == "done", (run.chat_id, f.events[-1])
        assert json.loads(f.events[-1][2])["finish_reason"] in ("stop", "length"), f.events[-1]
        assert run.state is not None and run.state["status"] == "done", (run.chat_id, run.state)
        assert run.state["last_seq"] == len(f.events), (run.chat_id, run.state["last_seq"], len(f.events))
        want = expected_text(run.prompt, run.max_tokens)
        assert f.text == run.state["text"] == want, (run.chat_id, f.text[:80], run.state["text"][:80], want[:80])


# --- the chaos monkey --------------------------------------------------------------


@dataclass
class Kill:
    at: float  # monotonic
    label: str


class Killer:
    """SIGKILLs a random worker of ``cluster`` every ``interval()`` seconds and
    starts a replacement at once, until stopped. A task of the test's event
    loop, in the main thread: a worker started from another thread would not
    die with the test run (PR_SET_PDEATHSIG is per thread; tests/harness.py)."""

    def __init__(self, cluster: Cluster, interval: Callable[[], float], seed: int = 6) -> None:
        self.cluster = cluster
        self.interval = interval
        self.random = random.Random(seed)
        self.kills: list[Kill] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval())  # the chaos schedule
            alive = [w for w in self.cluster.workers if w.alive()]
            if not alive:
                continue
            victim = self.random.choice(alive)
            victim.kill()  # SIGKILL by PID, reaped
            self.kills.append(Kill(time.monotonic(), victim.label))
            self.cluster.add_worker(wait=False)

    async def __aenter__(self) -> Killer:
        self._task = asyncio.create_task(self._run(), name="chaos-killer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # a failure of the killer fails the test
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def standstills(outcome: Outcome, kills: Sequence[Kill]) -> list[tuple[float, int]]:
    """For each (kill, stream) where the stream was mid-answer at the kill and
    its next event is a ``reset`` (the answer restarted elsewhere): how long
    the stream stood still, from its last event before the kill to that reset,
    and how many kills fell in that time (the worker that took the chat over
    may be killed too, before its reset: then the chat waits a second lease)."""
    out = []
    kill_times = sorted(k.at for k in kills)
    for run in outcome.runs:
        f = run.followed
        for i, (_, etype, _) in enumerate(f.events):
            if etype != "reset" or i == 0:
                continue
            before, after = f.times[i - 1], f.times[i]
            kills_in_gap = sum(before <= k <= after for k in kill_times)
            if kills_in_gap:
                out.append((after - before, kills_in_gap))
    return out


def summary(values: Sequence[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"n={len(values)} median {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, worst {ordered[-1]:.2f} s"


# --- a stalled worker ------------------------------------------------------------


def fenced(worker: Any) -> bool:
    """The worker's log says its attempt was fenced out."""
    text = worker.log_text()
    return "append refused (-1)" in text or "another attempt owns it now" in text


def stall_until_taken_over(cluster: Cluster, client: httpx.Client, chat_id: str) -> tuple[Any, Any]:
    """SIGSTOP the worker running the chat until another worker has taken it
    over and streams; SIGCONT; wait until the stalled one knows it is fenced.
    Returns (stalled worker, the one that took over)."""
    api = cluster.api
    first = cluster.worker_running(chat_id)
    wait_until(lambda: get_chat(client, api.url, chat_id)["last_seq"] >= 5, 10, 0.02, "some events")
    first.signal(signal.SIGSTOP)  # stalled, not dead
    try:
        wait_until(lambda: get_chat(client, api.url, chat_id)["attempt"] == 2, 15, 0.05, "the hand-over")
        wait_until(lambda: get_chat(client, api.url, chat_id)["last_seq"] >= 10, 10, 0.05, "the new attempt")
    finally:
        first.signal(signal.SIGCONT)
    wait_until(lambda: fenced(first), 10, 0.05, "the stalled attempt to be fenced")
    (second,) = [w for w in cluster.workers if w is not first and w.ran_job(chat_id)]
    return first, second
