"""OpenAI's Responses API over the queue, with OpenAI's own resume:

    POST /v1/responses                     create: streamed, waited for, or in the background
    GET  /v1/responses/{id}                the response object as it stands
    GET  /v1/responses/{id}?stream=true&starting_after=N    its events after sequence_number N, then live
    POST /v1/responses/{id}/cancel         cancel it

A response is an ordinary tokenfan chat: its id is ``resp_<chat id>`` (the
``X-Chat-Id`` header has the chat id), its message item ``msg_<chat id>``,
and the native routes work on the chat too.

The events
----------
Every response streams the same events, in this order, with these
``sequence_number``s (P = 4):

    0  response.created           status "in_progress", no output yet
    1  response.in_progress
    2  response.output_item.added     the message item (id msg_<chat id>)
    3  response.content_part.added    its output_text part
    3+s  one event per log event s before the terminal one:
         token -> response.output_text.delta
         reset -> response.output_text.delta with "delta": "" and
                  "tokenfan_reset": {"attempt", "reason"} (as on /v1/chat/completions:
                  the protocol cannot take text back; clients that know it drop theirs)
    3+L.. the terminal log event L:
         done  -> response.output_text.done, response.content_part.done,
                  response.output_item.done, then response.completed
                  (response.incomplete for finish_reason "length", with
                  incomplete_details.reason "max_output_tokens", and for a
                  cancelled answer, status "cancelled")
         error -> response.failed (status "failed", error {code, message})

So a ``sequence_number`` is a pure function of the chat's log: the same on
every read, and ``starting_after=N`` is an exact point in it (N < 3 replays
from inside the preamble; N = 3+s resumes after log event s; N inside the
terminal group sends the rest of the group). A number beyond what the chat has
produced is a 400. The ``.done`` events and the final response object carry
the text after the last reset, the same as ``GET /v1/responses/{id}`` and
``GET /chat/{id}``.

When the stream cannot go on (Redis or the hub away, the API shutting down)
it ends with an ``error`` event that carries ``error: {type, code, message,
param}`` (the official SDKs raise it) and the ``sequence_number`` of the last
event sent (0 in the farewell of an API shutdown, written before the stream
starts), so resuming from any number the client saw never skips an event. The
``[DONE]`` marker of chat completions is not part of this protocol.

``stream: false`` waits for the answer (``job_timeout_s`` at most: then a 504
with ``x-should-retry: false``; the response runs on) and answers the
response object; a generation error is that object with ``status: "failed"``
and its ``error`` (HTTP 200, as OpenAI does: the SDKs then do not retry, and
``@ai-sdk/openai`` throws it). ``background: true`` answers at once with
``status: "queued"``; read the result with ``GET`` or resume the stream.

Errors before a stream starts are OpenAI-shaped (api/errors.py answers in this
shape under ``/v1``): 422 for a bad or unsupported body (``param`` names the
field), 404 for an unknown response, 400 for a bad ``starting_after``, 409
for cancelling a finished response, 503 with ``Retry-After`` when Redis is
away.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from api.errors import OpenAIError, openai_body
from api.openai_schemas import native_request
from api.relay import relay_events
from api.response_object import Outcome, ResponseShape, chat_id_of, response_id
from api.responses_schemas import ResponsesRequest
from api.routes import cancel, load_meta, services_of, submit_chat
from api.services import Services
from api.sse_response import EventSourceResponse, event_stream
from api.whole_answer import whole_answer
from shared.events import Event, EventType, assemble_text
from shared.store import FINISHED, ChatStore

PREAMBLE = 4  # events before the first log event: numbers 0..3
DONE_EVENTS = 4  # output_text.done, content_part.done, output_item.done, completed

router = APIRouter(prefix="/v1", tags=["openai"])

_ERROR_DOC = {
    "content": {"application/json": {"example": openai_body(404, "not_found", "no such response (unknown or expired)")}}
}
_ERRORS: dict[int | str, dict[str, Any]] = {code: _ERROR_DOC for code in (400, 404, 409, 413, 422, 503, 504)}


# --- the stream ------------------------------------------------------------------


def _frame(payload: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), orjson.dumps(payload))


class ResponseEvents:
    """The relay's encoding (api/relay.py) for one client's stream of a
    response: every event numbered as the module docstring says, only those
    after ``starting_after`` sent. Holds the text so far (for the ``.done``
    events), seeded by the caller with the text of the events before the
    relay's ``after``."""

    def __init__(self, shape: ResponseShape, starting_after: int, text: str = "") -> None:
        self.shape = shape
        self.starting_after = starting_after
        self.last = starting_after  # the last sequence_number sent
        self.text = text

    def _emit(self, number: int, payload: dict[str, Any]) -> bytes:
        if number <= self.starting_after:
            return b""
        self.last = number
        return _frame({"type": payload.pop("type"), "sequence_number": number, **payload})

    def _at(self, **fields: Any) -> dict[str, Any]:
        return {"item_id": self.shape.item_id, "output_index": 0, "content_index": 0, **fields}

    def preamble(self) -> bytes:
        shape = self.shape
        created = shape.response(Outcome("in_progress"), None)
        return b"".join(
            (
                self._emit(0, {"type": "response.created", "response": created}),
                self._emit(1, {"type": "response.in_progress", "response": created}),
                self._emit(
                    2,
                    {"type": "response.output_item.added", "output_index": 0, "item": shape.item("in_progress", None)},
                ),
                self._emit(3, {"type": "response.content_part.added", **self._at(part=shape.part(""))}),
            )
        )

    def events(self, batch: list[Event]) -> bytes:
        return b"".join(self._event(event) for event in batch)

    def _event(self, event: Event) -> bytes:
        number = PREAMBLE - 1 + event.seq
        data = event.payload()
        if event.type == EventType.TOKEN:
            delta = data.get("text", "")
            self.text += delta
            return self._emit(number, {"type": "response.output_text.delta", **self._at(delta=delta, logprobs=[])})
        if event.type == EventType.RESET:
            self.text = ""
            reset = {"attempt": data.get("attempt"), "reason": data.get("reason")}
            delta = {"type": "response.output_text.delta", **self._at(delta="", logprobs=[]), "tokenfan_reset": reset}
            return self._emit(number, delta)
        if event.type == EventType.DONE:
            shape, text = self.shape, self.text
            outcome = Outcome.of_done(data)
            item = shape.item(outcome.item_status, text)
            last = "response.completed" if outcome.status == "completed" else "response.incomplete"
            return b"".join(
                (
                    self._emit(number, {"type": "response.output_text.done", **self._at(text=text, logprobs=[])}),
                    self._emit(number + 1, {"type": "response.content_part.done", **self._at(part=shape.part(text))}),
                    self._emit(number + 2, {"type": "response.output_item.done", "output_index": 0, "item": item}),
                    self._emit(number + 3, {"type": last, "response": shape.response(outcome, text)}),
                )
            )
        if event.type == EventType.ERROR:
            response = self.shape.response(Outcome.of_error(data), self.text)
            return self._emit(number, {"type": "response.failed", "response": response})
        return b""

    def failure(self, code: str, message: str) -> bytes:
        if code == "unavailable":
            rid = response_id(self.shape.chat_id)
            message = f"{message}; resume: GET /v1/responses/{rid}?stream=true&starting_after=<last number>"
        return error_event(self.last, 503 if code == "unavailable" else 410, code, message)


