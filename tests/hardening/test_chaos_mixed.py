"""Mixed worker chaos (issue 12): chats run on 3 workers while a monkey, every
1-2.5 s, picks one of them and either stalls it (SIGSTOP for 0.5 to 2 leases,
then SIGCONT: some stalls outlast the lease and get the chat taken over and
the staller fenced, some do not and must cost nothing), stops it gracefully
(SIGTERM, a 1 s grace: running chats are handed back) or kills it (SIGKILL);
a stopped or killed worker is replaced at once. One chat in ten has a
provider that makes the worker raise an unexpected exception
(tests/hardening/chaos_provider.py).

Every stream must end: ``done`` with exactly the text the simulated model
gives (what the client shows after the last ``reset`` equal to ``GET
/chat/{id}`` as well), or, for the chats whose provider breaks the worker,
``error`` / ``internal_error``. The run reports chats, faults, resets,
streams with the wrong text or outcome and hung streams; the last two must be
zero."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from harness import expected_text, prompt_with_length, record, stub_provider_env

from hardening.chaos import CHAOS_ENV, StatusCounter
from hardening.conftest import scale
from hardening.follow import Followed, follow

pytestmark = pytest.mark.e2e

CHATS = scale(300, 2000)
CONCURRENCY = 30
BOOM_EVERY = 10
LEASE_S = 2.0
FAULT_EVERY = (1.0, 2.5)
STALL_LEASES = (0.5, 2.0)
STREAM_DEADLINE_S = 45.0


@pytest.fixture
def cluster(clusters):
    return clusters(
        workers=3,
        env={
            **stub_provider_env("chaos_provider:generate", "hardening"),
            **CHAOS_ENV,
            "TOKENFAN_LEASE_S": str(LEASE_S),
            "TOKENFAN_BATCH_MAX_DELAY_MS": "50",
            "TOKENFAN_WORKER_SHUTDOWN_GRACE_S": "1",
            "TOKENFAN_HEARTBEAT_S": "2",
        },
    )


@dataclass
class Monkey:
    """The fault schedule: a task of the test's event loop (a worker started
    from another thread would not die with the test run)."""

    cluster: object
    rng: random.Random
    faults: Counter = field(default_factory=Counter)
    stalled: set = field(default_factory=set)
    leaving: set = field(default_factory=set)
    _stalls: list = field(default_factory=list)

    def _candidates(self):
        return [w for w in self.cluster.workers if w.alive() and w not in self.stalled and w not in self.leaving]

    async def _stall(self, worker, seconds: float) -> None:
        self.stalled.add(worker)
        worker.signal(19)  # SIGSTOP
        try:
            await asyncio.sleep(seconds)  # the fault's length, not a synchronisation
        finally:
            worker.signal(18)  # SIGCONT
            self.stalled.discard(worker)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(*FAULT_EVERY))  # the chaos schedule
            candidates = self._candidates()
            if len(candidates) < 2:  # keep one worker that answers
                continue
            victim = self.rng.choice(candidates)
            fault = self.rng.choice(["stall", "stall", "sigterm", "sigkill"])
            self.faults[fault] += 1
            if fault == "stall":
                seconds = self.rng.uniform(*STALL_LEASES) * LEASE_S
                self.faults["stall_over_lease" if seconds > LEASE_S else "stall_under_lease"] += 1
                self._stalls.append(asyncio.create_task(self._stall(victim, seconds)))
            elif fault == "sigterm":
                self.leaving.add(victim)
                victim.terminate()  # exits after its 1 s grace; reaped at the cluster's close
                self.cluster.add_worker(wait=False)
            else:
                victim.kill()
                self.cluster.add_worker(wait=False)

    async def settle(self) -> None:
        for task in self._stalls:
            task.cancel()
        await asyncio.gather(*self._stalls, return_exceptions=True)
        for worker in list(self.stalled):
            worker.signal(18)


@dataclass
class Chat:
    prompt: str
    boom: bool
    chat_id: str = ""
    followed: Followed | None = None
    hung: bool = False
    state: dict | None = None


def _wrong(chat: Chat) -> str:
    """Why the chat's stream is wrong, or ''."""
    f = chat.followed
    try:
        f.check()
    except AssertionError as exc:
        return str(exc)
    etype, data = f.events[-1][1], json.loads(f.events[-1][2])
    if chat.boom:
        if (etype, data.get("code")) != ("error", "internal_error"):
            return f"chat {chat.chat_id}: ended {etype} {data}, not error/internal_error"
        return ""
    if etype != "done":
        return f"chat {chat.chat_id}: ended {etype} {data}"
    want = expected_text(chat.prompt, 200)
    if f.text != want or (chat.state or {}).get("text") != want:
        return f"chat {chat.chat_id}: text differs from the model's"
    return ""


