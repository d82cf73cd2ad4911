"""The Lua scripts, one file each in shared/lua/ (its header says KEYS, ARGV
and what it returns), read once at import. Each does one step of a chat's
life atomically, in one round trip, and declares every key it touches in
KEYS (a Redis Cluster routes a script by them). Registered once per client and
called by SHA (redis-py falls back to EVAL after a Redis restart flushed the
script cache).

Leases: the attempt that owns a running chat holds a lease (``tf:running``,
score = expiry in ms, Redis clock) and keeps arq's in-progress key of the
chat's job alive for as long. The reaper hands a chat on when its lease lapses.
Only the owning attempt (``meta.attempt``) renews them: a fenced-out worker
never keeps the new attempt's lease alive. A lease that was released or
reaped is never brought back by a renewal: the next claim fences the attempt
that held it."""

from __future__ import annotations

from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"


def _load(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


APPEND = _load("append")  # events into a chat's log and live channel; fenced on the attempt
CLAIM = _load("claim")  # a new attempt at a chat, with its lease
RENEW = _load("renew")  # the leases of the chats a worker runs; fenced
RELEASE = _load("release")  # an attempt's lease, when it ends; fenced
REAP = _load("reap")  # the chats whose lease lapsed
FINISH_JOB = _load("finish_job")  # arq's end of one run of a chat's job; fenced
START_JOB = _load("start_job")  # arq's pickup of one job: its in-progress key
SUBMIT = _load("submit")  # a new chat: admission, metadata, arq job and wake-up
RATELIMIT_TAKE = _load("ratelimit_take")  # tokens from a rate-limit bucket
