"""The AI SDK's chat front end (``useChat``, package ``ai`` v5 and later) over
the queue, as its ``DefaultChatTransport`` calls it by default:

    POST /api/chat                     a new answer, streamed as a UI message stream
    GET  /api/chat/{chatId}/stream     the conversation's active answer (useChat's resume), or 204
    POST /api/chat/{chatId}/stop       cancel the conversation's active answer (a stop button)

``chatId`` is useChat's own chat id: the conversation. Each POST makes a new
tokenfan chat (queued, run by a worker, logged in Redis like any other; its id
is in the ``X-Chat-Id`` header) and records it as the conversation's latest
answer (``shared.keys.ui_active``), which the resume and stop routes look up.

The stream
----------
The UI message stream protocol v1 (header ``x-vercel-ai-ui-message-stream:
v1``): SSE messages ``data: {json}``, one chunk each, ending with ``data:
[DONE]``. Exactly the fields of the ``ai`` package's own schema
(``uiMessageChunkSchema``, strict objects: clients before ai 5.0.216 reject
any other field, and ai 5.0.0 knows no ``finishReason`` in ``finish``):

- ``{"type":"start","messageId":"msg-<chat id>"}`` at once: one id per answer,
  the same on every resume, so a resuming ai 6 client replaces the message it
  holds rather than adding one;
- ``{"type":"text-start","id":"text"}`` before the first token;
- ``{"type":"text-delta","id":"text","delta":…}`` per token event;
- ``done``: ``{"type":"text-end","id":"text"}`` (when text was started), then
  ``{"type":"finish"}``, or ``{"type":"abort"}`` for a cancelled answer;
- ``error`` event: ``{"type":"error","errorText":"<message> (<code>)"}``.

A ``reset`` (a worker died and another restarts the answer) cannot be said in
this protocol: its clients only ever append to a text part, and a second
``text-start`` adds a second part, so the user would read the cut first
attempt followed by the whole second one. It ends the stream with an ``error``
chunk instead (useChat's status becomes "error", its ``onError`` is called,
the message keeps the text received so far), and the resume route serves the
answer from its last reset: ``chat.resumeStream()`` then shows the whole new
attempt (ai 6 replaces the message; on ai 5 drop the partial assistant
message first). Redis or the hub failing, or the API shutting down, end the
stream the same way (code ``unavailable``): resume it.

Heartbeats are the comment line ``: ping`` without a blank line, as on the
OpenAI streams: a blank line would reach the AI SDK's parser as an empty
event.

Resume (``GET {api}/{chatId}/stream``) answers 204 when the conversation has
no answer running (unknown conversation, or its latest answer has finished):
the AI SDK then knows there is nothing to resume. Otherwise it replays the
running answer from its ``start`` (from its last ``reset``, if any), then
follows it live.

Stop (``POST {api}/{chatId}/stop``, the route the AI SDK's docs give a stop
button, since useChat's own ``stop()`` only disconnects): cancels the
conversation's latest answer as ``DELETE /chat/{id}`` does and answers 200
``{"success": true, "id", "status"}``, ``status`` one of ``cancelling``,
``cancelled`` (it had not started), ``finished`` or ``none``. Anyone
following the answer gets ``text-end`` and ``abort``.

Errors before a stream starts are the native JSON errors (422 bad body,
413 prompt too long, 503 when Redis is away…); ``DefaultChatTransport`` throws
them as an ``Error`` whose message is that JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Body, Request, Response
from pydantic import ValidationError

from api import auth
from api.errors import ApiError, invalid_request
from api.relay import relay_events
from api.routes import cancel, load_meta, services_of, submit_chat
from api.services import Services
from api.sse_response import EventSourceResponse
from api.ui_schemas import UIChatRequest, UIStopRequest, UnsupportedPart
from shared import keys
from shared.events import Event, EventType
from shared.store import FINISHED

PREFIX = "/api/chat"
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
HEARTBEAT = b": ping\n"  # a comment line, no blank line (see the docstring)
TEXT_ID = "text"
DONE = b"data: [DONE]\n\n"

router = APIRouter(prefix=PREFIX, tags=["ai-sdk"])


def _chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def message_id(chat_id: str) -> str:
    return f"msg-{chat_id}"


class UIMessageEncoding:
    """The relay's encoding (api/relay.py) for one client's UI message stream.
    Holds whether the text part is open, and whether the stream has said its
    last word (``ended``: after an error chunk for a reset, nothing more)."""

    def __init__(self, chat_id: str) -> None:
        self.chat_id = chat_id
        self.text_open = False
        self.ended = False

    def start(self) -> bytes:
        return _chunk({"type": "start", "messageId": message_id(self.chat_id)})

    def events(self, batch: list[Event]) -> bytes:
        out = bytearray()
        for event in batch:
            if self.ended:
                break
            out += self._event(event)
        return bytes(out)

    def _event(self, event: Event) -> bytes:
        data = event.payload()
        if event.type == EventType.TOKEN:
            text = data.get("text", "")
            if not text:
                return b""
            head = b""
            if not self.text_open:
                self.text_open = True
                head = _chunk({"type": "text-start", "id": TEXT_ID})
            return head + _chunk({"type": "text-delta", "id": TEXT_ID, "delta": text})
        if event.type == EventType.RESET:
            message = (
                "a worker was lost mid-answer and the answer restarts from its beginning; "
                "resume the stream to read it (reset)"
            )
            return self._end(_chunk({"type": "error", "errorText": message}))
        if event.type == EventType.DONE:
            out = _chunk({"type": "text-end", "id": TEXT_ID}) if self.text_open else b""
            self.text_open = False
            if data.get("finish_reason") == "cancelled":
                return self._end(out + _chunk({"type": "abort"}))
            return self._end(out + _chunk({"type": "finish"}))
        if event.type == EventType.ERROR:
            text = f"{data.get('message', 'generation failed')} ({data.get('code', 'error')})"
            return self._end(_chunk({"type": "error", "errorText": text}))
        return b""

    def _end(self, last: bytes) -> bytes:
        self.ended = True
        return last + DONE

    def failure(self, code: str, message: str) -> bytes:
        if self.ended:
            return b""
        if code == "unavailable":
            message = f"{message}; resume the stream to read the rest"
        return self._end(_chunk({"type": "error", "errorText": f"{message} ({code})"}))


async def _until_ended(relay: AsyncIterator[bytes], encoding: UIMessageEncoding) -> AsyncIterator[bytes]:
    """The relay's bytes until the encoding has said its last word: a reset
    ends this stream although the chat goes on."""
    try:
        async for chunk in relay:
            yield chunk
            if encoding.ended:
                return
    finally:
        await relay.aclose()  # type: ignore[attr-defined]


def _stream(services: Services, chat_id: str, after: int, meta: dict[str, str]) -> EventSourceResponse:
    settings = services.settings
    encoding = UIMessageEncoding(chat_id)
    relay = relay_events(services.hub, chat_id, after, encoding, meta, preamble=encoding.start())
    return EventSourceResponse(
        _until_ended(relay, encoding),
        ping=settings.heartbeat_s,
        ping_message_factory=lambda: HEARTBEAT,
        send_timeout=settings.send_timeout_s,
        headers={**HEADERS, "X-Chat-Id": chat_id},
        farewell=_chunk({"type": "error", "errorText": "server shutting down; resume the stream (unavailable)"}) + DONE,
    )


def _conversation(chat_id: str) -> str:
    if not keys.is_conversation_id(chat_id):
        raise ApiError(404, "not_found", "no such chat: an id is 1 to 200 characters of A-Z a-z 0-9 _ . ~ -")
    return keys.ui_active(chat_id, auth.current_owner())


async def _active(services: Services, conversation: str) -> tuple[str, dict[str, str]] | None:
    """The conversation's latest answer and its metadata, or None."""
    raw = await services.redis.get(conversation)
    if raw is None:
        return None
    chat_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    meta = await services.store.meta(chat_id)
    if meta is None or not keys.is_chat_id(chat_id):
        return None
    auth.check_owner(chat_id, meta)
    return chat_id, meta


