"""Redis key names. Every key of one chat carries the hash tag ``{<chat_id>}``
so that a chat's keys share one cluster slot."""

from __future__ import annotations

import re
import uuid

from arq.constants import in_progress_key_prefix

_CHAT_ID = re.compile(r"[0-9a-f]{32}")

# Global keys (not per chat).
RUNNING = "tf:running"  # zset: chat_id -> lease expiry (ms, Redis clock)
WORKERS_CHANNEL = "tf:workers"  # pub/sub: "wake" after an enqueue, "cancel <id>"
SECRET = "tf:secret"  # stream-token signing secret when none is configured


def new_chat_id() -> str:
    return uuid.uuid4().hex


def is_chat_id(value: str) -> bool:
    return _CHAT_ID.fullmatch(value) is not None


def meta(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:meta"


def log(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:log"


def live(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:live"


def cancel(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:cancel"


def in_progress(chat_id: str) -> str:
    """arq's in-progress key of the chat's job (the job id is the chat id)."""
    return in_progress_key_prefix + chat_id


def chat_id_of_channel(channel: bytes) -> str:
    """``tf:{<id>}:live`` -> ``<id>``."""
    return channel[4:-6].decode()
