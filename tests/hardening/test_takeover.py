"""Take-overs and arq's job lifetime (issue 12, items 4 and 5): several runs
of one chat's job can be alive at once (a stalled worker's and the one that
took its chat over), and they share the job's keys in arq. Whatever mix of
stalls, graceful stops and arq time-outs they meet, a chat must end with
``done`` and the exact text, after one reset per hand-over, never with an
attempt burned by a run that fenced its own chat."""

from __future__ import annotations

import httpx
import pytest
from harness import expected_text, get_chat, prompt_with_length, read_in_background, record, wait_until

from hardening.chaos import stall_until_taken_over

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(clusters):
    # FAST_ENV: lease 2 s, reaper every 0.5 s. No shutdown grace: SIGTERM hands back at once.
    return clusters(workers=2, env={"TOKENFAN_SIM_TOKENS_PER_S": "60", "TOKENFAN_WORKER_SHUTDOWN_GRACE_S": "0"})


def test_a_stall_then_a_graceful_stop_costs_two_resets_not_the_chat(cluster):
    """Issue 12, item 4: A stalled (SIGSTOP, SIGCONT), B stopped with SIGTERM,
    C started. Before: the fenced job A took the chat back after B's arq had
    deleted the in-progress key, C started the job again and fenced A, and the
    chat ended error/worker_lost ("gave up after 3 attempts")."""
    api = cluster.api
    prompt = prompt_with_length(390, 419, "takeover")  # ~7 s at 60 tokens/s
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        chat_id = client.post(f"{api.url}/chat", json={"prompt": prompt, "max_tokens": 500}).json()["id"]
        reader, result = read_in_background(client, api.url, chat_id)
        _, second = stall_until_taken_over(cluster, client, chat_id)
        assert get_chat(client, api.url, chat_id)["status"] == "running"

        second.stop()  # SIGTERM: a deploy; waits for the process to exit
        cluster.add_worker()  # C

        reader.join(60)
        assert not reader.is_alive(), "the stream never ended"
        (read,) = result
        state = get_chat(client, api.url, chat_id)
    assert read.closed_by_server and read.events[-1][1] == "done", read.events[-1]
    ids = [e[0] for e in read.events]
    assert ids == list(range(1, len(ids) + 1))
    assert state["status"] == "done" and state["attempt"] == 3, state
    assert state["text"] == expected_text(prompt, 500)
    assert [e[1] for e in read.events].count("reset") == 2
    record("take-over: stall + SIGTERM + new worker: chat done after 3 attempts, 2 resets, exact text")


@pytest.fixture
def slow_cluster(clusters):
    # The settings: lease 4 s, job_timeout 20 s (a generation may run 10 s).
    return clusters(
        workers=2,
        env={
            "TOKENFAN_SIM_TOKENS_PER_S": "50",
            "TOKENFAN_LEASE_S": "4",
            "TOKENFAN_JOB_TIMEOUT_S": "20",
            "TOKENFAN_WORKER_SHUTDOWN_GRACE_S": "0",
        },
    )


def test_arqs_job_timeout_never_drops_a_chat_that_runs(slow_cluster):
    """Issue 12, item 5: before, the fenced job waited, took the chat back when
    the new owner died, and arq's job_timeout (counted from that job's own
    start) fired in the middle: arq deleted the job, and the chat hung
    running forever. Now every hand-over is a run of its own, with its own
    job_timeout."""
    cluster = slow_cluster
    api = cluster.api
    prompt = prompt_with_length(390, 419, "jobtimeout")  # ~8 s at 50 tokens/s
    want = expected_text(prompt, 500)
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        chat_id = client.post(f"{api.url}/chat", json={"prompt": prompt, "max_tokens": 500}).json()["id"]
        reader, result = read_in_background(client, api.url, chat_id)
        _, second = stall_until_taken_over(cluster, client, chat_id)
        # Late in the second attempt (its job has run > 7 s of the first job's 20 s):
        wait_until(lambda: len(get_chat(client, api.url, chat_id)["text"]) >= 0.75 * len(want), 15, 0.05, "3/4")
        second.kill()  # the new owner dies; a re-run of the whole answer outlasts the first job's timeout

        reader.join(45)
        assert not reader.is_alive(), "the stream never ended"
        (read,) = result
        state = get_chat(client, api.url, chat_id)
    assert read.closed_by_server and read.events[-1][1] == "done", read.events[-1]
    assert state["status"] == "done" and state["attempt"] == 3, state
    assert state["text"] == want
    record("take-over: arq's job_timeout during a re-run: chat done after 3 attempts, exact text")