def error_event(number: int, status: int, code: str, message: str) -> bytes:
    """An ``error`` event outside the numbering: it repeats the last number
    sent, so a client resuming from it misses nothing."""
    error = openai_body(status, code, message)["error"]
    payload = {"type": "error", "sequence_number": max(number, 0), "code": code, "message": message, "param": None}
    return _frame({**payload, "error": error})


def terminal_group(meta: dict[str, str]) -> int:
    """How many events the terminal log event of a finished chat makes."""
    return DONE_EVENTS if meta["status"] == "done" else 1


def last_number(meta: dict[str, str]) -> int:
    """The highest sequence_number the chat has produced so far."""
    last_seq = int(meta["last_seq"])
    if meta["status"] in FINISHED:
        return PREAMBLE - 1 + last_seq + terminal_group(meta) - 1
    return PREAMBLE - 1 + last_seq


async def text_through(store: ChatStore, chat_id: str, seq: int) -> str:
    """The answer's text after its last reset, up to and including log event ``seq``."""
    if seq <= 0:
        return ""
    events: list[Event] = []
    async for page in store.read_log(chat_id, 0):
        events.extend(e for e in page if e.seq <= seq)
        if page and page[-1].seq >= seq:
            break
    return assemble_text(events)


async def _stream(services: Services, chat_id: str, meta: dict[str, str], starting_after: int) -> EventSourceResponse:
    shape = ResponseShape(chat_id, meta)
    # The log event to relay after: the one whose events end at or before
    # starting_after, but never past the terminal one's group (its events
    # are filtered by number instead).
    after = max(0, starting_after - (PREAMBLE - 1))
    last_seq = int(meta["last_seq"])
    if meta["status"] in FINISHED and after >= last_seq:
        after = last_seq - 1
    encoding = ResponseEvents(shape, starting_after, await text_through(services.store, chat_id, after))
    return event_stream(
        relay_events(services.hub, chat_id, after, encoding, meta, preamble=encoding.preamble()),
        services.settings,
        chat_id,
        farewell=error_event(-1, 503, "unavailable", f"server shutting down; resume {response_id(chat_id)}"),
    )


