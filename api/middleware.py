"""The front door: one ASGI middleware in front of every route.

In this order, for each HTTP request:

0. **Header size.** More than ``MAX_HEADER_BYTES`` of headers is a 431 (uvicorn's
   httptools parser sets no limit of its own; a proxy in front should too).
1. **Body size.** A ``Content-Length`` above ``max_body_bytes`` is a 413 at
   once; a body without one (chunked) is read up to the limit and refused
   when it goes past it. The body read here is handed on to the app as is.
2. **Authentication** (when API keys are configured). ``/healthz``,
   ``/readyz`` and ``/metrics`` are open, and so is the web page (``/``,
   ``/static/*``: static files that hold no data; the page asks for a key and
   sends it itself). A stream route
   (``/chat/{id}/stream``, ``/v1/chat/completions/{id}/stream``) with
   ``?token=`` is allowed by a valid stream token for that chat (401 if it is
   wrong, expired or tampered with, whatever else the request carries);
   everything else needs ``Authorization: Bearer <key>`` (401 without a valid
   one). An API key is never taken from the URL. Deny by default: a route
   added later is guarded without anyone remembering to.
3. **Rate limit**, per key (api/ratelimit.py): 429 with ``Retry-After``.
   Streams and their resumes are not counted (the native and OpenAI streams,
   ``GET /api/chat/{id}/stream``, ``GET /v1/responses/{id}``): a browser's
   EventSource that gets a non-200 gives up for good, an AI SDK resume that
   fails shows no answer, and after an API deploy every client reconnects at once.

The request's identity is then set for the routes (``auth.current_owner``,
``auth.check_owner``). Errors are JSON ``{"error": {"code", "message"}}``, in
OpenAI's shape under ``/v1/``. The answers of ``POST /v1/chat/completions``,
``POST /v1/responses`` and ``POST /api/chat`` also get an ``X-Stream-Token``
header, the native ``stream_token`` for their chat.

**CORS** (``TOKENFAN_CORS_ORIGINS``, off when empty): Starlette's
``CORSMiddleware`` sits in front of the guard, so a browser's preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is
answered before any of the above (a preflight never carries the API key);
every answer to an allowed origin, refusals included, says so and exposes
``X-Chat-Id`` and ``X-Stream-Token``. No credentials (cookies): the API key
travels in ``Authorization``, the stream token in the URL.

With no key configured the service runs open (and says so once at start-up):
no authentication, no rate limit, no ownership; the size limits still apply.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from redis.exceptions import RedisError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import auth, errors, tokens
from api.ratelimit import RateLimiter
from shared.settings import Settings

log = logging.getLogger("tokenfan.api")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})
OPEN_ASSET = re.compile(r"/static/[^/]+")  # the page's files: one segment, as api/page.py serves them
MAX_HEADER_BYTES = 64 * 1024
STREAM_PATH = re.compile(r"/(?:chat|v1/chat/completions)/([^/]+)/stream")
# Other resumes, by clients that send the key in a header (no stream token):
# not rate-limited either, for the same reason (see 3. above).
RESUME_PATH = re.compile(r"/api/chat/[^/]+/stream|/v1/responses/[^/]+")
# POST routes whose answer names a new chat (X-Chat-Id): it gets its stream token too.
TOKENED_POSTS = frozenset({"/v1/chat/completions", "/v1/responses", "/api/chat"})
# What a page on another origin may read of a response (CORS); the rest is hidden from it.
EXPOSED_HEADERS = ["X-Chat-Id", "X-Stream-Token", "Location", "Retry-After", "x-vercel-ai-ui-message-stream"]
CORS_METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
CORS_MAX_AGE_S = 600


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _query_param(scope: Scope, name: str) -> str | None:
    value = None
    for key, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key == name:
            value = v  # the last one wins, as for FastAPI's Query
    return value


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = auth.KeyRing.from_setting(settings.api_keys)
        self.max_body = settings.max_body_bytes
        self._limiter: RateLimiter | None = None
        self._limiter_redis: Any = None

    # --- the middleware ----------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        openai = errors.is_openai(path)

        async def refuse(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            await errors.render(errors.Problem(status, code, message, headers), openai)(scope, receive, send)

        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await refuse(431, "headers_too_large", f"the request headers are over {MAX_HEADER_BYTES} bytes")
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await refuse(413, "body_too_large", f"the request body is over {self.max_body} bytes")
            return

        identity: auth.Identity | None = None
        if self.keys and path not in OPEN_PATHS and not OPEN_ASSET.fullmatch(path):
            try:
                identity = await self._authenticate(scope, path)
            except errors.ApiError as refusal:
                await refuse(refusal.status, refusal.code, refusal.message, refusal.headers)
                return
            except (RedisError, OSError):
                await refuse(503, "unavailable", "Redis is unavailable; try again", {"Retry-After": "1"})
                return

        if (length is not None and length != b"0") or _header(scope, b"transfer-encoding") is not None:
            messages = await self._read_body(receive)
            if messages is None:
                await refuse(413, "body_too_large", f"the request body is over {self.max_body} bytes")
                return
            receive = _replay(messages, receive)

        if scope["method"] == "POST" and path in TOKENED_POSTS:
            send = self._with_stream_token(scope, send)

        with auth.acting_as(identity):
            await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, path: str) -> auth.Identity:
        stream = STREAM_PATH.fullmatch(path)
        if stream is not None:
            token = _query_param(scope, "token")
            if token is not None:
                chat_id = stream[1]
                if not await self._services(scope).secret.verify(chat_id, token):
                    raise errors.ApiError(
                        401, "invalid_stream_token", "the stream token is invalid or expired for this chat"
                    )
                return auth.Identity(chat_id=chat_id)
        key = auth.bearer_key(_header(scope, b"authorization"))
        owner = self.keys.owner_of(key) if key is not None else None
        if owner is None:
            raise errors.ApiError(
                401,
                "unauthorized",
                "a valid API key is required: Authorization: Bearer <key>",
                {"WWW-Authenticate": 'Bearer realm="tokenfan"'},
            )
        if stream is None and not (scope["method"] == "GET" and RESUME_PATH.fullmatch(path)):
            await self._rate_limit(scope, owner)
        return auth.Identity(owner=owner)

    async def _rate_limit(self, scope: Scope, owner: str) -> None:
        settings = self.settings
        if settings.rate_limit_per_s <= 0:
            return
        services = self._services(scope)
        if self._limiter is None or self._limiter_redis is not services.redis:
            self._limiter = RateLimiter(services.redis, settings.rate_limit_per_s, settings.rate_limit_burst)
            self._limiter_redis = services.redis
        verdict = await self._limiter.take(owner)
        if not verdict.allowed:
            raise errors.ApiError(
                429,
                "rate_limited",
                f"rate limit of {settings.rate_limit_per_s:g} requests/s (burst {settings.rate_limit_burst}) "
                f"reached; retry in {verdict.retry_after_s} s",
                {"Retry-After": str(verdict.retry_after_s)},
            )

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """The request's messages, or None once the body is over the limit."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client left; the app will see it
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return messages

    def _with_stream_token(self, scope: Scope, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                chat_id = next((v for k, v in message.get("headers", []) if k.lower() == b"x-chat-id"), None)
                if chat_id is not None:
                    services = self._services(scope)
                    try:
                        secret = await services.secret.current()
                    except (RedisError, OSError):
                        secret = None  # the header is a convenience: the answer goes out without it
                    if secret is not None:
                        token = tokens.sign(secret, chat_id.decode(), services.settings.stream_token_ttl_s)
                        message = {**message, "headers": [*message["headers"], (b"x-stream-token", token.encode())]}
            await send(message)

        return sending

    @staticmethod
    def _services(scope: Scope) -> Any:
        return scope["app"].state.services


def _replay(messages: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    pending = deque(messages)

    async def replayed() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replayed


def install(app: Any, settings: Settings) -> None:
    """Put the guard in front of the app and say, once, how it runs."""
    guard_keys = auth.KeyRing.from_setting(settings.api_keys)
    if guard_keys:
        log.info(
            "API keys: %d configured; every route but %s and /static/* needs one",
            len(guard_keys),
            ", ".join(sorted(OPEN_PATHS)),
        )
        if guard_keys.raw_entries:
            log.warning(
                "%d API key(s) configured in clear; store their hashes instead (python -m api.auth hash KEY)",
                guard_keys.raw_entries,
            )
    else:
        log.warning("no API key configured (TOKENFAN_API_KEYS): the service runs OPEN, without authentication")
    app.add_middleware(Guard, settings=settings)
    origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Added last, so it runs first: preflights never reach the guard.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=CORS_METHODS,
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=CORS_MAX_AGE_S,
        )
        log.info("CORS: allowed origins %s", ", ".join(origins))
