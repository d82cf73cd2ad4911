"""Every Redis name tokenfan uses: keys, channels, and arq's keys of a chat's
job. Every key of one chat carries the hash tag ``{<chat_id>}`` so that a
chat's keys share one cluster slot. (arq's own names come from arq's
constants: the job id is the chat id.)"""

from __future__ import annotations

import re
import uuid

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

_CHAT_ID = re.compile(r"[0-9a-f]{32}")
# A conversation id of the AI SDK's useChat (its chat id, chosen by the client).
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_.~-]{1,200}")

# Global keys and channels (not per chat).
RUNNING = "tf:running"  # zset: chat_id -> lease expiry (ms, Redis clock)
WORKERS_CHANNEL = "tf:workers"  # pub/sub: "wake" after an enqueue, "cancel <id>"
HUB_CHANNEL = b"tf:hub"  # pub/sub: keeps an API's hub connection in subscribed mode
SECRET = "tf:secret"  # stream-token signing secret when none is configured
WORKER_METRICS_SET = "tf:metrics:workers"  # set: ids of workers that pushed metrics
ARQ_ABORTS = abort_jobs_ss  # arq's zset of jobs asked to abort


def new_chat_id() -> str:
    return uuid.uuid4().hex


def is_chat_id(value: str) -> bool:
    return _CHAT_ID.fullmatch(value) is not None


# --- per chat ------------------------------------------------------------------


def meta(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:meta"


def log(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:log"


def live(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:live"


def cancel(chat_id: str) -> str:
    return f"tf:{{{chat_id}}}:cancel"


def chat_id_of_channel(channel: bytes) -> str:
    """``tf:{<id>}:live`` -> ``<id>``."""
    return channel[4:-6].decode()


# --- the AI SDK's conversations (api/ui_stream.py) -------------------------


def is_conversation_id(value: str) -> bool:
    return _CONVERSATION_ID.fullmatch(value) is not None


def ui_active(conversation_id: str, owner: str) -> str:
    """String: the tokenfan chat id of a useChat conversation's latest answer,
    per owner (API key label; "" when open), so that two keys using the same
    client-chosen id never see each other's answers. A conversation id has no
    ":" (``is_conversation_id``), so the name is unambiguous."""
    return f"tf:ui:{conversation_id}:{owner}"


# --- arq's keys of a chat's job (the job id is the chat id) --------------------


def job(chat_id: str) -> str:
    return job_key_prefix + chat_id


def in_progress(chat_id: str) -> str:
    return in_progress_key_prefix + chat_id


def retry(chat_id: str) -> str:
    return retry_key_prefix + chat_id


def result(chat_id: str) -> str:
    return result_key_prefix + chat_id


# --- other ---------------------------------------------------------------------


def ratelimit(owner: str) -> str:
    """The token bucket of an API key's owner (api/ratelimit.py)."""
    return f"tf:ratelimit:{owner}"


def worker_metrics(worker_id: str) -> str:
    """One worker's pushed metrics (JSON; worker/metrics.py)."""
    return f"tf:metrics:w:{worker_id}"
