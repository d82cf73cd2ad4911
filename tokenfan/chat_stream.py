"""Reading a chat's stream for ``tokenfan chat``, across reconnects: create the
chat, then follow its events with ``Last-Event-ID`` after every drop, until a
terminal event; a refusal or an unreachable service is a ``ChatFailed`` with
the command's exit status."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_ERROR_EVENT = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_CANCELLED = 4
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("done", "error")
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class ChatFailed(Exception):
    def __init__(self, code: str, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Event:
    id: int | None
    type: str
    data: dict[str, Any]


# --- reading a chat's stream, across reconnects ------------------------------------------

Status = Callable[..., None]  # status(kind, **details): "reconnecting", "resumed"


@dataclass
class StreamReader:
    """Yields one chat's events from ``after`` on, in order, each once, until a
    terminal event; reconnects with ``Last-Event-ID`` when the connection drops
    or the server is briefly unavailable."""

    client: Any  # httpx.Client with base_url (and the Authorization header, if any)
    chat_id: str
    _: KW_ONLY
    token: str | None = None
    after: int = 0
    reconnect_timeout: float = 60.0
    on_status: Status = lambda kind, **details: None
    sleep: Callable[[float], None] = time.sleep
    retry_s: float = field(default=2.0, init=False)  # until the server says otherwise
    reconnects: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.last_id = self.after

    def events(self) -> Iterator[Event]:
        import httpx
        from httpx_sse import SSEError, connect_sse

        down_since: float | None = None
        attempt = 0
        while True:
            problem = ""
            try:
                headers = {"Last-Event-ID": str(self.last_id)} if self.last_id else {}
                params = {"token": self.token} if self.token else {}
                with connect_sse(
                    self.client, "GET", f"/chat/{self.chat_id}/stream", headers=headers, params=params
                ) as source:
                    response = source.response
                    if response.status_code == 204:
                        return  # we hold the terminal event already: nothing more to send
                    if response.status_code != 200:
                        response.read()
                        if response.status_code not in RETRYABLE_STATUS:
                            raise _http_failure(response)
                        problem = f"HTTP {response.status_code}"
                    else:
                        if down_since is not None:
                            self.reconnects += 1
                            self.on_status("resumed", last_id=self.last_id)
                        down_since, attempt = None, 0
                        for sse in source.iter_sse():
                            if sse.retry is not None:
                                self.retry_s = max(sse.retry / 1000, 0.05)
                            if not sse.event or (sse.event == "message" and not sse.data):
                                continue  # a lone "retry:" (an API shutting down), not an event
                            event = _event_of(sse)
                            if event.type != "error" and event.id is not None:
                                if event.id <= self.last_id:
                                    continue  # never twice (the server does not resend; belt and braces)
                                self.last_id = event.id
                            yield event
                            if event.type in TERMINAL:
                                return
                        problem = "the server closed the stream"
            except (httpx.TransportError, SSEError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            now = time.monotonic()
            if down_since is None:
                down_since = now
            elif now - down_since > self.reconnect_timeout:
                raise ChatFailed(
                    "unreachable", f"no connection for {self.reconnect_timeout:g} s ({problem})", EXIT_UNAVAILABLE
                )
            self.on_status("reconnecting", last_id=self.last_id, reason=problem)
            # The server's retry delay, backing off while it stays away.
            self.sleep(min(self.retry_s * (2 ** min(attempt, 3)), 5.0))
            attempt += 1


def _event_of(sse: Any) -> Event:
    try:
        data = json.loads(sse.data) if sse.data else {}
    except ValueError:
        data = {"raw": sse.data}
    return Event(int(sse.id) if sse.id and sse.id.isdigit() else None, sse.event, data)


def _http_failure(response: Any) -> ChatFailed:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    retry = response.headers.get("retry-after")
    if retry:
        message += f" (retry after {retry} s)"
    return ChatFailed(code, f"{message} [HTTP {response.status_code}]", EXIT_UNAVAILABLE)


def create_chat(client: Any, body: dict[str, Any]) -> tuple[str, str | None]:
    import httpx

    try:
        response = client.post("/chat", json=body)
    except httpx.TransportError as exc:
        raise ChatFailed("unreachable", f"{client.base_url}: {exc or type(exc).__name__}") from None
    if response.status_code != 202:
        raise _http_failure(response)
    data = response.json()
    return data["id"], data.get("stream_token")
