"""Scenario 8, fan-out: many readers of one chat.

C chats start at once, each followed by R SSE clients (its readers connect
right after the POST, during the model's time to first token). Lag is, per
token event and reader, its arrival minus its ``ts`` (as in scenario 2);
per chat only events stamped after its last reader's response head arrived
count, so every reader is in and none is catching up. tokenfan's API relays
each appended batch once from its pub/sub hub to every reader; the peer
(resumable-stream) publishes each chunk once per reader channel. The server
processes' CPU over the whole run is reported beside it.

No target: issue 13 asks for the peer's figures beside tokenfan's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import STAMP, Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, CpuMeter, Stack
from bench.stats import Row
from bench.streams import StreamCheck, prompt_with_length

NAME = "8 fan-out"
TOKENS_PER_S = 20.0


# ttft_ms: the model's time to first token, for every reader to connect before it.
FULL = dict(chats=10, readers=100, chat_tokens=100, ttft_ms=1000)
QUICK = dict(chats=2, readers=25, chat_tokens=20, ttft_ms=500)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    ctx.details["fanout"] = {"settings": s}
    tf = _measure(ctx, s, "tokenfan")
    rows = _rows(s, "", tf)
    if ctx.has_peer():
        peer = _measure(ctx, s, "peer")
        rows += _rows(s, "peer: ", peer)
        rows.append(
            Row.dist_ratio(
                NAME,
                "append -> reader, tokenfan / peer",
                tf["lags"],
                peer["lags"],
                note=f"server CPU-s: tokenfan {tf['cpu_total']:.2f}, peer {peer['cpu_total']:.2f}",
            )
        )
    return rows


def _measure(ctx: Context, s: dict[str, Any], kind: str) -> dict[str, Any]:
    ctx.flush()
    env = {**STAMP, "TOKENFAN_SIM_TTFT_MS": str(s["ttft_ms"]), "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)}
    if kind == "peer":
        stack = Stack(ctx.run, "fanout-peer", env).start(apis=0, peer=True)
        server, procs = stack.peer, {"peer": stack.peer}
    else:
        stack = Stack(ctx.run, "fanout", env).start(apis=1, workers=1)
        server, procs = stack.api, {"api": stack.api, "worker": stack.workers[0]}
    try:
        ctx.log(f"{NAME}: {kind}, {s['chats']} chats x {s['readers']} readers")
        meter = CpuMeter({**procs, "redis": ctx.redis_process()})
        args = dict(
            port=server.port,
            chats=s["chats"],
            readers=s["readers"],
            prompt=prompt_with_length(s["chat_tokens"]),
            max_tokens=s["chat_tokens"],
            deadline_s=60,
        )
        gens, _ = start_loadgens(ctx.run, f"fanout-{kind}", "bench.scenarios.fanout:client", [args])
        meter.start()
        (result,) = finish_loadgens(ctx.run, gens, 90)
        meter.stop()
    finally:
        stack.close()
    result["cpu"] = meter.used
    result["cpu_total"] = sum(meter.used.values())
    ctx.details["fanout"][kind] = {k: v for k, v in result.items() if k != "lags"}
    return result


def _rows(s: dict[str, Any], label: str, m: dict[str, Any]) -> list[Row]:
    shape = f"{s['chats']} chats x {s['readers']} readers"
    failed = f", {m['bad']} readers FAILED check" if m["bad"] else ""
    cpu = ", ".join(f"{k} {v:.2f} s" for k, v in m["cpu"].items())
    return [
        Row.dist(NAME, f"{label}append -> reader, {shape}", m["lags"], note=f"{len(m['lags'])} deliveries{failed}"),
        Row.single(NAME, f"{label}server CPU, whole run", m["cpu_total"], "s", note=cpu),
    ]


# --- the client (runs in a loadgen process) ---------------------------------------


class _Stamps(StreamCheck):
    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[float, float]]) -> None:
        super().__init__()
        self.pairs = pairs

    def token(self, event_id, data, n, now) -> None:
        self.pairs.append((orjson.loads(data)["ts"], now))


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    body = {"prompt": args["prompt"], "max_tokens": args["max_tokens"]}
    lags: list[float] = []
    counts = {"bad": 0, "late": 0}

    async def reader(path: str, heads: list[float], pairs: list[tuple[float, float]]) -> bool:
        check = _Stamps(pairs)
        status = await api.stream(path, SSEDecoder(check.on_event), on_head=lambda st, now: heads.append(now))
        return status == 200 and check.ok

    async def chat() -> None:
        status, created = await api.post_json("/chat", body)
        if status != 202:
            counts["bad"] += args["readers"]
            return
        heads: list[float] = []
        pairs: list[tuple[float, float]] = []
        oks = await asyncio.gather(*(reader(created["stream_url"], heads, pairs) for _ in range(args["readers"])))
        counts["bad"] += oks.count(False)
        joined = max(heads, default=float("inf"))  # the last reader is in
        counts["late"] += sum(1 for ts, _ in pairs if ts < joined)
        lags.extend(round((now - ts) * 1000, 3) for ts, now in pairs if ts >= joined)

    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    async with asyncio.timeout(args["deadline_s"]):
        await asyncio.gather(*(chat() for _ in range(args["chats"])))
    api.close()
    return {"lags": lags, "bad": counts["bad"], "before_last_join": counts["late"]}
