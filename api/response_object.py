"""OpenAI's Response object, as tokenfan builds it from a chat: its ids
(derived from the chat id, so every read of one response agrees), its status
and usage (``Outcome``), and the object itself (``ResponseShape``), the same
for a streamed, a waited-for and a retrieved response."""

from __future__ import annotations

from typing import Any

import orjson

from api.errors import OpenAIError
from shared import keys


def response_id(chat_id: str) -> str:
    return f"resp_{chat_id}"


def item_id(chat_id: str) -> str:
    return f"msg_{chat_id}"


def chat_id_of(rid: str) -> str:
    chat_id = rid.removeprefix("resp_")
    if rid == chat_id or not keys.is_chat_id(chat_id):
        raise OpenAIError(404, "not_found", f"no such response: '{rid}'", "response_id")
    return chat_id


def _options(meta: dict[str, str]) -> dict[str, Any]:
    try:
        return orjson.loads(meta.get("request", "{}")).get("responses") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return {}


def _count(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class Outcome:
    """How a response stands: its status and what goes with it."""

    def __init__(
        self,
        status: str,
        *,
        usage: Any = None,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.usage = usage
        self.error = error
        self.incomplete = incomplete

    @classmethod
    def of_done(cls, data: dict[str, Any]) -> Outcome:
        usage = _usage(data.get("usage"))
        reason = data.get("finish_reason")
        if reason == "length":
            return cls("incomplete", usage=usage, incomplete={"reason": "max_output_tokens"})
        if reason == "cancelled":
            return cls("cancelled", usage=usage)
        return cls("completed", usage=usage)

    @classmethod
    def of_error(cls, data: dict[str, Any]) -> Outcome:
        return cls("failed", error={"code": data.get("code", "error"), "message": data.get("message", "failed")})

    @classmethod
    def of_meta(cls, meta: dict[str, str]) -> Outcome:
        status = meta["status"]
        if status == "queued":
            return cls("queued")
        if status == "running":
            return cls("in_progress")
        if status == "error":
            return cls.of_error(_json(meta.get("error")))
        return cls.of_done({"finish_reason": meta.get("finish_reason"), "usage": _json(meta.get("usage"))})

    @property
    def item_status(self) -> str:
        return {"completed": "completed", "in_progress": "in_progress", "queued": "in_progress"}.get(
            self.status, "incomplete"
        )


def _json(raw: str | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class ResponseShape:
    """The objects of one response, a pure function of the chat (its id,
    creation time, model and stored options) and of what is asked."""

    def __init__(self, chat_id: str, meta: dict[str, str]) -> None:
        self.chat_id = chat_id
        self.item_id = item_id(chat_id)
        self.created = int(float(meta["created_at"]))
        self.model = meta.get("model", "")
        self.options = _options(meta)

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, outcome: Outcome, text: str | None) -> dict[str, Any]:
        """``text`` None: no output yet."""
        options = self.options
        return {
            "id": response_id(self.chat_id),
            "object": "response",
            "created_at": self.created,
            "status": outcome.status,
            "background": bool(options.get("background")),
            "error": outcome.error,
            "incomplete_details": outcome.incomplete,
            "instructions": options.get("instructions"),
            "max_output_tokens": options.get("max_output_tokens"),
            "model": self.model,
            "output": [] if text is None else [self.item(outcome.item_status, text)],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": options.get("temperature"),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": outcome.usage,
            "user": None,
            "metadata": options.get("metadata") or {},
        }
