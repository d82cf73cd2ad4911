"""Every error is JSON ``{"error": {"code", "message"}}`` with the right status;
Redis being away is a 503 with ``Retry-After``, never a 500 or a hang."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import count_error
from shared.store import LogExpired

log = logging.getLogger("tokenfan.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    count_error(code)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def not_found(what: str = "chat") -> ApiError:
    return ApiError(404, "not_found", f"no such {what} (unknown or expired)")


def unavailable(message: str = "Redis is unavailable") -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": "1"})


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details) or "invalid request"
        body = {"error": {"code": "invalid_request", "message": message, "details": details}}
        count_error("invalid_request")
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(LogExpired)
    async def _log_expired(request: Request, exc: LogExpired) -> JSONResponse:
        # MAXLEN trimmed events the answer needs: say so rather than a partial text (or a 500).
        return error_response(410, "log_expired", str(exc))

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "unavailable", "Redis is unavailable; try again", {"Retry-After": "1"})
