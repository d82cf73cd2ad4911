"""Scenario 5, resume: a client reconnects with ``Last-Event-ID`` 500 events
behind the end of a chat; the time from its connect to the arrival of the last
replayed event (new TCP connection, GET, join: subscribe then read the log in
pages, send).

The chat is a real one, made by a worker with a provider that yields more
tokens than the simulated model can (``bench.provider:numbered``), one event
per token. Repeated; each replay is checked (ids after+1..last, no gap or
duplicate), where "last" is the answer's last token.

The peer (resumable-stream) then does the same, with the same numbered tokens
in one event each; it can only resume a stream that is still running (it
keeps no log once a stream is done), so its stream stays open after its last
token while the reconnects run. Its resume replays the stream from the start
over pub/sub and drops the events up to Last-Event-ID (bench/peer/server.mjs).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, Stack
from bench.stats import Row, Target
from bench.streams import StreamCheck

NAME = "5 resume"
MISSED = 500
TOKENS = 800  # the chat's answer: comfortably more than MISSED events
DEADLINE_S = 120


FULL = dict(repeats=100)
QUICK = dict(repeats=10)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    env = {"TOKENFAN_PROVIDER": "bench.provider:numbered", "TOKENFAN_BATCH_MAX_TOKENS": "1"}
    tf = _measure(ctx, s, "tokenfan", Stack(ctx.run, "resume", env).start(apis=1, workers=1))
    ctx.details["resume"] = {"settings": s, "last_seq": tf["last_seq"], "bad": tf["bad"]}
    rows = [
        Row.dist(
            NAME,
            f"connect -> last of {MISSED} replayed events",
            tf["times_ms"],
            Target("p50 <= 10 ms", lambda r: r.p50 <= 10 and not tf["bad"]),
            note=f"{s['repeats']} reconnects" + (f", {tf['bad']} FAILED check" if tf["bad"] else ""),
        ),
    ]
    if ctx.has_peer():
        # resumable-stream resumes only a running stream (a finished one
        # answers 204): the peer holds its stream open after the last token.
        stack = Stack(ctx.run, "resume-peer", {**env, "BENCH_PEER_HOLD_S": str(DEADLINE_S + 30)})
        peer = _measure(ctx, s, "peer", stack.start(apis=0, peer=True))
        ctx.details["resume"]["peer"] = {"last_seq": peer["last_seq"], "bad": peer["bad"]}
        rows += [
            Row.dist(
                NAME,
                f"peer: connect -> last of {MISSED} replayed events",
                peer["times_ms"],
                note="of a running stream"
                + (f", {peer['bad']} FAILED check" if peer["bad"] else "")
                + "; a finished one cannot be resumed",
            ),
            Row.dist_ratio(NAME, "connect -> last replayed, tokenfan / peer", tf["times_ms"], peer["times_ms"]),
        ]
    return rows


def _measure(ctx: Context, s: dict[str, Any], kind: str, stack: Stack) -> dict[str, Any]:
    with stack:
        ctx.log(f"{NAME}: {kind}, {s['repeats']} reconnects {MISSED} events behind")
        server = stack.peer if kind == "peer" else stack.api
        gens, _ = start_loadgens(
            ctx.run,
            f"resume-{kind}",
            "bench.scenarios.resume:client",
            [dict(port=server.port, repeats=s["repeats"], deadline_s=DEADLINE_S)],
        )
        (result,) = finish_loadgens(ctx.run, gens, DEADLINE_S + 30)
    return result


# --- the client (runs in a loadgen process) ---------------------------------------


class _Last(StreamCheck):
    __slots__ = ("last_at",)

    def __init__(self, after: int) -> None:
        super().__init__(after)
        self.last_at = 0.0

    def on_event(self, event_id, etype, data, now) -> None:
        super().on_event(event_id, etype, data, now)
        self.last_at = now


async def _read_until(api: HttpClient, path: str, check: _Last, until, headers: dict | None = None) -> int:
    """Read a stream until ``until(event_id, etype, data)`` holds for an event
    (then close it: the peer's stream is still running), or until it ends;
    returns the status."""
    reached = asyncio.get_running_loop().create_future()

    def on_event(event_id, etype, data, now) -> None:
        check.on_event(event_id, etype, data, now)
        if not reached.done() and until(event_id, etype, data):
            reached.set_result(None)

    task = asyncio.create_task(api.stream(path, SSEDecoder(on_event), headers=headers))
    await asyncio.wait({task, reached}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()  # closes the connection
    await asyncio.gather(task, return_exceptions=True)
    return 200  # an event arrived, so the response was a 200


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    last_token = orjson.dumps({"text": f" t{TOKENS - 1}"})[:-1]  # the last token's data, up to its "ts" if any
    async with asyncio.timeout(args["deadline_s"]):
        status, created = await api.post_json("/chat", {"prompt": "resume", "max_tokens": TOKENS})
        if status != 202:
            raise RuntimeError(f"POST /chat: {status} {created}")
        path = created["stream_url"]
        # The whole answer, to its last token (tokenfan's chat ends on; the peer's is held open).
        full = _Last(0)
        await _read_until(api, path, full, lambda i, etype, data: data.startswith(last_token))
        if full.bad or full.last <= MISSED:
            raise RuntimeError(f"the chat has {full.last} events (bad={full.bad}); a resume needs more than {MISSED}")
        end = full.last
        after = end - MISSED
        times, bad = [], 0
        for _ in range(args["repeats"]):
            check = _Last(after)
            t0 = time.time()
            status = await _read_until(
                api, path, check, lambda i, etype, data: i == end, headers={"Last-Event-ID": str(after)}
            )
            if status != 200 or check.bad or check.last != end or check.events != MISSED:
                bad += 1
                continue
            times.append((check.last_at - t0) * 1000)
    api.close()
    return {"times_ms": times, "bad": bad, "last_seq": end}
