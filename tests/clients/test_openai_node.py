"""The official ``openai`` Node SDK (5.x, tests/clients/openai_chat.mjs)
against /v1/chat/completions on real processes, used as the README shows:
``chat.completions.create({stream: true})`` with ``.withResponse()`` for the
``x-chat-id`` header, and the README's resume snippet (``Stream.fromSSEResponse``
from ``openai/streaming``, ``Last-Event-ID`` = the last chunk's ``tokenfan_seq``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from harness import get_chat, prompt_with_length

from worker.providers.simulated import answer_length

from .nodekit import run_node

pytestmark = pytest.mark.e2e


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def test_stream_with_usage(cluster, client):
    prompt = prompt_with_length(20, 60, tag="openai-node-whole")
    result = run_node("openai_chat.mjs", f"{cluster.api.url}/v1", prompt, "500", "0")
    assert "error" not in result, result
    chat = get_chat(client, cluster.api.url, result["chatId"])
    assert result["head"] == chat["text"] != ""
    assert result["finishReason"] == "stop"
    assert result["usage"]["completion_tokens"] == answer_length(prompt) == chat["usage"]["completion_tokens"]
    # Every content chunk carries its event seq, 1, 2, 3…; the finish and usage chunks none.
    seqs = result["seqs"]
    assert seqs[-2:] == [None, None] and seqs[:-2] == list(range(1, len(seqs) - 1))
    assert result["lastSeq"] == chat["last_seq"] - 1  # the done event's id is on [DONE] only


def test_resume_mid_answer_with_the_readme_snippet(cluster, client):
    prompt = prompt_with_length(40, 80, tag="openai-node-resume")
    result = run_node("openai_chat.mjs", f"{cluster.api.url}/v1", prompt, "500", "3")
    assert "error" not in result, result
    chat = get_chat(client, cluster.api.url, result["chatId"])
    assert result["head"] != "" and result["rest"] != ""
    assert result["head"] + result["rest"] == chat["text"]
    assert 0 < result["resumedAfter"] < chat["last_seq"] - 1
    assert result["finishReason"] == "stop"
    assert result["usage"]["completion_tokens"] == answer_length(prompt)
    # The resumed chunks start right after the id sent: no gap, no repeat.
    resumed = result["seqs"][result["seqs"].index(result["resumedAfter"]) + 1 :]
    assert resumed[:-2] == list(range(result["resumedAfter"] + 1, chat["last_seq"]))
