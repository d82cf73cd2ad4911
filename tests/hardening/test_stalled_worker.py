"""Two attempts at once: a worker that is only stalled (SIGSTOP here; a long
pause or a partition in life) loses its chat to another worker when its lease
lapses, wakes up (SIGCONT) and is fenced out. Its run of the job must not
then delete the job (queue entry, job key, in-progress key) while the other
attempt runs: when that other worker dies too (SIGKILL), the chat must still
end, handed on through arq's queue to the worker that is left
(worker/arq_worker.py, TokenfanWorker.finish_job)."""

from __future__ import annotations

import httpx
import pytest
from harness import expected_text, get_chat, prompt_with_length, read_in_background, record

from hardening.chaos import stall_until_taken_over

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(clusters):
    # FAST_ENV: lease 2 s, reaper every 0.5 s.
    return clusters(workers=2, env={"TOKENFAN_SIM_TOKENS_PER_S": "60"})


def test_fenced_out_job_outlives_a_dead_owner(cluster):
    api = cluster.api
    prompt = prompt_with_length(390, 419, "stalled")  # ~7 s
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        chat_id = client.post(f"{api.url}/chat", json={"prompt": prompt, "max_tokens": 500}).json()["id"]
        reader, result = read_in_background(client, api.url, chat_id)
        first, _ = stall_until_taken_over(cluster, client, chat_id)
        (second,) = [w for w in cluster.workers if w is not first]
        assert get_chat(client, api.url, chat_id)["status"] == "running"
        second.kill()  # the new owner dies: only the fenced-out job is left to carry the chat

        reader.join(60)
        assert not reader.is_alive(), "the stream never ended"
        (read,) = result
        state = get_chat(client, api.url, chat_id)
    assert read.closed_by_server and read.events[-1][1] == "done"
    ids = [e[0] for e in read.events]
    assert ids == list(range(1, len(ids) + 1))
    assert state["status"] == "done" and state["attempt"] == 3, state
    assert state["text"] == expected_text(prompt, 500)
    assert first.log_text().count(f"→ {chat_id}:generate") == 2  # its own run, then the hand-on
    record("stalled worker: fenced out, then ran its chat again when the new owner died; chat done after 3 attempts")
