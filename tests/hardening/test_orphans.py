"""A worker SIGKILLed after arq marked a job in progress but before the job
claimed its chat (and took the chat's lease) leaves an in-progress key and no
lease. The long chaos run hit it (1 chat in 1,000, with ~200 kills): with
arq's own in-progress TTL (``job_timeout`` + 10 s) the chat waited an hour.
The worker now sets that TTL to one lease and renews it with the lease
(worker/arq_worker.py ``create_worker``, shared/scripts.py ``RENEW``), so such a
job is started again within a lease. Here that state is made on purpose."""

from __future__ import annotations

import time

import httpx
import pytest
from arq.constants import in_progress_key_prefix
from harness import create_chat, expected_text, lease_env, prompt_with_length, record, wait_until

pytestmark = pytest.mark.e2e

LEASE_S, REAPER_S, JOB_TIMEOUT_S = 2.0, 0.5, 3600


@pytest.fixture
def cluster(clusters):
    return clusters(workers=0, env={**lease_env(LEASE_S, REAPER_S), "TOKENFAN_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S)})


def test_a_job_started_but_never_claimed_is_handed_on(cluster):
    api, r = cluster.api, cluster.redis
    prompt = prompt_with_length(20, 40, "orphan")
    with httpx.Client(timeout=10.0) as client:
        chat_id = create_chat(client, api.url, prompt, max_tokens=100)
        done_chat = create_chat(client, api.url, prompt + " done", max_tokens=100)
        # As a worker killed before its claims leaves them: in progress since
        # just now, no lease; and one whose chat had already ended.
        lease_ms = int(LEASE_S * 1000)
        r.psetex(in_progress_key_prefix + chat_id, lease_ms, b"1")
        r.psetex(in_progress_key_prefix + done_chat, lease_ms, b"1")
        assert client.delete(f"{api.url}/chat/{done_chat}").status_code == 200
        started = time.monotonic()
        worker = cluster.add_worker()

        state = wait_until(
            lambda: (s := client.get(f"{api.url}/chat/{chat_id}").json())["status"] == "done" and s,
            LEASE_S + 10,
            0.05,
            "the orphaned chat to run",
        )
        took = time.monotonic() - started
        assert state["text"] == expected_text(prompt, 100) and state["attempt"] == 1
        queue = cluster.env["TOKENFAN_QUEUE_NAME"]
        wait_until(lambda: r.zcard(queue) == 0, 10, 0.05, "both jobs to leave the queue")
    assert worker.alive()
    record(f"orphaned job (in progress, no lease): run {took:.1f} s after a worker came (lease {LEASE_S:g} s)")
    assert took < LEASE_S + 6
