"""The worker-crash chaos loop: chats run on 3 workers while a random worker
is SIGKILLed every few seconds (and replaced). Every chat must end with
``done`` (after ``reset``s where its worker died), none may hang, the text a
client reassembles after the last ``reset`` must equal ``GET /chat/{id}``,
no event may be lost, duplicated or reordered, and no request may get a 5xx.

It runs with tokenfan's DEFAULT lease settings (``TOKENFAN_LEASE_S`` 6,
``TOKENFAN_REAPER_INTERVAL_S`` 1), so the standstill it records is the one a
deployment gets. CI variant: 200 chats, a kill every 2-4 s (~40 s). Long
variant (``TOKENFAN_HARDENING_LONG=1``): 2,000 chats (~3 min, ~50 kills).
``max_attempts`` is raised (hardening/chaos.py ``CHAOS_ENV``)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from harness import DEFAULT_LEASE_S, DEFAULT_REAPER_S, lease_env, record

from hardening.chaos import CHAOS_ENV, Killer, check_runs, run_chats, standstills, summary
from hardening.conftest import scale

pytestmark = pytest.mark.e2e

CHATS = scale(200, 2000)
CONCURRENCY = 40
KILL_EVERY = (2.0, 4.0)


@pytest.fixture
def cluster(clusters):
    leases = lease_env(DEFAULT_LEASE_S, DEFAULT_REAPER_S)
    return clusters(
        workers=3, env={**leases, **CHAOS_ENV, "TOKENFAN_BATCH_MAX_DELAY_MS": "100", "TOKENFAN_HEARTBEAT_S": "5"}
    )


@pytest.mark.timeout(scale(240, 1800))
def test_workers_killed_at_random(cluster):
    rng = random.Random(2026)
    killer = Killer(cluster, lambda: rng.uniform(*KILL_EVERY))

    async def main():
        async with killer:
            return await run_chats(cluster, CHATS, concurrency=CONCURRENCY, tag="chaos", deadline_s=180)

    outcome = asyncio.run(main())

    check_runs(outcome)
    stalls_and_kills = standstills(outcome, killer.kills)
    stalls = [stall for stall, _ in stalls_and_kills]
    attempts = Counter(run.state["attempt"] for run in outcome.runs)
    worst_gap = max(run.followed.max_gap() for run in outcome.runs)
    record(
        f"worker chaos: {len(outcome.runs)} chats on 3 workers in {outcome.elapsed_s:.0f} s, "
        f"{len(killer.kills)} workers SIGKILLed, {outcome.resets()} resets, {outcome.events} events, "
        f"{outcome.lost_events()} lost, {outcome.fivexx} 5xx, {outcome.reconnects} reconnects; "
        f"attempts {dict(sorted(attempts.items()))}"
    )
    record(
        f"worker chaos: stream standstill across a kill (lease {DEFAULT_LEASE_S:g} s, reaper {DEFAULT_REAPER_S:g} s): "
        f"{summary(stalls)}; longest gap in any stream {worst_gap:.2f} s; longest wait for a first event "
        f"{outcome.worst_first_event_s():.2f} s"
    )
    assert len(outcome.runs) == CHATS
    assert len(killer.kills) >= scale(5, 30), "the run was too short to kill workers"
    assert stalls, "no stream was mid-answer at a kill: the test proved nothing"
    assert outcome.lost_events() == 0 and outcome.fivexx == 0
    # About 10 s or less whatever the longest generation allowed (DESIGN.md §3):
    # lease 6 s + reaper 1 s + pickup, per worker death the chat meets; 5 s of
    # slack for a loaded 2-core machine. With a kill every 2-4 s, the worker
    # that took a chat over is sometimes killed too, holding the job before its
    # reset (seen: 12.1 s); a chat meeting a third death in one gap is not
    # allowed for.
    for stall, kills_in_gap in stalls_and_kills:
        assert stall < (DEFAULT_LEASE_S + DEFAULT_REAPER_S) * min(kills_in_gap, 2) + 5.0, (stall, kills_in_gap)
