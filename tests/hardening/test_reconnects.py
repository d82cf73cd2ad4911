"""1,000 random disconnect/reconnect points across 50 concurrent chats: each
client drops its connection at a random byte offset (mid-frame included) ~20
times during its chat, and reconnects at once with ``Last-Event-ID`` to one
of two API processes in turn. No event may be lost, duplicated or reordered:
what each client assembles is exactly the chat's log, and its text is the
chat's text."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from harness import record

from hardening.chaos import check_runs, run_chats
from hardening.conftest import scale
from hardening.follow import follow

pytestmark = pytest.mark.e2e

CONCURRENT = 50
CHATS = scale(50, 250)  # the long variant: 5,000+ cuts over 250 chats, 50 at a time
CUTS_PER_CHAT = 21  # a chat may end before its last cut: at least 20 each is asserted


@pytest.fixture
def cluster(clusters):
    return clusters(apis=2, workers=2, env={"TOKENFAN_SIM_TOKENS_PER_S": "80"})


def test_random_disconnects(cluster):
    rngs = {i: random.Random(1000 + i) for i in range(CHATS)}

    def cutting(i: int) -> dict:
        rng = rngs[i]

        def cut(followed) -> int | None:
            # The first CUTS_PER_CHAT connections are cut at a random byte
            # (0..600: from before the retry field to a few frames in).
            return rng.randint(0, 600) if followed.cuts < CUTS_PER_CHAT else None

        return {"cut": cut, "reconnect_delay": lambda f: 0.0}

    outcome = asyncio.run(
        run_chats(
            cluster,
            CHATS,
            concurrency=CONCURRENT,
            tag="reconnect",
            min_tokens=300,
            max_tokens=419,
            follow_kwargs=cutting,
            deadline_s=120,
        )
    )
    check_runs(outcome)
    cuts = sum(r.followed.cuts for r in outcome.runs)

    # Compare with the log as a client that never dropped gets it.
    async def full_reads():
        async with httpx.AsyncClient(timeout=30.0) as client:
            return await asyncio.gather(*(follow(client, [cluster.api.url], r.chat_id) for r in outcome.runs))

    for run, full in zip(outcome.runs, asyncio.run(full_reads()), strict=True):
        assert run.followed.events == full.events, run.chat_id
    # Cuts made while the chat was still being generated (before its done arrived).
    live = sum(sum(1 for end in r.followed.connection_ends[:-1] if end < r.followed.times[-1]) for r in outcome.runs)
    record(
        f"random disconnects: {cuts} cuts ({live} during generation; {outcome.reconnects} reconnects) across {CHATS} "
        f"chats ({CONCURRENT} at a time) on 2 APIs; "
        f"{outcome.events} events, {outcome.lost_events()} lost, 0 duplicated or reordered, {outcome.fivexx} 5xx"
    )
    assert cuts >= CHATS * 20 and live > cuts / 2
    assert outcome.lost_events() == 0 and outcome.fivexx == 0
