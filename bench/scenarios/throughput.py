"""Scenario 3, relay throughput of one API process beside the direct baseline
and the peer (Vercel's resumable-stream on Node, bench/peer).

The simulated model is fast (no time to first token, 1,000 tokens/s per
chat, see TOKENS_PER_S), so the servers are the bottleneck. C client loops each run chats back
to back (tokenfan and the peer: POST, then read the stream to ``done``;
direct: one GET to ``done``), every chat exactly ``ANSWER_TOKENS`` tokens. Over a window after a
warm-up, count the tokens and events that arrive, and the CPU seconds each
process spent. tokenfan batches with its defaults (5 tokens or 20 ms); the
direct server and the peer send one event per token, as the seed did and as
an app on resumable-stream does.

The runs happen in this scenario, one after the other, on the same machine
(running them at once would make them share the cores). On 2 cores tokenfan's
API competes with its worker and Redis for the CPU, and both servers with the
client: the CPU shares are reported with the result. "Server CPU" is every
process on the server side: tokenfan's API, worker and Redis; the peer's
Node process (which also runs its simulated model) and Redis.

With ``--profile``, py-spy samples each server process during its window
(tokenfan's API, the direct baseline).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import profile
from bench.context import Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, CpuMeter, Stack, sleep_until
from bench.stats import Row, Target, ratio
from bench.streams import StreamCheck, prompt_with_length

NAME = "3 relay throughput"
ANSWER_TOKENS = 400


FULL = dict(concurrency=64, clients=1, warmup_s=2.0, window_s=10.0)
QUICK = dict(concurrency=16, clients=1, warmup_s=0.5, window_s=1.5)


# A fast model: 5 tokens (the default batch size) arrive in 5 ms, well within
# the 20 ms batch delay, so tokenfan's events hold ~5 tokens while its worker
# keeps up (more when it falls behind: each append takes what has piled up).
# Flat out (no delay) the worker's batches grow to tens of tokens, which
# would flatter tokenfan. Offered load: CONCURRENCY x 1,000 tokens/s, above
# what either server delivers on 2 cores, so both run saturated.
TOKENS_PER_S = 1000
ENV = {"TOKENFAN_SIM_TTFT_MS": "0", "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S)}


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    ctx.log(f"{NAME}: tokenfan, {s['concurrency']} concurrent streams, {s['window_s']:g} s window")
    with Stack(ctx.run, "tput", ENV).start(apis=1, workers=1) as stack:
        procs = {"api": stack.api, "worker": stack.workers[0], "redis": ctx.redis_process()}
        tf = _measure(ctx, s, "tokenfan", stack.api.port, procs, profile_pid=stack.api.pid if ctx.profile else None)
    ctx.log(f"{NAME}: direct baseline, same load")
    with Stack(ctx.run, "direct", ENV).start(apis=0, baseline=True) as stack:
        direct_server = stack.baselines[0]
        profile_pid = direct_server.pid if ctx.profile else None
        direct = _measure(ctx, s, "direct", direct_server.port, {"direct": direct_server}, profile_pid=profile_pid)

    peer = None
    if ctx.has_peer():
        ctx.log(f"{NAME}: peer, same load")
        with Stack(ctx.run, "peer", ENV).start(apis=0, peer=True) as stack:
            peer = _measure(ctx, s, "peer", stack.peer.port, {"peer": stack.peer, "redis": ctx.redis_process()})

    ctx.details["throughput"] = {
        "settings": s,
        "answer_tokens": ANSWER_TOKENS,
        "tokenfan": tf,
        "direct": direct,
        "peer": peer,
    }
    tf_cpu = _cpu_per_1000_tokens(tf, "api")
    direct_cpu = _cpu_per_1000_tokens(direct, "direct")
    worker_cpu = _cpu_per_1000_tokens(tf, "worker")
    redis_cpu = _cpu_per_1000_tokens(tf, "redis")
    tf_tps = tf["tokens"] / s["window_s"]
    direct_tps = direct["tokens"] / s["window_s"]
    rows = [
        Row.single(
            NAME,
            "tokenfan tokens/s",
            tf_tps,
            note=f"{tf['events'] / s['window_s']:,.0f} events/s, "
            f"{tf['tokens'] / max(tf['events'], 1):.1f} tokens/event; CPU {_shares(tf)}{_failed(tf)}",
        ),
        Row.single(NAME, "direct tokens/s", direct_tps, note=f"1 event/token; CPU {_shares(direct)}{_failed(direct)}"),
        Row.ratio(
            NAME,
            "tokens/s, tokenfan / direct",
            tf_tps,
            direct_tps,
            Target(">= 1.5x", lambda r: r.value >= 1.5 and not tf["bad"] and not direct["bad"]),
        ),
        Row.single(
            NAME,
            "API CPU-s per 1,000 tokens",
            tf_cpu,
            "s",
            note=f"direct: {direct_cpu:.4f} s; worker {worker_cpu:.4f} s, redis {redis_cpu:.4f} s",
        ),
        Row.ratio(
            NAME,
            "API CPU per token, tokenfan / direct",
            tf_cpu,
            direct_cpu,
            Target("<= 0.3x", lambda r: r.value <= 0.3),
        ),
    ]
    if peer is not None:
        rows += _peer_rows(tf, peer, s["window_s"])
    return rows


def _cpu_per_1000_tokens(m: dict, *procs: str) -> float:
    return 1000 * ratio(sum(m["cpu_s"][p] for p in procs), m["tokens"])


def _shares(m: dict) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in m["cpu_share"].items())


def _failed(m: dict) -> str:
    return f", {m['bad']} streams FAILED check" if m["bad"] else ""


def _peer_rows(tf: dict, peer: dict, window_s: float) -> list[Row]:
    tf_tps, peer_tps = tf["tokens"] / window_s, peer["tokens"] / window_s
    tf_cpu = _cpu_per_1000_tokens(tf, "api", "worker", "redis")
    peer_cpu = _cpu_per_1000_tokens(peer, "peer", "redis")
    return [
        Row.single(NAME, "peer tokens/s", peer_tps, note=f"1 event/token; CPU {_shares(peer)}{_failed(peer)}"),
        Row.ratio(
            NAME,
            "tokens/s, tokenfan / peer",
            tf_tps,
            peer_tps,
            Target(">= 1.0x", lambda r: r.value >= 1.0 and not tf["bad"] and not peer["bad"]),
        ),
        Row.ratio(
            NAME,
            "server CPU per token, tokenfan / peer",
            tf_cpu,
            peer_cpu,
            Target("<= 2x", lambda r: r.value <= 2),
            note=f"CPU-s per 1,000 tokens: tokenfan {tf_cpu:.4f} (API+worker+redis), peer {peer_cpu:.4f} (node+redis)",
        ),
    ]


def _measure(ctx: Context, s: dict, kind: str, port: int, procs: dict, profile_pid: int | None = None) -> dict:
    per_client = s["concurrency"] // s["clients"]
    offsets = [s["warmup_s"], s["warmup_s"] + s["window_s"]]
    args = [
        dict(
            port=port,
            kind=kind,
            loops=per_client,
            prompt=prompt_with_length(ANSWER_TOKENS),
            max_tokens=ANSWER_TOKENS,
            window=offsets,
            deadline_s=offsets[1] + 60,
        )
        for _ in range(s["clients"])
    ]
    gens, start_at = start_loadgens(ctx.run, kind, "bench.scenarios.throughput:client", args)
    meter = CpuMeter({**procs, **{f"client{i + 1}": g.child for i, g in enumerate(gens)}})
    sleep_until(start_at + offsets[0])  # pacing: the window is a point of the schedule
    meter.start()
    spy = profile.start(ctx, profile_pid, s["window_s"], f"{kind}-server") if profile_pid else None
    sleep_until(start_at + offsets[1])
    meter.stop()
    results = finish_loadgens(ctx.run, gens, 90)
    if spy is not None:
        ctx.details.setdefault("profile", {})[kind] = profile.finish(ctx, spy)
    return {
        "tokens": sum(r["tokens"] for r in results),
        "events": sum(r["events"] for r in results),
        "chats": sum(r["chats"] for r in results),
        "bad": sum(r["bad"] for r in results),
        "cpu_s": meter.used,
        "cpu_share": meter.utilisation(),
    }


# --- the client (runs in a loadgen process) ---------------------------------------


class _Count(StreamCheck):
    """Counts the tokens and events that arrive inside the window."""

    __slots__ = ("w0", "w1", "in_tokens", "in_events")

    def __init__(self, w0: float, w1: float) -> None:
        super().__init__()
        self.w0, self.w1 = w0, w1
        self.in_tokens = 0
        self.in_events = 0

    def token(self, event_id, data, n, now) -> None:
        if self.w0 <= now < self.w1:
            self.in_tokens += n
            self.in_events += 1


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    w0, w1 = start_at + args["window"][0], start_at + args["window"][1]
    totals = {"tokens": 0, "events": 0, "chats": 0, "bad": 0}
    if args["kind"] != "direct":  # tokenfan and the peer: POST /chat, then its stream_url
        body = {"prompt": args["prompt"], "max_tokens": args["max_tokens"]}
    else:
        direct_path = f"/stream?prompt={args['prompt'].replace(' ', '+')}&max_tokens={args['max_tokens']}"

    async def one_chat() -> None:
        check = _Count(w0, w1)
        completed = False
        try:
            if args["kind"] != "direct":
                status, created = await api.post_json("/chat", body)
                if status != 202:
                    totals["bad"] += 1
                    return
                path = created["stream_url"]
            else:
                path = direct_path
            status = await api.stream(path, SSEDecoder(check.on_event))
            completed = True
            if status != 200 or not check.ok:
                totals["bad"] += 1
            else:
                totals["chats"] += 1
        finally:
            # Counted even when cut at the window's end (then only gaps/duplicates are errors).
            totals["tokens"] += check.in_tokens
            totals["events"] += check.in_events
            if not completed and check.bad:
                totals["bad"] += 1

    async def loop() -> None:
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while time.time() < w1:
            await one_chat()

    tasks = [asyncio.create_task(loop()) for _ in range(args["loops"])]
    # The window's end is the end of this client's job: cut the chats still running.
    await asyncio.sleep(max(w1 - time.time(), 0))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    api.close()
    return totals
