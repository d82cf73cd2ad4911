"""An OpenAI-compatible, resumable chat-completions API over the queue.

    POST /v1/chat/completions                      create a chat; stream it, or wait for it
    GET  /v1/chat/completions/{chat_id}/stream     resume a stream after Last-Event-ID
    GET  /v1/models, GET /v1/models/{model}        the configured model

A completion is an ordinary tokenfan chat: ``POST`` validates through the
native ``ChatCreate`` and records and enqueues the chat exactly as ``POST
/chat`` does (``routes.submit_chat``); its events then reach the client
through the hub, rewritten as OpenAI objects. The chat's id is in the
``X-Chat-Id`` header, so every native route (``GET /chat/{id}``, ``DELETE
/chat/{id}``, the native stream) works on it too.

The stream (``stream: true``)
-----------------------------
One SSE message per log event, ``id:`` the event's seq, ``data:`` a
``chat.completion.chunk``:

- ``token``  -> ``delta: {"content": text}``. The chunk of seq 1 (the first
  event of every chat) also carries ``delta.role = "assistant"``, so a resume
  after id 1 does not repeat it.
- ``reset``  -> an empty ``delta`` plus ``"tokenfan_reset": {"attempt", "reason"}``.
  A worker died and the answer restarts from its beginning; see below.
- ``done``   -> an empty ``delta`` with ``finish_reason``; then, when the
  request set ``stream_options.include_usage``, a chunk with ``choices: []``
  and ``usage``; then ``data: [DONE]``. They are written in one piece, and only
  ``[DONE]`` carries the done event's id: a client cut before it resumes with
  the previous id and gets the whole end again (its finish chunk twice).
- ``error``  -> ``data: {"error": {"message", "type": "server_error", "param", "code"}}``
  (the SDKs raise ``APIError`` on it), then the stream closes without ``[DONE]``.

Chunks are a pure function of the chat and the event: ``id`` is
``chatcmpl-<chat_id>`` and ``created`` the chat's creation time, and
``include_usage`` is stored with the chat, so resumed chunks are byte for byte
what an uninterrupted client got. A client whose ``Last-Event-ID`` is already
the terminal event gets an empty stream, as on the native route.

Heartbeats are the comment line ``: ping`` followed by a single newline, never
a blank line: the OpenAI SDKs' SSE decoders keep the last ``id`` and dispatch
an event on every blank line, so a ``: ping\\n\\n`` after the first ``id:``
would reach them as an empty ``data`` and fail their JSON parsing. A comment
line without a blank line dispatches nothing in any SSE parser. There is no
``retry:`` field for the same reason.

Redis or the hub failing mid-stream does not end the stream silently (an SDK
would take a truncated answer for a whole one): the client gets an ``error``
payload with code ``unavailable`` and no ``id``, and may resume with the last
id it received. A chat whose metadata expires mid-stream ends with an error
payload of code ``chat_expired`` (no ``id``; resuming cannot help); one that
can no longer finish (api/liveness.py) gets a terminal ``error`` event of code
``chat_stalled``, like any generation error.

Resets. OpenAI's protocol has no way to take back text already sent, and
plain SDK clients simply concatenate ``delta.content``. The choices were: end
the stream with an error (every plain client fails, even though the chat
recovers), hold text back until the chat ends (no streaming at all), or say
it in a field those clients ignore. tokenfan takes the last: the reset is a
chunk with an empty delta (what OpenAI itself sends in finish chunks, so
every client survives it) and ``tokenfan_reset``. A client that knows
clears its text on it; a plain client shows the partial first attempt
followed by the whole second one. Resets only happen when a worker dies
mid-answer, and the non-streaming answer and ``GET /chat/{id}`` always hold
the text after the last reset.

``finish_reason``: ``stop`` and ``length`` pass through. ``cancelled``
(``DELETE /chat/{id}``) is not an OpenAI value and typed clients may reject
it, so it is sent as ``stop``, with ``"tokenfan_finish_reason": "cancelled"``
next to it (on the finish chunk, or on the ``chat.completion``).

``stream: false`` joins the hub like a stream does (no polling), collects the
events until the terminal one, with ``job_timeout_s`` as the deadline, and
answers one ``chat.completion`` with ``usage``. A generation ``error`` is a 500
``server_error`` carrying the worker's code; the deadline passing is a 504
with ``x-should-retry: false`` (the chat still runs: resume it by its id). If
the client goes away meanwhile, the wait ends and the chat runs on.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with the
native API's status codes (422 for a bad body, 413 for an over-long prompt,
404 for an unknown chat, 400 for a bad Last-Event-ID, 503 with Retry-After
when Redis is away): api/errors.py answers in this shape for every path under
``/v1``, whatever raised. ``code`` is the native error code.

Auth: the router's ``dependencies`` (``AUTH``) is the one place to add the API
key dependency (``Authorization: Bearer``) when tokenfan gets API keys; the
errors it raises come out in OpenAI's shape. Chat ownership then follows from
``submit_chat`` and ``load_meta``, which these routes share with the native ones.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from api.errors import OpenAIError, openai_body
from api.openai_schemas import ChatCompletionRequest, native_request
from api.relay import check_last_event_id, relay_events
from api.routes import load_meta, parse_last_event_id, services_of, submit_chat
from api.services import Services
from api.sse_response import EventSourceResponse, event_stream
from api.whole_answer import whole_answer
from shared.events import Event, EventType, assemble_text

log = logging.getLogger("tokenfan.api")

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}
MODEL_CREATED = 0  # GET /v1/models: tokenfan does not know when a model was made


# --- auth ------------------------------------------------------------------------

# API keys, stream tokens (``?token=`` on the resume route) and the rate limit
# are enforced in front of every route by api/middleware.py, whose errors under
# /v1/ come out in OpenAI's shape; route-level dependencies can still go here.
AUTH: list[Any] = []

router = APIRouter(prefix="/v1", dependencies=AUTH, tags=["openai"])

_ERROR_DOC = {
    "content": {"application/json": {"example": openai_body(404, "not_found", "no such chat (unknown or expired)")}}
}
_ERRORS: dict[int | str, dict[str, Any]] = {code: _ERROR_DOC for code in (400, 404, 413, 422, 500, 503, 504)}


# --- chunks ----------------------------------------------------------------------


def _usage(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count(value: Any) -> int:
    """A token count as OpenAI's types want it: an upstream may leave it null
    (or worse); 0 then, never an exception that kills every resume."""
    try:
        return max(int(value), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _finish(data: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """OpenAI's finish_reason, and the tokenfan field that keeps the original."""
    native = data.get("finish_reason", "stop")
    mapped = FINISH_REASONS.get(native, native)
    return mapped, ({} if mapped == native else {"tokenfan_finish_reason": native})