@pytest.mark.timeout(scale(180, 1800))
def test_stalls_stops_kills_and_a_broken_provider(cluster):
    rng = random.Random(1212)
    monkey = Monkey(cluster, rng)
    chats = [
        Chat(
            prompt_with_length(40, 120, f"mixed-{i}") + (" [boom]" if i % BOOM_EVERY == 0 else ""), i % BOOM_EVERY == 0
        )
        for i in range(CHATS)
    ]
    url = cluster.api.url
    counter = StatusCounter()

    async def one(client, sem, chat: Chat) -> None:
        async with sem:
            for _ in range(100):
                r = await client.post(f"{url}/chat", json={"prompt": chat.prompt, "max_tokens": 200})
                if r.status_code == 202:
                    break
                assert r.status_code == 503, (r.status_code, r.text)
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))  # as told
            chat.chat_id = r.json()["id"]
            try:
                chat.followed = await follow(client, [url], chat.chat_id, deadline_s=STREAM_DEADLINE_S)
            except TimeoutError:
                chat.hung = True

    async def main() -> float:
        started = time.monotonic()
        limits = httpx.Limits(max_connections=CONCURRENCY * 2 + 10)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0), limits=limits, event_hooks={"response": [counter.hook]}
        ) as client:
            task = asyncio.create_task(monkey.run(), name="chaos-monkey")
            sem = asyncio.Semaphore(CONCURRENCY)
            try:
                await asyncio.gather(*(one(client, sem, c) for c in chats))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await monkey.settle()
            for chat in chats:
                if chat.chat_id:
                    r = await client.get(f"{url}/chat/{chat.chat_id}")
                    chat.state = r.json() if r.status_code == 200 else None
        return time.monotonic() - started

    elapsed = asyncio.run(main())

    followed = [c for c in chats if c.followed is not None]
    hung = [c for c in chats if c.hung]
    wrong = [w for c in followed if (w := _wrong(c))]
    resets = sum(1 for c in followed for e in c.followed.events if e[1] == "reset")
    last = [json.loads(c.followed.events[-1][2]) for c in followed if c.followed.ended]
    ends = Counter(d.get("code") or d.get("finish_reason") for d in last)
    faults = monkey.faults
    fivexx = sum(n for s, n in counter.statuses.items() if s >= 500)
    record(
        f"mixed chaos: {len(chats)} chats ({sum(c.boom for c in chats)} with a provider that breaks the worker) "
        f"on 3 workers in {elapsed:.0f} s; faults: {faults['stall']} stalls "
        f"({faults['stall_under_lease']} under a lease, {faults['stall_over_lease']} over), "
        f"{faults['sigterm']} SIGTERMs, {faults['sigkill']} SIGKILLs; {resets} resets; "
        f"{len(wrong)} streams with the wrong text or outcome; {len(hung)} hung streams; {fivexx} 5xx; "
        f"endings {dict(ends)}"
    )
    assert not hung, [c.chat_id for c in hung]
    assert not wrong, wrong[:5]
    assert sum(faults[k] for k in ("stall", "sigterm", "sigkill")) >= scale(6, 40), "too few faults to prove anything"
