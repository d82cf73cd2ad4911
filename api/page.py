"""The web page at ``/``: static HTML, CSS and plain JavaScript from
``api/static`` (no build step). The page posts a prompt, then reads the
stream with the browser's ``EventSource`` using the chat's ``stream_token``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from api.errors import not_found

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# "no-cache": revalidated on each load, so a deploy is picked up at the next reload.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    path = STATIC / name
    media_type = _TYPES.get(path.suffix)
    # Only files directly in api/static with a known type: no path tricks.
    if media_type is None or "/" in name or name.startswith(".") or not path.is_file():
        raise not_found("file")
    return Response(path.read_bytes(), media_type=media_type, headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return _asset(name)