# --- waiting ---------------------------------------------------------------------


async def _wait(request: Request, services: Services, chat_id: str, shape: ResponseShape) -> Response:
    read_it = f"GET /v1/responses/{response_id(chat_id)} reads it"
    events = await whole_answer(request, services, chat_id, read_it=read_it)
    if events is None:
        return Response(status_code=499)  # nobody reads it; the response runs on
    last = events[-1]
    outcome = Outcome.of_error(last.payload()) if last.type == EventType.ERROR else Outcome.of_done(last.payload())
    return JSONResponse(shape.response(outcome, assemble_text(events)), headers={"X-Chat-Id": chat_id})


async def _as_it_stands(services: Services, chat_id: str, meta: dict[str, str]) -> JSONResponse:
    text = None if meta["status"] == "queued" else assemble_text(await services.store.events(chat_id))
    body = ResponseShape(chat_id, meta).response(Outcome.of_meta(meta), text)
    return JSONResponse(body, headers={"X-Chat-Id": chat_id})


# --- routes ----------------------------------------------------------------------


@router.post("/responses", responses=_ERRORS)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """Create a response: streamed (``stream: true``), waited for, or in the
    background (``background: true``). The chat id is in ``X-Chat-Id``."""
    services = services_of(request)
    native = native_request(body)
    chat_id = await submit_chat(services, native, extra={"responses": body.options()})
    meta = await load_meta(services, chat_id)
    if body.stream:
        return await _stream(services, chat_id, meta, -1)
    shape = ResponseShape(chat_id, meta)
    if body.background:
        return JSONResponse(shape.response(Outcome("queued"), None), headers={"X-Chat-Id": chat_id})
    return await _wait(request, services, chat_id, shape)


@router.get("/responses/{rid}", responses=_ERRORS)
async def retrieve_response(
    rid: str,
    request: Request,
    stream: bool = Query(False, description="stream the response's events"),
    starting_after: int | None = Query(None, ge=-1, description="resume after this sequence_number"),
) -> Response:
    """The response object; with ``stream=true`` its events after
    ``starting_after`` (all of them without it), then the live ones."""
    services = services_of(request)
    chat_id = chat_id_of(rid)
    meta = await load_meta(services, chat_id)
    if stream:
        after = -1 if starting_after is None else starting_after
        if after > last_number(meta):
            raise OpenAIError(
                400,
                "invalid_starting_after",
                f"starting_after {after} is beyond this response's last event ({last_number(meta)})",
                "starting_after",
            )
        return await _stream(services, chat_id, meta, after)
    return await _as_it_stands(services, chat_id, meta)


@router.post("/responses/{rid}/cancel", responses=_ERRORS)
async def cancel_response(rid: str, request: Request) -> Response:
    """Cancel a response: it ends with status ``cancelled``. 409 when it has already finished."""
    services = services_of(request)
    chat_id = chat_id_of(rid)
    meta = await load_meta(services, chat_id)
    outcome = await cancel(services, chat_id, meta)
    if outcome == "finished":
        raise OpenAIError(409, "already_finished", f"response {rid} has already finished")
    meta = await load_meta(services, chat_id)
    return await _as_it_stands(services, chat_id, meta)
