"""The request body of ``POST /v1/chat/completions``: OpenAI's chat-completions
shape, reduced to what tokenfan uses. Fields that only tune sampling or
bookkeeping (``top_p``, ``user``, ``seed``…) are ignored, as most
OpenAI-compatible servers do. Fields that change what the answer must be
(``tools``, ``tool_choice``, ``response_format``, ``stop``…) are refused with
a 422 naming the field: dropping them silently hands a client an answer it
did not ask for (LangChain's ``with_structured_output`` then fails on it,
``bind_tools`` gets no tool calls). ``to_chat_create`` turns the body into the
native ``ChatCreate``, which stays the one place that validates a chat."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field, ValidationError

from api.errors import OpenAIError, invalid_request
from api.schemas import ChatCreate, ClientRequest, Lenient
from shared.errors import TokenfanError

# OpenAI's "developer" role is the newer name of "system".
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


TEXT = frozenset({"text"})  # the content part types that are text


class UnsupportedInput(TokenfanError, ValueError):
    """Valid OpenAI, but not something tokenfan can run (tools, images, n > 1)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class ContentPart(Lenient):
    type: str
    text: str | None = None


class ChatMessage(Lenient):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(Lenient):
    include_usage: bool | None = False


class ChatCompletionRequest(ClientRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # deprecated by OpenAI, still sent by many clients
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = None
    # Refused unless absent or at their no-op value (see the module docstring).
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_chat_create(self) -> ChatCreate:
        """The native request. Raises ``UnsupportedInput``, or pydantic's
        ``ValidationError`` from ``ChatCreate``."""
        if self.n not in (None, 1):
            raise UnsupportedInput("n", "only n=1 is supported")
        self._refuse_what_would_change_the_answer()
        messages = []
        for i, message in enumerate(self.messages):
            role = ROLES.get(message.role)
            if role is None:
                raise UnsupportedInput(f"messages[{i}].role", f"role '{message.role}' is not supported")
            messages.append({"role": role, "content": text_of(message.content, f"messages[{i}].content")})
        # max_completion_tokens is the current name; it wins when both are sent.
        return self.native(messages, self.max_completion_tokens or self.max_tokens)

    def _refuse_what_would_change_the_answer(self) -> None:
        for param, value, no_op in (
            ("tools", self.tools, ([],)),
            ("tool_choice", self.tool_choice, ("none",)),
            ("functions", self.functions, ([],)),
            ("function_call", self.function_call, ("none",)),
            ("response_format", self.response_format, ({"type": "text"},)),
            ("stop", self.stop, ([], "")),
        ):
            if value is not None and value not in no_op:
                raise UnsupportedInput(param, f"'{param}' is not supported by this server; send the request without it")


def text_of(content: str | list[ContentPart] | None, param: str, text_types: frozenset[str] = TEXT) -> str:
    """A message's content as one text: a string, or its text parts joined
    (as vLLM and llama.cpp join them); ``UnsupportedInput`` for anything else."""
    if content is None:
        raise UnsupportedInput(param, "content is required (tool calls are not supported)")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in text_types or part.text is None:
            raise UnsupportedInput(f"{param}[{j}]", f"content of type '{part.type}' is not supported; only text")
        texts.append(part.text)
    return "\n".join(texts)


class ToNative(Protocol):
    def to_chat_create(self) -> ChatCreate: ...


def native_request(body: ToNative) -> ChatCreate:
    """The native request of an OpenAI-shaped body (chat completions or
    responses), or an ``OpenAIError`` naming the parameter at fault."""
    try:
        return body.to_chat_create()
    except UnsupportedInput as exc:
        raise OpenAIError(422, "unsupported", exc.message, exc.param) from None
    except ValidationError as exc:
        problem = invalid_request([dict(e) for e in exc.errors()], openai=True, strip_body=False)
        raise OpenAIError(problem.status, problem.code, problem.message, problem.param) from None