def _stored_options(meta: dict[str, str]) -> dict[str, Any]:
    """The OpenAI options POST stored with the chat ({} for a native chat)."""
    try:
        return orjson.loads(meta.get("request", "{}")).get("openai") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return {}


class ChunkEncoder:
    """Turns one chat's events into OpenAI SSE messages. Depends only on the
    chat (its id, creation time, model and stored options) and the event, so
    a resumed stream repeats exactly what an uninterrupted one sent."""

    def __init__(self, chat_id: str, meta: dict[str, str]) -> None:
        self.completion_id = f"chatcmpl-{chat_id}"
        self.created = int(float(meta["created_at"]))
        self.model = meta.get("model", "")
        self.include_usage = bool(_stored_options(meta).get("include_usage"))

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def _chunk(
        self, seq: int, delta: dict[str, Any], finish_reason: str | None = None, *, with_id: bool = True, **extra: Any
    ) -> bytes:
        if seq == 1:
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if with_id:
            # The SDKs hide the SSE id: the same number in the chunk is what
            # their users can resume after (GET .../stream, Last-Event-ID).
            extra["tokenfan_seq"] = seq
        return _message(seq if with_id else None, {**self._head("chat.completion.chunk"), "choices": [choice], **extra})

    def frames(self, event: Event) -> bytes:
        """The SSE message(s) of one event; b"" for a type this code does not know."""
        data = event.payload()
        if event.type == EventType.TOKEN:
            return self._chunk(event.seq, {"content": data.get("text", "")})
        if event.type == EventType.RESET:
            reset = {"attempt": data.get("attempt"), "reason": data.get("reason")}
            return self._chunk(event.seq, {}, tokenfan_reset=reset)
        if event.type == EventType.DONE:
            # Only the last message carries the done event's id: a client cut
            # after the finish or usage chunk still holds the previous id, and
            # its resume sends the whole end again (an empty-delta finish chunk
            # twice is harmless; a lost usage chunk or [DONE] is not).
            finish_reason, extra = _finish(data)
            out = self._chunk(event.seq, {}, finish_reason, with_id=False, **extra)
            if self.include_usage:
                usage_chunk = {**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(data)}
                out += _message(None, usage_chunk)
            return out + b"id: %d\ndata: [DONE]\n\n" % event.seq
        if event.type == EventType.ERROR:
            code = data.get("code", "error")
            return _message(event.seq, openai_body(500, code, data.get("message", "generation failed")))
        return b""

    def completion(self, events: list[Event], done: dict[str, Any]) -> dict[str, Any]:
        finish_reason, extra = _finish(done)
        message = {"role": "assistant", "content": assemble_text(events), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(done), **extra}


