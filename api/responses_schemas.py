"""The request body of ``POST /v1/responses``: OpenAI's Responses API, reduced
to what tokenfan runs (text in, text out). Options that change what the model
must produce and that tokenfan cannot honour (tools, structured output, a
``previous_response_id``, non-text input) are refused with a 422 naming the
parameter, never dropped; options that only tune or label the request
(``top_p``, ``user``, ``store``, ``include``, ``reasoning``, ``truncation``…)
are ignored. ``to_chat_create`` turns it into the native ``ChatCreate``, which
stays the one place that validates a chat."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.openai_schemas import ROLES, ContentPart, UnsupportedInput, text_of
from api.schemas import ChatCreate, ClientRequest, Lenient

# "developer" is the newer name of "system".
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class InputItem(Lenient):
    type: str | None = None  # "message", or absent (an "easy input message")
    role: str | None = None
    content: str | list[ContentPart] | None = None


class TextOptions(Lenient):
    format: dict[str, Any] | None = None


class ResponsesRequest(ClientRequest):
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool | None = False
    background: bool | None = False
    max_output_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    tools: list[Any] | None = None
    text: TextOptions | None = None

    def options(self) -> dict[str, Any]:
        """What the response object repeats back, stored with the chat so that
        every later read (retrieve, resume) builds the same object."""
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "background": bool(self.background),
            "metadata": self.metadata or {},
        }

    def to_chat_create(self) -> ChatCreate:
        """The native request. Raises ``UnsupportedInput``, or pydantic's
        ``ValidationError`` from ``ChatCreate``."""
        if self.previous_response_id is not None:
            raise UnsupportedInput("previous_response_id", "not supported: send the whole input")
        if self.conversation is not None:
            raise UnsupportedInput("conversation", "conversations are not supported: send the whole input")
        if self.tools:
            raise UnsupportedInput("tools", "tools are not supported")
        if self.text is not None and self.text.format is not None and self.text.format.get("type") != "text":
            raise UnsupportedInput("text.format", "only text output is supported (no structured output)")
        if isinstance(self.input, str):
            messages = [{"role": "user", "content": self.input}]
        else:
            messages = []
            for i, item in enumerate(self.input):
                if item.type not in (None, "message"):
                    raise UnsupportedInput(f"input[{i}].type", f"input items of type '{item.type}' are not supported")
                role = ROLES.get(item.role or "")
                if role is None:
                    raise UnsupportedInput(f"input[{i}].role", f"role '{item.role}' is not supported")
                text = text_of(item.content, f"input[{i}].content", _TEXT_PARTS)
                if text:
                    messages.append({"role": role, "content": text})
        return self.native(messages, self.max_output_tokens, self.instructions)
