"""Scenario 2, relay lag (and 7, Redis connections per API process).

N streams are active at once, each chat at 10 or 20 tokens/s, each read by
one SSE client (tokenfan's API, then the peer's Node process, under the same
load). Each of N client slots runs chats back to back (POST, read the stream
to ``done``, next), the slots' first chats staggered over one chat's length:
a steady state of N active streams and N / chat length new chats per second
(1,000 slots, 20 s chats: 50 chats/s, the rate of scenario 1), not a burst.

Relay lag is, per token event, its arrival at the client minus its ``ts``
(the worker's wall-clock stamp of when the event's first token came from the
model): any batching wait + append round trip + pub/sub + the API's hub and
SSE write + the client's read. The
peer stamps when its model hands the token to resumable-stream, which
publishes it at once (one PUBLISH per reader). Only events appended inside
the window (after every slot has started) count.

While the window runs, the Redis connections held by the API process are
sampled from CLIENT LIST (scenario 7), and the CPU of every process is
measured (on 2 cores, server and clients compete: see the note).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import STAMP, Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, CpuMeter, Sampler, Stack, sleep_until
from bench.stats import Row, Target
from bench.streams import StreamCheck, prompt_with_length

NAME = "2 relay lag"


ISSUE_13 = (2.0, 25.0)  # p50, p99 ms
AT_1000 = (1.0, 10.0)

# Issue 13's scenario first (150 streams x 100 tokens, 100 ms apart), then
# the issue's 1,000-stream load with a lighter level before it, which
# shows the lag where this machine is not saturated. Each level runs
# tokenfan, then the peer (when Node is there) under the same load.
FULL = dict(
    levels=[
        dict(streams=150, tokens_per_s=10.0, chat_tokens=100, target=ISSUE_13),
        dict(streams=200, tokens_per_s=20.0, chat_tokens=400, target=None),
        dict(streams=1000, tokens_per_s=20.0, chat_tokens=400, target=AT_1000),
    ],
    clients=2,
    workers=2,
    settle_s=1.0,
    window_s=10.0,
)
QUICK = dict(
    levels=[dict(streams=50, tokens_per_s=10.0, chat_tokens=20, target=ISSUE_13)],
    clients=1,
    workers=1,
    settle_s=0.3,
    window_s=1.5,
)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    rows: list[Row] = []
    ctx.details["relay_lag"] = {"settings": s}
    for level in s["levels"]:
        tf = _level(ctx, s, level, "tokenfan")
        peer = _level(ctx, s, level, "peer") if ctx.has_peer() else None
        rows += _rows(s, level, tf, peer)
    return rows


def _level(ctx: Context, s: dict[str, Any], level: dict[str, Any], kind: str) -> dict[str, Any]:
    ctx.flush()
    streams, tokens_per_s, length = level["streams"], level["tokens_per_s"], level["chat_tokens"]
    stagger_s = length / tokens_per_s  # one chat's length: the slots' phases spread evenly
    env = {
        **STAMP,
        "TOKENFAN_SIM_TTFT_MS": "50",
        "TOKENFAN_SIM_TOKENS_PER_S": str(tokens_per_s),
        "TOKENFAN_WORKER_MAX_JOBS": str(streams // s["workers"] + 50),
    }
    label = f"lag{streams}" + ("-peer" if kind == "peer" else "")
    if kind == "peer":
        stack = Stack(ctx.run, label, env).start(apis=0, peer=True)
        server, procs = stack.peer, {"peer": stack.peer}
    else:
        stack = Stack(ctx.run, label, env).start(apis=1, workers=s["workers"])
        server, procs = stack.api, {"api": stack.api, **{f"worker{i + 1}": w for i, w in enumerate(stack.workers)}}
    r = ctx.redis()
    try:
        ctx.log(f"{NAME}: {kind}, {streams} streams at {tokens_per_s:g} tokens/s, {s['window_s']:g} s window")
        per_client = streams // s["clients"]
        common = dict(
            port=server.port,
            prompt=prompt_with_length(length),
            max_tokens=length,
            stagger_s=stagger_s,
            deadline_s=stagger_s + s["settle_s"] + s["window_s"] + 60,
        )
        args = [{**common, "streams": per_client, "phase": i / s["clients"]} for i in range(s["clients"])]
        # The window, from the common start: every slot has started its first chat.
        offset = stagger_s + s["settle_s"]
        for a in args:
            a["window"] = [offset, offset + s["window_s"]]
        gens, start_at = start_loadgens(ctx.run, label, "bench.scenarios.relay_lag:client", args)
        w0 = start_at + offset
        procs.update({"redis": ctx.redis_process(), **{f"client{i + 1}": g.child for i, g in enumerate(gens)}})
        meter = CpuMeter(procs)
        sleep_until(w0)  # pacing: the window is a point of the schedule
        meter.start()
        # Redis connections held by tokenfan's API process (scenario 7).
        with Sampler(lambda: stack.api_connections(r) if kind == "tokenfan" else 0, 0.5) as conns:
            sleep_until(w0 + s["window_s"])
        meter.stop()
        results = finish_loadgens(ctx.run, gens, 60)
    finally:
        r.close()
        stack.close()

    out = {
        "lags": [x for res in results for x in res["lags_ms"]],
        "bad": sum(res["bad_streams"] for res in results),
        "chats": sum(res["chats"] for res in results),
        "streams": sum(res["streams"] for res in results),
        "cpu": meter.utilisation(),
        "connections": conns.samples,
    }
    ctx.details["relay_lag"][f"{kind} {streams}"] = {
        "cpu_share_of_one_core": out["cpu"],
        "events_in_window": len(out["lags"]),
        "bad_streams": out["bad"],
        "chats": out["chats"],
        "connections_samples": conns.samples if kind == "tokenfan" else None,
    }
    return out


def _rows(s: dict[str, Any], level: dict[str, Any], tf: dict[str, Any], peer: dict[str, Any] | None) -> list[Row]:
    streams = tf["streams"]
    shape = f"{streams} streams x {level['tokens_per_s']:g} tokens/s"

    def note(m: dict[str, Any]) -> str:
        return f"{len(m['lags']) / s['window_s']:,.0f} events/s, {m['chats']} chats" + (
            f", {m['bad']} streams FAILED check" if m["bad"] else ""
        )

    def cpu(label: str, m: dict[str, Any]) -> Row:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in m["cpu"].items())
        return Row.single(NAME, f"{label}CPU, {shape}", sum(m["cpu"].values()), "cores", note=shares)

    target = None
    if level["target"] is not None:
        p50, p99 = level["target"]
        target = Target(
            f"p50 <= {p50:g} ms, p99 <= {p99:g} ms", lambda row: row.p50 <= p50 and row.p99 <= p99 and not tf["bad"]
        )
    rows = [
        Row.dist(NAME, f"append -> client, {shape}", tf["lags"], target, note=note(tf)),
        cpu("", tf),
    ]
    if peer is not None:
        rows += [
            Row.dist(NAME, f"peer: append -> client, {shape}", peer["lags"], note=note(peer)),
            cpu("peer: ", peer),
            Row.dist_ratio(
                NAME,
                f"append -> client, tokenfan / peer, {streams} streams",
                tf["lags"],
                peer["lags"],
                note="the issue's target is absolute; the peer's figures are the reference",
            ),
        ]
    rows.append(
        Row.single(
            "7 Redis connections",
            f"per API process, {streams} active streams",
            max(tf["connections"], default=float("nan")),
            target=Target("<= 3", lambda row: row.value <= 3),
        )
    )
    return rows


# --- the client (runs in a loadgen process) ---------------------------------------


class _Lag(StreamCheck):
    __slots__ = ("w0", "w1", "lags")

    def __init__(self, window: list[float], lags: list[float]) -> None:
        super().__init__()
        self.w0, self.w1 = window  # absolute (wall clock)
        self.lags = lags

    def token(self, event_id, data, n, now) -> None:
        ts = orjson.loads(data)["ts"]
        if self.w0 <= ts <= self.w1:
            self.lags.append(round((now - ts) * 1000, 3))


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    n = args["streams"]
    lags: list[float] = []
    body = {"prompt": args["prompt"], "max_tokens": args["max_tokens"]}
    window = [start_at + args["window"][0], start_at + args["window"][1]]
    counts = {"chats": 0, "bad": 0}

    async def one_chat() -> None:
        check = _Lag(window, lags)
        completed = False
        try:
            status, created = await api.post_json("/chat", body)
            if status != 202:
                counts["bad"] += 1
                return
            ok = await api.stream(created["stream_url"], SSEDecoder(check.on_event)) == 200 and check.ok
            completed = True
            counts["chats" if ok else "bad"] += 1
        finally:
            if not completed and check.bad:  # cut at the window's end: only gaps count
                counts["bad"] += 1

    async def slot(k: int) -> None:
        delay = start_at + (k + args["phase"]) * args["stagger_s"] / n - time.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing: staggered first chats
        while time.time() < window[1]:
            await one_chat()

    async with asyncio.timeout(args["deadline_s"]):
        tasks = [asyncio.create_task(slot(k)) for k in range(n)]
        await asyncio.sleep(max(window[1] - time.time(), 0))  # the window's end ends the job
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    api.close()
    return {"streams": n, "chats": counts["chats"], "bad_streams": counts["bad"], "lags_ms": lags}
