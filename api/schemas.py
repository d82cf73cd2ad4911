"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Lenient(BaseModel):
    """A body another client's protocol defines (OpenAI, the AI SDK): the
    fields tokenfan does not use are ignored, as their own servers do."""

    model_config = ConfigDict(extra="ignore")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatCreate(BaseModel):
    """``prompt`` (one user message) or ``messages``, not both."""

    prompt: str | None = None
    messages: list[Message] | None = None
    model: str | None = Field(None, min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    system: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> ChatCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("'messages' needs at least one user message")
        return self

    def all_messages(self) -> list[dict[str, str]]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.messages or []]


class ClientRequest(Lenient):
    """A body of another client protocol (OpenAI's, the AI SDK's), with the
    options every one of them shares; ``native`` makes the native request."""

    model: str | None = Field(None, min_length=1, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)

    def native(self, messages: list[dict[str, str]], max_tokens: int | None, system: str | None = None) -> ChatCreate:
        """Raises pydantic's ``ValidationError`` for what ``ChatCreate`` refuses."""
        return ChatCreate(
            messages=messages, model=self.model, max_tokens=max_tokens, temperature=self.temperature, system=system
        )


class ChatCreated(BaseModel):
    id: str
    status: str
    stream_url: str
    stream_token: str


class ChatState(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "error"]
    model: str
    text: str
    attempt: int
    last_seq: int
    created_at: float
    finish_reason: str | None = None
    usage: dict | None = None
    error: dict | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
