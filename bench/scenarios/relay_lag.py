"""Scenario 2, relay lag (and 7, Redis connections per API process).

N streams are active at once, each chat at ~20 tokens/s, each read by one SSE
client. Each of N client slots runs chats back to back (POST, read the stream
to ``done``, next), the slots' first chats staggered over one chat's length:
a steady state of N active streams and N / chat length new chats per second
(1,000 slots, 20 s chats: 50 chats/s, the rate of scenario 1), not a burst.

Relay lag is, per token event, its arrival at the client minus its ``ts``
(the worker's wall-clock stamp just before the append script runs): append
round trip + pub/sub + the API's hub and SSE write + the client's read. Only
events appended inside the window (after every slot has started) count.

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
TOKENS_PER_S = 20.0


def _settings(ctx: Context) -> dict[str, Any]:
    # The load is 1,000 streams; a lighter level first shows the lag
    # where this machine is not saturated.
    return ctx.scale(
        dict(levels=[200, 1000], clients=2, workers=2, chat_tokens=400, settle_s=1.0, window_s=10.0),
        dict(levels=[50], clients=1, workers=1, chat_tokens=40, settle_s=0.5, window_s=2.0),
    )


def run(ctx: Context) -> list[Row]:
    s = _settings(ctx)
    rows: list[Row] = []
    ctx.details["relay_lag"] = {"settings": s}
    for streams in s["levels"]:
        rows += _level(ctx, s, streams, is_target=streams == max(s["levels"]))
    return rows


def _level(ctx: Context, s: dict[str, Any], streams: int, is_target: bool) -> list[Row]:
    ctx.flush()
    length = s["chat_tokens"]
    stagger_s = length / TOKENS_PER_S  # one chat's length: the slots' phases spread evenly
    env = {
        **STAMP,
        "TOKENFAN_SIM_TTFT_MS": "50",
        "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S),
        "TOKENFAN_WORKER_MAX_JOBS": str(streams // s["workers"] + 50),
    }
    stack = Stack(ctx.run, f"lag{streams}", env).start(apis=1, workers=s["workers"])
    r = ctx.redis()
    try:
        ctx.log(f"{NAME}: {streams} streams at {TOKENS_PER_S:g} tokens/s, {s['window_s']:g} s window")
        per_client = streams // s["clients"]
        common = dict(
            port=stack.api.port,
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
        gens, start_at = start_loadgens(ctx.run, f"lag{streams}", "bench.scenarios.relay_lag:client", args)
        w0 = start_at + offset
        procs = {
            "api": stack.api,
            "redis": ctx.redis_process(),
            **{f"worker{i + 1}": w for i, w in enumerate(stack.workers)},
            **{f"client{i + 1}": g.child for i, g in enumerate(gens)},
        }
        meter = CpuMeter(procs)
        sleep_until(w0)  # pacing: the window is a point of the schedule
        meter.start()
        with Sampler(lambda: stack.api_connections(r), 0.5) as conns:
            sleep_until(w0 + s["window_s"])
        meter.stop()
        results = finish_loadgens(ctx.run, gens, 60)
    finally:
        r.close()
        stack.close()

    lags = [x for res in results for x in res["lags_ms"]]
    bad = sum(res["bad_streams"] for res in results)
    chats = sum(res["chats"] for res in results)
    streams = sum(res["streams"] for res in results)
    util = meter.utilisation()
    cpu_note = ", ".join(f"{k} {v:.0%}" for k, v in util.items())
    ctx.details["relay_lag"][streams] = {
        "cpu_share_of_one_core": util,
        "events_in_window": len(lags),
        "bad_streams": bad,
        "chats": chats,
        "connections_samples": conns.samples,
    }
    note = f"{streams} streams, {len(lags) / s['window_s']:,.0f} events/s, {chats} chats" + (
        f", {bad} streams FAILED check" if bad else ""
    )
    target = Target("p50 <= 1 ms, p99 <= 10 ms", lambda row: row.p50 <= 1 and row.p99 <= 10 and not bad)
    return [
        Row.dist(NAME, f"append -> client, {streams} streams", lags, target if is_target else None, note=note),
        Row.single(NAME, f"CPU, {streams} streams", sum(util.values()), "cores", note=cpu_note),
        Row.single(
            "7 Redis connections",
            f"per API process, {streams} active streams",
            max(conns.samples, default=float("nan")),
            target=Target("<= 3", lambda row: row.value <= 3),
        ),
    ]


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
