"""The request bodies of the AI SDK's chat routes (api/ui_stream.py): what
``DefaultChatTransport`` sends, ``{"id", "messages": [UIMessage], "trigger",
"messageId"}`` plus whatever the app adds with the transport's ``body``
option. ``to_chat_create`` turns it into the native ``ChatCreate``, which stays
the one place that validates a chat."""

from __future__ import annotations

from pydantic import Field, field_validator

from api.schemas import ChatCreate, ClientRequest, Lenient
from shared import keys
from shared.errors import TokenfanError

_ROLES = frozenset({"system", "user", "assistant"})
# Parts that only the UI shows: never sent to the model (as the AI SDK's own
# convertToModelMessages leaves them out, or they carry no text).
_DISPLAY_ONLY = frozenset({"step-start", "reasoning", "source-url", "source-document"})


class UnsupportedPart(TokenfanError, ValueError):
    """A valid UI message that tokenfan cannot run (files, tool calls)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UIPart(Lenient):
    type: str = Field(max_length=200)
    text: str | None = None


class UIMessage(Lenient):
    id: str | None = None
    role: str
    parts: list[UIPart]


def _conversation_id(value: str) -> str:
    if not keys.is_conversation_id(value):
        raise ValueError("a chat id is 1 to 200 characters of A-Z a-z 0-9 _ . ~ -")
    return value


class UIChatRequest(ClientRequest):
    """``id`` is useChat's chat id (the conversation); tokenfan makes a new
    chat for each answer and remembers the conversation's latest one."""

    id: str
    messages: list[UIMessage] = Field(min_length=1)
    trigger: str | None = Field(None, max_length=100)  # "submit-message", "regenerate-message"
    messageId: str | None = Field(None, max_length=200)  # noqa: N815 - the AI SDK's name
    # The native options, for an app that adds them with the transport's `body`
    # (and model, temperature: ClientRequest).
    max_tokens: int | None = Field(None, ge=1)
    system: str | None = None

    _check_id = field_validator("id")(_conversation_id)

    def to_chat_create(self) -> ChatCreate:
        """The native request. Raises ``UnsupportedPart``, or pydantic's
        ``ValidationError`` from ``ChatCreate``."""
        messages = []
        for i, message in enumerate(self.messages):
            if message.role not in _ROLES:
                raise UnsupportedPart(f"messages[{i}].role: role '{message.role}' is not supported")
            texts = []
            for j, part in enumerate(message.parts):
                if part.type == "text":
                    texts.append(part.text or "")
                elif part.type not in _DISPLAY_ONLY and not part.type.startswith("data-"):
                    raise UnsupportedPart(
                        f"messages[{i}].parts[{j}]: a part of type '{part.type}' is not supported; only text"
                    )
            text = "\n".join(t for t in texts if t)
            if text:  # an assistant message cut off before its first token has none
                messages.append({"role": message.role, "content": text})
        return self.native(messages, self.max_tokens, self.system)


class UIStopRequest(Lenient):
    """The body the AI SDK's docs have a stop button send (all optional):
    ``activeStreamId`` names the answer the client means (tokenfan's chat id,
    the ``X-Chat-Id`` of the POST); a stop for an answer that is no longer the
    conversation's latest is ignored. ``assistantMessage`` is ignored
    (tokenfan keeps the answer's text itself)."""

    activeStreamId: str | None = Field(None, max_length=200)  # noqa: N815 - the AI SDK's name
