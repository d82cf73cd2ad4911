"""Structured logs for the API and the worker.

Logs: one line per record on stderr; JSON when stderr is not a terminal (or
``TOKENFAN_LOG_FORMAT=json``), a compact ``key=value`` text on a terminal.
Every record emitted while a chat is being handled (a worker's attempt, an
API stream) carries ``chat_id``, ``attempt`` and ``t_ms`` (milliseconds since
that attempt or stream started) from a context variable, so a line concerning
a chat never needs to spell them out. Extra fields go in ``extra={...}``.

Prompt text is logged only when debug is on (``TOKENFAN_LOG_LEVEL=DEBUG``):
``prompts_allowed()`` says whether it is.

A JSON line:

    {"ts":"2026-11-24T10:39:22.588Z","level":"info","logger":"tokenfan.worker",
     "msg":"chat ended: stop, 211 tokens in 2.105 s","process":"worker","pid":4242,
     "chat_id":"4f0c…","attempt":1,"t_ms":2105.3,"event":"chat.end",...}
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

# Worker metrics reach the API through Redis: each worker process SETs its
# metrics (JSON, see worker/metrics.py) under keys.worker_metrics(<worker id>)
# with a TTL of a few push intervals and adds its id to keys.WORKER_METRICS_SET;
# the API's /metrics reads them all.


# --- the chat a piece of work concerns -------------------------------------------


@dataclass(slots=True)
class ChatContext:
    chat_id: str
    attempt: int | None = None
    started: float = field(default_factory=time.monotonic)

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


_current: ContextVar[ChatContext | None] = ContextVar("tokenfan_chat", default=None)


def bind_chat(chat_id: str, attempt: int | None = None) -> ChatContext:
    """Make every log record of the current task (and of tasks it starts from
    now on) carry this chat. For a task that serves one chat only (an SSE
    response's stream task); elsewhere use ``chat_context``."""
    ctx = ChatContext(chat_id, attempt)
    _current.set(ctx)
    return ctx


@contextmanager
def chat_context(chat_id: str, attempt: int | None = None) -> Iterator[ChatContext]:
    ctx = ChatContext(chat_id, attempt)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def prompts_allowed() -> bool:
    """Prompt text may be logged only with debug on."""
    return logging.getLogger("tokenfan").isEnabledFor(logging.DEBUG)


# --- formatting --------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra``
# (but for uvicorn's ANSI-coloured copy of the message).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# arq's job start and end lines name the job, whose id is the chat's.
_ARQ_JOB = re.compile(r"[→←] ([0-9a-f]{32}):")


class ContextFilter(logging.Filter):
    """Adds ``chat_id``, ``attempt`` and ``t_ms`` of the current chat, unless
    the record names a chat of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "chat_id" in record.__dict__:
            return True
        ctx = _current.get()
        if ctx is not None:
            record.chat_id = ctx.chat_id
            if ctx.attempt is not None:
                record.attempt = ctx.attempt
            record.t_ms = ctx.elapsed_ms()
        elif record.name == "arq.worker" and (job := _ARQ_JOB.search(record.getMessage())):
            record.chat_id = job.group(1)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "process": self.process,
            "pid": record.process,
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``10:39:22.588 INFO  tokenfan.worker [4f0c1a2b #1 +2105ms] chat ended … tokens=211``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        chat = ""
        if "chat_id" in fields:
            chat_id = str(fields.pop("chat_id"))[:8]
            attempt = fields.pop("attempt", None)
            t_ms = fields.pop("t_ms", None)
            chat = f"[{chat_id}" + (f" #{attempt}" if attempt is not None else "")
            chat += (f" +{t_ms:.0f}ms" if isinstance(t_ms, int | float) else "") + "] "
        fields.pop("event", None)
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        text = f"{stamp} {record.levelname:<5} {record.name} {chat}{record.getMessage()}{extra}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(process: str, *, level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log record (uvicorn's and arq's too) to ``stream`` (stderr)
    in one format. ``fmt``: ``json``, ``text`` or ``auto`` (JSON unless the
    stream is a terminal)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if _isatty(stream) else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"TOKENFAN_LOG_FORMAT must be auto, json or text, not {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        # Through the root handler, not handlers of their own.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    if os.environ.get("PYTHONASYNCIODEBUG") is None:
        logging.getLogger("asyncio").setLevel(max(root.level, logging.INFO))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
