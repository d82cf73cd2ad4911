"""LangChain's ``ChatOpenAI`` (pip ``langchain-openai``) against
/v1/chat/completions on real processes, unmodified: ``.stream()`` reads the
whole answer, and what tokenfan cannot do (structured output, forced tool
calls) is a clear 422 (``openai.UnprocessableEntityError``), never a
silently wrong answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from harness import get_chat, prompt_with_length
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from worker.providers.simulated import answer_length

pytestmark = pytest.mark.e2e

ENV = {"TOKENFAN_SIM_TTFT_MS": "5", "TOKENFAN_SIM_TOKENS_PER_S": "400", "TOKENFAN_HEARTBEAT_S": "0.05"}


@pytest.fixture(scope="module")
def fast_cluster(module_clusters):
    return module_clusters("langchain", env=ENV)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def chat_model(cluster, **extra) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{cluster.api.url}/v1", api_key="x", model="simulated", max_retries=0, **extra)


def test_stream(fast_cluster, client):
    prompt = prompt_with_length(20, 80, tag="langchain-stream")
    llm = chat_model(fast_cluster, include_response_headers=True, stream_usage=True)
    chunks = list(llm.stream(prompt))
    chat_id = next(c.response_metadata["headers"]["x-chat-id"] for c in chunks if "headers" in c.response_metadata)
    text = "".join(c.text for c in chunks)
    assert text == get_chat(client, fast_cluster.api.url, chat_id)["text"] != ""
    usage = next(c.usage_metadata for c in chunks if c.usage_metadata)
    assert usage["output_tokens"] == answer_length(prompt)


class Answer(BaseModel):
    title: str


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return query


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda llm: llm.with_structured_output(Answer), "response_format"),
        (lambda llm: llm.with_structured_output(Answer, method="function_calling"), "tools"),
        (lambda llm: llm.bind_tools([lookup], tool_choice="required"), "tools"),
    ],
    ids=["structured-json-schema", "structured-function-calling", "tools-required"],
)
def test_unsupported_is_a_clear_422(fast_cluster, make, field):
    runnable = make(chat_model(fast_cluster))
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        runnable.invoke("Tell me about queues")
    assert raised.value.status_code == 422
    assert field in str(raised.value), str(raised.value)
