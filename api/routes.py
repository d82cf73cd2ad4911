"""The HTTP routes (the public contract: DESIGN.md sections 4 and 5)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api import admission, auth, metrics, tokens
from api.errors import ApiError, error_response, not_found
from api.relay import check_last_event_id, relay
from api.schemas import ChatCreate, ChatCreated, ChatState, ErrorBody
from api.services import Services
from api.sse_response import EventSourceResponse, event_stream
from shared import keys
from shared.events import EventType, assemble_text
from shared.store import ALREADY_FINISHED, FINISHED, QueueFull, terminal_meta

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 409, 413, 422, 503)}


def services_of(request: Request) -> Services:
    return request.app.state.services


def parse_last_event_id(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be a non-negative integer")
    return int(raw)


async def load_meta(services: Services, chat_id: str) -> dict[str, str]:
    if not keys.is_chat_id(chat_id):
        raise not_found()
    meta = await services.store.meta(chat_id)
    if meta is None:
        raise not_found()
    auth.check_owner(chat_id, meta)  # another key's chat: 404
    return meta


async def submit_chat(services: Services, body: ChatCreate, *, extra: dict[str, Any] | None = None) -> str:
    """Check the limits, record the chat and enqueue it; return its id. What
    ``POST /chat`` does, shared with ``POST /v1/chat/completions``. ``extra``
    goes into the stored request (the worker ignores keys it does not know)."""
    settings = services.settings
    messages = body.all_messages()
    size = sum(len(m["content"]) for m in messages) + len(body.system or "")
    if size > settings.max_prompt_chars:
        raise ApiError(413, "prompt_too_long", f"prompt is {size} characters; the limit is {settings.max_prompt_chars}")
    max_tokens = body.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise ApiError(422, "invalid_request", f"max_tokens: at most {settings.max_tokens_limit}")
    model = body.model or settings.model
    stored = {
        **(extra or {}),  # never overrides the fields below
        "messages": messages,
        "model": model,
        "max_tokens": max_tokens,
        "temperature": body.temperature,
        "system": body.system,
    }
    admission.admit(services.settings, messages, body.system, model)  # 413 too many messages, 422
    chat_id = keys.new_chat_id()
    job = admission.queued_job(services.redis, settings, chat_id)
    try:
        # Admission (503 when the queue is full), metadata, arq job and the
        # workers' wake-up, in one round trip: the first token comes sooner.
        await services.store.submit(chat_id, stored, job, model=model, owner=auth.current_owner())
    except QueueFull as full:
        raise admission.queue_full(settings, full.waiting) from None
    metrics.chat_submitted(chat_id, stored)
    return chat_id


_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "with `Accept: text/event-stream`: the chat's stream itself (as GET /chat/{id}/stream), "
        "with its id in `X-Chat-Id` and its stream token in `X-Stream-Token`",
        "content": {"text/event-stream": {}},
    }
}


@router.post("/chat", status_code=202, response_model=ChatCreated, responses={**_ERRORS, **_STREAMED})
async def create_chat(body: ChatCreate, request: Request, response: Response) -> ChatCreated | Response:
    services = services_of(request)
    settings = services.settings
    chat_id = await submit_chat(services, body)
    token = tokens.sign(await services.secret.current(), chat_id, settings.stream_token_ttl_s)
    if "text/event-stream" in request.headers.get("accept", ""):
        # One request instead of two: the client is subscribed while a worker
        # picks the chat up, rather than a round trip after. It resumes with
        # GET /chat/{id}/stream like any other stream.
        stream = event_stream(relay(services.hub, chat_id, 0, retry_ms=settings.sse_retry_ms), settings, chat_id)
        stream.headers.update({"Location": f"/chat/{chat_id}", "X-Stream-Token": token})
        return stream
    response.headers["Location"] = f"/chat/{chat_id}"
    return ChatCreated(id=chat_id, status="queued", stream_url=f"/chat/{chat_id}/stream", stream_token=token)


@router.get(
    "/chat/{chat_id}/stream",
    responses={**_ERRORS, 204: {"description": "the Last-Event-ID is the chat's terminal event: nothing more to send"}},
    response_class=EventSourceResponse,
)
async def stream_chat(
    chat_id: str,
    request: Request,
    last_event_id: str | None = Query(None, description="for clients that cannot send the Last-Event-ID header"),
    token: str | None = Query(None, description="the stream_token from POST /chat"),
) -> Response:
    services = services_of(request)
    settings = services.settings
    # The header wins: a browser's automatic reconnect sends the newest id
    # there while the URL still holds the one the page started with.
    after = parse_last_event_id(request.headers.get("last-event-id", last_event_id))
    meta = await load_meta(services, chat_id)
    if check_last_event_id(after, meta):
        # The client has the terminal event. 204 is what tells an EventSource
        # to stop reconnecting (a 200 with nothing in it has it back every
        # ``retry`` ms, for ever, when it does not close itself on done).
        return Response(status_code=204, headers={"X-Chat-Id": chat_id})
    body = relay(services.hub, chat_id, after, retry_ms=settings.sse_retry_ms, meta=meta)
    return event_stream(body, settings, chat_id)


@router.get("/chat/{chat_id}", response_model=ChatState, responses=_ERRORS)
async def get_chat(chat_id: str, request: Request) -> ChatState:
    services = services_of(request)
    meta = await load_meta(services, chat_id)
    events = await services.store.events(chat_id)
    return ChatState(
        id=chat_id,
        status=meta["status"],
        model=meta.get("model", ""),
        text=assemble_text(events),
        attempt=int(meta["attempt"]),
        last_seq=int(meta["last_seq"]),
        created_at=float(meta["created_at"]),
        finish_reason=meta.get("finish_reason"),
        usage=orjson.loads(meta["usage"]) if "usage" in meta else None,
        error=orjson.loads(meta["error"]) if "error" in meta else None,
    )


async def cancel(services: Services, chat_id: str, meta: dict[str, str]) -> str:
    """Cancel a chat: "ended" (it had not started: ended here, at once),
    "cancelling" (its worker was told to stop) or "finished" (too late). What
    ``DELETE /chat/{id}`` does, shared with the AI SDK's stop route and
    ``POST /v1/responses/{id}/cancel``."""
    store = services.store
    if meta["status"] in FINISHED:
        return "finished"
    if meta["status"] == "queued":
        # No worker has claimed it (attempt 0): end it here, atomically. If a
        # worker claims it first, the append is fenced and the worker is told.
        done = (EventType.DONE, {"finish_reason": "cancelled", "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
        result = await store.append(chat_id, 0, [done], terminal_meta(*done))
        if result.accepted:
            return "ended"
        if result.seq == ALREADY_FINISHED:
            return "finished"
    await store.request_cancel(chat_id)
    return "cancelling"


@router.delete("/chat/{chat_id}", responses=_ERRORS)
async def cancel_chat(chat_id: str, request: Request) -> JSONResponse:
    """Cancel: 200 when the chat ended here (it had not started), 202 when the
    worker running it was told to stop, 409 when it had already finished."""
    services = services_of(request)
    meta = await load_meta(services, chat_id)
    outcome = await cancel(services, chat_id, meta)
    if outcome == "finished":
        status = meta["status"] if meta["status"] in FINISHED else "done"
        return error_response(409, "already_finished", f"chat already finished ({status})")
    if outcome == "ended":
        return JSONResponse({"id": chat_id, "status": "done", "finish_reason": "cancelled"}, status_code=200)
    return JSONResponse({"id": chat_id, "status": "cancelling"}, status_code=202)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    try:
        await services.redis.ping()
    except (RedisError, OSError):
        return error_response(503, "unavailable", "Redis is unreachable", {"Retry-After": "1"})
    return JSONResponse({"status": "ready", "hub_connected": services.hub.connected.is_set()})
