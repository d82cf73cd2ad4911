"""Errors: one table from exception to response, in the two shapes clients read.

Native routes answer ``{"error": {"code", "message"}}`` (a 422 adds
``details``); routes under ``/v1`` answer OpenAI's ``{"error": {"message",
"type", "param", "code"}}``. The status and ``code`` are the same in both.
Redis being away is a 503 with ``Retry-After``, never a 500 or a hang.

The error tree, and what reaches a client::

    Exception
    ├── shared.errors.TokenfanError          raised on purpose
    │   ├── api.errors.ApiError              its own status and code (404 not_found, 503 unavailable…)
    │   │   └── api.errors.OpenAIError       ... naming the request parameter at fault (``param``)
    │   ├── shared.store.LogExpired          410 log_expired: MAXLEN trimmed events the answer needs
    │   ├── api.hub.HubUnavailable           503 unavailable: pub/sub could not confirm a subscription
    │   ├── api.subscription.ChatEnded       a stream's last ``error`` event (chat_expired, log_expired)
    │   ├── api.openai_schemas.UnsupportedInput  422 unsupported (tools, images, n > 1)
    │   └── worker.providers.base.ProviderError  a chat's ``error`` event, with its stable code
    │       └── worker.providers.upstream.UpstreamFailure  upstream_* codes; knows if a retry may help
    ├── fastapi RequestValidationError       422 invalid_request
    ├── starlette HTTPException              404 not_found, 405 method_not_allowed, else http_error
    └── redis RedisError                     503 unavailable, Retry-After: 1

The command-line tools (tokenfan/) keep their own: ``LocalModelError``,
``EmbeddedRedisError``, ``ChatFailed``; they are never sent to a client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import count_error
from shared.errors import TokenfanError
from shared.store import LogExpired

log = logging.getLogger("tokenfan.api")

OPENAI_PREFIX = "/v1/"


class ApiError(TokenfanError):
    """A request refused with ``status`` and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class OpenAIError(ApiError):
    """An ``ApiError`` that names the offending request parameter."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, **kw: Any) -> None:
        super().__init__(status, code, message, **kw)
        self.param = param


def not_found(what: str = "chat") -> ApiError:
    return ApiError(404, "not_found", f"no such {what} (unknown or expired)")


def unavailable(message: str = "Redis is unavailable") -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": "1"})


# --- the table -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """What an error answers, whatever the shape."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None
    param: str | None = None  # OpenAI's shape: the request parameter at fault
    details: list[dict[str, Any]] | None = None  # the native 422: every field at fault


def problem_of(exc: BaseException, openai: bool = False) -> Problem | None:
    """The one table from exception to response; None: not an error a client
    is told about (a bug: let it be a 500 and logged)."""
    if isinstance(exc, ApiError):
        return Problem(exc.status, exc.code, exc.message, exc.headers, getattr(exc, "param", None))
    if isinstance(exc, RequestValidationError):
        return invalid_request(list(exc.errors()), openai, strip_body=True)
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Problem(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
    if isinstance(exc, LogExpired):
        # MAXLEN trimmed events the answer needs: say so rather than a partial text.
        return Problem(410, "log_expired", str(exc))
    if isinstance(exc, RedisError):
        return Problem(503, "unavailable", "Redis is unavailable; try again", {"Retry-After": "1"})
    return None


def invalid_request(errors: list[dict[str, Any]], openai: bool, strip_body: bool = True) -> Problem:
    """A 422 for pydantic's errors. ``strip_body``: their locations start with
    "body" (FastAPI's request validation), which OpenAI's ``param`` leaves out."""
    if openai:
        if errors and errors[0].get("type") == "json_invalid":
            detail = (errors[0].get("ctx") or {}).get("error", "")
            return Problem(422, "invalid_request", f"the body is not valid JSON: {detail}".rstrip(": "))
        locs = [tuple(e.get("loc", ()))[1 if strip_body else 0 :] for e in errors]
        message = "; ".join(f"{_param(loc) or 'body'}: {e.get('msg', '')}" for loc, e in zip(locs, errors, strict=True))
        return Problem(422, "invalid_request", message or "invalid request", param=_param(locs[0]) if locs else None)
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details) or "invalid request"
    return Problem(422, "invalid_request", message, details=details)


def _param(loc: tuple | list) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


# --- the two shapes ----------------------------------------------------------------


def openai_error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": openai_error_type(status), "param": param, "code": code}}


def body_of(problem: Problem, openai: bool) -> dict[str, Any]:
    if openai:
        return openai_body(problem.status, problem.code, problem.message, problem.param)
    error: dict[str, Any] = {"code": problem.code, "message": problem.message}
    if problem.details is not None:
        error["details"] = problem.details
    return {"error": error}


def render(problem: Problem, openai: bool) -> JSONResponse:
    count_error(problem.code)
    return JSONResponse(body_of(problem, openai), status_code=problem.status, headers=problem.headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A native error answer (the native routes' own refusals)."""
    return render(Problem(status, code, message, headers), openai=False)


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def install(app: FastAPI) -> None:
    """One handler per row of the table; the path picks the shape."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        openai = is_openai(request.url.path)
        problem = problem_of(exc, openai)
        if problem is None:  # not in the table: a bug
            raise exc
        if isinstance(exc, RedisError):
            log.warning("redis error on %s %s: %s", request.method, request.url.path, exc)
        return render(problem, openai)

    for kind in (ApiError, RequestValidationError, StarletteHTTPException, LogExpired, RedisError):
        app.add_exception_handler(kind, handle)
