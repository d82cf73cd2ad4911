"""A worker SIGKILLed mid-generation: another worker takes the chat over when
its lease lapses, and the stream goes on with a ``reset``."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from harness import (
    assert_answer_text,
    assert_complete_sequence,
    create_chat,
    get_chat,
    lease_env,
    prompt_with_length,
    read_in_background,
    record,
)

pytestmark = pytest.mark.e2e

LEASE_S, REAPER_S = 2.0, 0.5


@pytest.fixture
def cluster(clusters):
    return clusters(workers=2, env={**lease_env(LEASE_S, REAPER_S), "TOKENFAN_SIM_TOKENS_PER_S": "200"})


def test_worker_killed_mid_generation(cluster):
    api = cluster.api
    prompt = prompt_with_length(300, 419, "failover")
    with httpx.Client(timeout=httpx.Timeout(15.0)) as client:
        chat_id = create_chat(client, api.url, prompt, max_tokens=500)
        kill: dict = {}
        ready_to_kill = threading.Event()

        def on_event(ev):
            if ev[0] == 5:
                ready_to_kill.set()

        reader, result = read_in_background(client, api.url, chat_id, on_event=on_event)
        assert ready_to_kill.wait(10), "the stream did not start"
        victim = cluster.worker_running(chat_id, timeout=5)
        (survivor,) = [w for w in cluster.workers if w is not victim]
        victim.kill()  # SIGKILL by PID
        kill["at"] = time.monotonic()
        kill["status"] = get_chat(client, api.url, chat_id)["status"]
        reader.join(30)
        assert not reader.is_alive(), "the stream never ended"
        (read,) = result
        state = get_chat(client, api.url, chat_id)

    assert kill["status"] == "running"
    assert read.closed_by_server
    assert_complete_sequence(read.events)
    types = [e[1] for e in read.events]
    assert types[-1] == "done"
    assert json.loads(read.events[-1][2])["finish_reason"] == "stop"
    assert "reset" in types, "no reset event after the takeover"
    reset = read.events[types.index("reset")]
    assert json.loads(reset[2])["attempt"] == 2
    assert survivor.ran_job(chat_id)
    assert_answer_text(read.events, state, prompt, 500)
    assert state["status"] == "done" and state["attempt"] == 2

    # How long the stream stood still: last event of the dead attempt -> the reset.
    i = types.index("reset")
    stall = read.times[i] - read.times[i - 1]
    assert read.times[i - 1] <= kill["at"] + 0.5 < read.times[i]
    record(f"worker SIGKILL: stream stood still {stall:.2f} s (lease {LEASE_S:g} s, reaper {REAPER_S:g} s)")
    assert stall < LEASE_S + 3