def _message(seq: int | None, payload: dict[str, Any]) -> bytes:
    data = orjson.dumps(payload)
    return data.join((b"data: ", b"\n\n")) if seq is None else b"id: %d\ndata: %s\n\n" % (seq, data)


class _ChunkStream:
    """The relay's encoding for the OpenAI stream (api/relay.py): chunks, and
    failures as ``error`` payloads without an ``id`` (see the module docstring)."""

    def __init__(self, chat_id: str, encoder: ChunkEncoder) -> None:
        self.encoder = encoder
        self.resume = _resume_hint(chat_id)

    def events(self, batch: list[Event]) -> bytes:
        return b"".join(self.encoder.frames(event) for event in batch)

    def failure(self, code: str, message: str) -> bytes:
        if code == "unavailable":  # transient: the client resumes
            return _message(None, openai_body(503, code, f"{message}; {self.resume}"))
        return _message(None, openai_body(410, code, message))  # log_expired, chat_expired: resuming cannot help


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover


def _event_stream(
    services: Services, chat_id: str, after: int, encoder: ChunkEncoder, *, complete: bool = False
) -> EventSourceResponse:
    return event_stream(
        _empty() if complete else relay_events(services.hub, chat_id, after, _ChunkStream(chat_id, encoder)),
        services.settings,
        chat_id,
        # An API shutdown ends the stream like a Redis failure does (see above).
        farewell=_message(None, openai_body(503, "unavailable", f"server shutting down; {_resume_hint(chat_id)}")),
    )


def _resume_hint(chat_id: str) -> str:
    return f"resume with GET /v1/chat/completions/{chat_id}/stream and the last id received"


# --- non-streaming -------------------------------------------------------------


async def _complete(request: Request, services: Services, chat_id: str, encoder: ChunkEncoder) -> Response:
    headers = {"X-Chat-Id": chat_id}
    read_it = f"resume it with GET /v1/chat/completions/{chat_id}/stream or read GET /chat/{chat_id}"
    events = await whole_answer(request, services, chat_id, read_it=read_it)
    if events is None:
        return Response(status_code=499)  # nobody reads it; the chat runs on
    last = events[-1]
    if last.type == EventType.ERROR:
        data = last.payload()
        raise OpenAIError(500, data.get("code", "error"), data.get("message", "generation failed"), headers=headers)
    return JSONResponse(encoder.completion(events, last.payload()), headers=headers)


# --- routes ----------------------------------------------------------------------


@router.post("/chat/completions", responses=_ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI's chat completions, streamed (``stream: true``) or not. The chat's
    id is in the ``X-Chat-Id`` header."""
    services = services_of(request)
    native = native_request(body)
    chat_id = await submit_chat(services, native, extra={"openai": {"include_usage": body.include_usage}})
    encoder = ChunkEncoder(chat_id, await load_meta(services, chat_id))
    if body.stream:
        return _event_stream(services, chat_id, 0, encoder)
    return await _complete(request, services, chat_id, encoder)


@router.get("/chat/completions/{chat_id}/stream", responses=_ERRORS)
async def resume_chat_completion(
    chat_id: str,
    request: Request,
    last_event_id: str | None = Query(None, description="for clients that cannot send the Last-Event-ID header"),
) -> Response:
    """The chunk stream of a chat after ``Last-Event-ID`` (header, or
    ``?last_event_id=``): the chunks a dropped client missed, then the live ones."""
    services = services_of(request)
    after = parse_last_event_id(request.headers.get("last-event-id", last_event_id))
    meta = await load_meta(services, chat_id)
    complete = check_last_event_id(after, meta)
    return _event_stream(services, chat_id, after, ChunkEncoder(chat_id, meta), complete=complete)


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "tokenfan"}


@router.get("/models", responses=_ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model(services_of(request).settings.model)]}


@router.get("/models/{model_id:path}", responses=_ERRORS)
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    # POST passes any model name on to the provider (the upstream decides), so
    # any name is a model here too: a 404 would contradict the POST that works.
    return _model(model_id)
