"""SIGTERM to a worker (a deploy): generations that finish within the grace
period (``TOKENFAN_WORKER_SHUTDOWN_GRACE_S``, 3 s here, 5 s by default) end
normally on it; the others are handed back when it runs out and resumed at
once by another worker, after a ``reset``. Nothing is lost, the worker exits
within the grace period plus a little, and the stream of a handed-back chat
stands still only for the handover, not for a lease to lapse."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from harness import DEFAULT_LEASE_S, DEFAULT_REAPER_S, expected_text, lease_env, prompt_with_length, record, wait_until

from hardening.follow import follow

pytestmark = pytest.mark.e2e

GRACE_S = 3.0
TOKENS_PER_S = 50


@pytest.fixture
def cluster(clusters):
    env = {"TOKENFAN_WORKER_SHUTDOWN_GRACE_S": str(GRACE_S), "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)}
    # The default lease settings: a handover must not wait for the lease.
    return clusters(workers=1, env={**env, **lease_env(DEFAULT_LEASE_S, DEFAULT_REAPER_S)})


def test_sigterm_lets_short_generations_finish_and_hands_back_the_rest(cluster):
    api = cluster.api
    first = cluster.workers[0]
    # 1.2-1.8 s answers (finish within the grace) and ~7 s ones (do not).
    short = [prompt_with_length(60, 90, f"short-{i}") for i in range(4)]
    long = [prompt_with_length(330, 380, f"long-{i}") for i in range(4)]
    marks: dict = {}

    async def main():
        async with httpx.AsyncClient(base_url=api.url, timeout=30.0) as client:
            ids = []
            for prompt in short + long:
                r = await client.post("/chat", json={"prompt": prompt, "max_tokens": 500})
                assert r.status_code == 202
                ids.append(r.json()["id"])
            follows = [asyncio.create_task(follow(client, [api.url], chat_id, deadline_s=60)) for chat_id in ids]

            async def all_running() -> bool:
                states = [(await client.get(f"/chat/{c}")).json() for c in ids]
                return all(s["status"] == "running" and s["last_seq"] >= 1 for s in states)

            deadline = time.monotonic() + 20
            while not await all_running():
                assert time.monotonic() < deadline, "the chats did not all start"
                await asyncio.sleep(0.02)
            marks["sigterm"] = time.monotonic()
            first.terminate()  # SIGTERM by PID
            # Someone to hand over to, ready well within the grace period.
            marks["second"] = await asyncio.to_thread(cluster.add_worker)
            await asyncio.to_thread(first.wait_stopped, GRACE_S + 10)
            marks["exited"] = time.monotonic()
            return ids, await asyncio.gather(*follows), [(await client.get(f"/chat/{c}")).json() for c in ids]

    ids, followed, states = asyncio.run(main())
    assert not first.killed_hard, "the worker did not exit on SIGTERM"
    exit_s = marks["exited"] - marks["sigterm"]
    handovers = []
    for i, (f, state) in enumerate(zip(followed, states, strict=True)):
        prompt = (short + long)[i]
        f.check()
        assert f.events[-1][1] == "done" and json.loads(f.events[-1][2])["finish_reason"] == "stop"
        assert f.text == state["text"] == expected_text(prompt, 500)
        resets = [j for j, e in enumerate(f.events) if e[1] == "reset"]
        if i < len(short):
            assert not resets and state["attempt"] == 1, f"short chat {i} was restarted: {state}"
            assert f.times[-1] > marks["sigterm"], f"short chat {i} ended before the SIGTERM: proves nothing"
        else:
            assert len(resets) == 1 and state["attempt"] == 2, f"long chat {i}: {state}, resets {resets}"
            j = resets[0]
            # It went on streaming during the grace period, then moved at once.
            assert f.times[j - 1] > marks["sigterm"] + GRACE_S - 0.5
            handovers.append(f.times[j] - f.times[j - 1])
    assert marks["second"].ran_job(ids[-1])
    record(
        f"worker SIGTERM (grace {GRACE_S:g} s): {len(short)} short chats finished on it, {len(long)} long ones "
        f"handed over with a reset; worker exited {exit_s:.2f} s after SIGTERM; handover standstill worst "
        f"{max(handovers):.2f} s (lease {DEFAULT_LEASE_S:g} s not waited for)"
    )
    assert exit_s < GRACE_S + 4
    assert max(handovers) < 3.0
    assert "shutdown on SIGTERM" in first.log_text()
    wait_until(lambda: cluster.redis.zcard("tf:running") == 0, 10, message="no lease left behind")
