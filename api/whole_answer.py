"""Waiting for a chat's whole answer: the OpenAI routes' ``stream: false``
(``/v1/chat/completions`` and ``/v1/responses``). The wait joins the hub as a
stream does (no polling), for at most ``job_timeout_s``, and ends early when
the client goes away (the chat runs on)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from api.errors import OpenAIError, unavailable
from api.hub import Hub, HubUnavailable
from api.services import Services
from api.subscription import ChatEnded
from shared.events import Event
from shared.store import LogExpired


async def whole_answer(request: Request, services: Services, chat_id: str, *, read_it: str) -> list[Event] | None:
    """The chat's events up to its terminal one; None when the client left
    first. Raises ``OpenAIError``: 504 when the deadline passes (``read_it``
    says where the answer can be read later: it still runs), 503 when the
    hub is away, 500 when the chat's events or data expired."""
    headers = {"X-Chat-Id": chat_id}
    timeout = services.settings.job_timeout_s
    collect = asyncio.ensure_future(_until_terminal(services.hub, chat_id))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({collect, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (collect, gone):
            if not task.done():
                task.cancel()
        await asyncio.gather(collect, gone, return_exceptions=True)
    if gone in done and collect not in done:
        return None
    if collect not in done:
        message = f"{chat_id} did not finish within {timeout} s; it still runs: {read_it}"
        raise OpenAIError(504, "timeout", message, headers={**headers, "x-should-retry": "false"})
    try:
        return collect.result()
    except HubUnavailable:
        raise unavailable("the chat's events are unavailable; try again") from None
    except LogExpired as exc:
        raise OpenAIError(500, "log_expired", str(exc), headers=headers) from None
    except ChatEnded as exc:
        raise OpenAIError(500, exc.code, exc.message, headers=headers) from None


async def _until_terminal(hub: Hub, chat_id: str) -> list[Event]:
    async with hub.subscribe(chat_id, 0) as sub:
        return [event async for event in sub]  # ends after the terminal event


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already,
    so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