async def _last_reset(services: Services, chat_id: str) -> int:
    """The seq of the answer's last ``reset`` (0: none): a resume replays the
    answer from there, the start of the attempt that is running."""
    last = 0
    async for page in services.store.read_log(chat_id, 0):
        for event in page:
            if event.type == EventType.RESET:
                last = event.seq
    return last


_ERRORS: dict[int | str, dict[str, Any]] = {code: {} for code in (404, 413, 422, 503)}


@router.post("", responses=_ERRORS)
async def ui_chat(body: UIChatRequest, request: Request) -> Response:
    """A new answer to the conversation ``body.id``, streamed as a UI message stream."""
    services = services_of(request)
    try:
        native = body.to_chat_create()
    except UnsupportedPart as exc:
        raise ApiError(422, "unsupported", exc.message) from None
    except ValidationError as exc:
        problem = invalid_request([dict(e) for e in exc.errors()], openai=False, strip_body=False)
        raise ApiError(problem.status, problem.code, problem.message) from None
    chat_id = await submit_chat(services, native)
    await services.redis.set(_conversation(body.id), chat_id, ex=services.settings.stream_ttl_s)
    return _stream(services, chat_id, 0, await load_meta(services, chat_id))


@router.get("/{conversation_id}/stream", responses={204: {"description": "no answer running"}, **_ERRORS})
async def ui_resume(conversation_id: str, request: Request) -> Response:
    """The conversation's running answer, from its start, then live; 204 when none runs."""
    services = services_of(request)
    active = await _active(services, _conversation(conversation_id))
    if active is None or active[1]["status"] in FINISHED:
        return Response(status_code=204)
    chat_id, meta = active
    return _stream(services, chat_id, await _last_reset(services, chat_id), meta)


_NO_BODY = Body(None)  # the stop request may come without a body


@router.post("/{conversation_id}/stop", responses=_ERRORS)
async def ui_stop(conversation_id: str, request: Request, body: UIStopRequest | None = _NO_BODY) -> dict[str, Any]:
    """Cancel the conversation's running answer (useChat's ``stop()`` only disconnects)."""
    services = services_of(request)
    active = await _active(services, _conversation(conversation_id))
    if active is None or (body is not None and body.activeStreamId not in (None, active[0])):
        return {"success": True, "id": None, "status": "none"}
    chat_id, meta = active
    outcome = await cancel(services, chat_id, meta)
    status = {"ended": "cancelled", "cancelling": "cancelling", "finished": "finished"}[outcome]
    return {"success": True, "id": chat_id, "status": status}
