"""A busy worker never loses a live chat (issue 12, item 8). A worker that is
only slow (CPU starvation, a blocked event loop, a pause shorter than a
lease) must keep its chats: no take-over, no ``reset``, the exact text. Here:
SIGSTOP for 0.8 of a lease, four times, in the middle of an answer, with an
idle second worker ready to take the chat at the first lapse. Before, the
lease was renewed every third of a lease from the event loop only, so a stop
that began late in a renewal interval lapsed it, and the idle worker took
the chat over."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from harness import expected_text, get_chat, prompt_with_length, read_in_background, record, wait_until

pytestmark = pytest.mark.e2e

LEASE_S = 4.0
STOP_S = 0.85 * LEASE_S
# Between pauses: longer than a lease minus a pause, shorter than a renewal
# interval of the old design (a third of a lease), which renewed right after
# each pause and then not again before the next one.
GAP_S = 1.1
STOPS = 4


def _pause(seconds: float, what: str) -> None:
    """A pause of the test itself (what is tested is how long the worker is
    stopped): a deadline, not a synchronisation."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, seconds + 1, 0.01, what)


@pytest.fixture
def cluster(clusters):
    return clusters(workers=2, env={"TOKENFAN_SIM_TOKENS_PER_S": "20", "TOKENFAN_LEASE_S": str(LEASE_S)})


def test_a_worker_paused_for_less_than_a_lease_keeps_its_chat(cluster):
    api = cluster.api
    prompt = prompt_with_length(390, 419, "busy")  # ~20 s at 20 tokens/s
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        chat_id = client.post(f"{api.url}/chat", json={"prompt": prompt, "max_tokens": 500}).json()["id"]
        reader, result = read_in_background(client, api.url, chat_id)
        worker = cluster.worker_running(chat_id)
        wait_until(lambda: get_chat(client, api.url, chat_id)["last_seq"] >= 5, 10, 0.02, "the answer to start")
        for i in range(STOPS):
            worker.signal(signal.SIGSTOP)
            try:
                _pause(STOP_S, f"pause {i + 1}")
            finally:
                worker.signal(signal.SIGCONT)
            _pause(GAP_S, "the gap")
        assert get_chat(client, api.url, chat_id)["status"] == "running", "the answer ended before the last pause"
        reader.join(60)
        assert not reader.is_alive(), "the stream never ended"
        (read,) = result
        state = get_chat(client, api.url, chat_id)
    assert read.events[-1][1] == "done", read.events[-1]
    assert [e[1] for e in read.events].count("reset") == 0, "the chat was taken over"
    assert state["attempt"] == 1 and state["text"] == expected_text(prompt, 500), state["attempt"]
    record(f"busy worker: {STOPS} pauses of {STOP_S:g} s (lease {LEASE_S:g} s) mid-answer: no take-over, exact text")
