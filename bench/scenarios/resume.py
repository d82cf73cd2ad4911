"""Scenario 5, resume: a client reconnects with ``Last-Event-ID`` 500 events
behind the end of a chat; the time from its connect to the arrival of the last
replayed event (new TCP connection, GET, join: subscribe then read the log in
pages, send).

The chat is a real one, made by a worker with a provider that yields more
tokens than the simulated model can (``bench.provider:numbered``), one event
per token. Repeated; each replay is checked (ids after+1..last, ``done`` last).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.context import Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, Stack
from bench.stats import Row, Target
from bench.streams import StreamCheck

NAME = "5 resume"
MISSED = 500
TOKENS = 800  # the chat's answer: comfortably more than MISSED events


def _settings(ctx: Context) -> dict[str, Any]:
    return ctx.scale(dict(repeats=100), dict(repeats=10))


def run(ctx: Context) -> list[Row]:
    s = _settings(ctx)
    env = {"TOKENFAN_PROVIDER": "bench.provider:numbered", "TOKENFAN_BATCH_MAX_TOKENS": "1"}
    stack = Stack(ctx.run, "resume", env).start(apis=1, workers=1)
    try:
        ctx.log(f"{NAME}: {s['repeats']} reconnects {MISSED} events behind")
        gens, _ = start_loadgens(
            ctx.run,
            "resume",
            "bench.scenarios.resume:client",
            [dict(port=stack.api.port, repeats=s["repeats"], deadline_s=120)],
        )
        (result,) = finish_loadgens(ctx.run, gens, 150)
    finally:
        stack.close()
    bad = result["bad"]
    ctx.details["resume"] = {"settings": s, "last_seq": result["last_seq"], "bad": bad}
    return [
        Row.dist(
            NAME,
            f"connect -> last of {MISSED} replayed events",
            result["times_ms"],
            Target("p50 <= 10 ms", lambda r: r.p50 <= 10 and not bad),
            note=f"{s['repeats']} reconnects" + (f", {bad} FAILED check" if bad else ""),
        ),
    ]


# --- the client (runs in a loadgen process) ---------------------------------------


class _Last(StreamCheck):
    __slots__ = ("last_at",)

    def __init__(self, after: int) -> None:
        super().__init__(after)
        self.last_at = 0.0

    def on_event(self, event_id, etype, data, now) -> None:
        super().on_event(event_id, etype, data, now)
        self.last_at = now


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    async with asyncio.timeout(args["deadline_s"]):
        status, created = await api.post_json("/chat", {"prompt": "resume", "max_tokens": TOKENS})
        if status != 202:
            raise RuntimeError(f"POST /chat: {status} {created}")
        path = created["stream_url"]
        full = _Last(0)
        await api.stream(path, SSEDecoder(full.on_event))  # the whole chat, to its end
        if not full.ok or full.last <= MISSED:
            raise RuntimeError(f"the chat has {full.last} events (ok={full.ok}); a resume needs more than {MISSED}")
        after = full.last - MISSED
        times, bad = [], 0
        for _ in range(args["repeats"]):
            check = _Last(after)
            t0 = time.time()
            status = await api.stream(path, SSEDecoder(check.on_event), headers={"Last-Event-ID": str(after)})
            if status != 200 or not check.ok or check.events != MISSED:
                bad += 1
                continue
            times.append((check.last_at - t0) * 1000)
    api.close()
    return {"times_ms": times, "bad": bad, "last_seq": full.last}
