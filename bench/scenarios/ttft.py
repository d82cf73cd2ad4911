"""Scenario 1, added time to first token.

A client POSTs a chat and opens its stream, at a steady rate (pacing: chat k
is sent at start + k/rate). Added TTFT is the first ``token`` event's arrival
at the client minus the POST's send time, minus the simulated model's own time
to first token. Every stamp is wall clock on one machine, so it splits into:

    POST -> job start          client send -> the claim's ``started_at`` (Redis TIME);
                               the POST's own response time is shown beside it
    job start -> first append  worker: load the request, (model TTFT subtracted), first append
    append -> client           the first event's ``ts`` -> its arrival at the client

Then the same at increasing rates, until p99 crosses 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import STAMP, Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, Stack
from bench.stats import Row, Target, percentile
from bench.streams import StreamCheck, prompt_with_length

NAME = "1 added TTFT"
SIM_TTFT_MS = 50.0  # the simulated model's own time to first token (subtracted)
SIM_TOKENS_PER_S = 50.0
ANSWER_TOKENS = 20  # every prompt answers >= 20 tokens: max_tokens=20 gives exactly 20
CROSS_MS = 100.0


def _settings(ctx: Context) -> dict[str, Any]:
    return ctx.scale(
        dict(rate=50, duration_s=20.0, ramp=[100, 150, 200, 300, 400, 600, 800], ramp_step_s=5.0),
        dict(rate=50, duration_s=2.0, ramp=[100, 200], ramp_step_s=1.0),
    )


def run(ctx: Context) -> list[Row]:
    s = _settings(ctx)
    env = {
        **STAMP,
        "TOKENFAN_SIM_TTFT_MS": str(SIM_TTFT_MS),
        "TOKENFAN_SIM_TOKENS_PER_S": str(SIM_TOKENS_PER_S),
        # Concurrency is not what is measured: no chat waits for a job slot.
        "TOKENFAN_WORKER_MAX_JOBS": "2000",
    }
    stack = Stack(ctx.run, "ttft", env).start(apis=1, workers=1)
    try:
        ctx.log(f"{NAME}: {s['rate']} chats/s for {s['duration_s']:g} s")
        main = _measure(ctx, stack, s["rate"], s["duration_s"])
        rows = _rows(main, s["rate"])
        # The ramp: higher rates, until p99 crosses CROSS_MS (or chats fail).
        steps = [{"rate": s["rate"], **_brief(main)}]
        for rate in s["ramp"]:
            if _crossed(steps[-1]):
                break
            ctx.log(f"{NAME}: ramp, {rate} chats/s for {s['ramp_step_s']:g} s")
            steps.append({"rate": rate, **_brief(_measure(ctx, stack, rate, s["ramp_step_s"]))})
        ctx.details["ttft"] = {"settings": s, "steps": steps, "sim_ttft_ms": SIM_TTFT_MS}
        crossed = next((st["rate"] for st in steps if _crossed(st)), None)
        below = [st["rate"] for st in steps if not _crossed(st)]
        if crossed is not None:
            note = f"last rate below: {max(below)}/s" if below else "already at the first rate"
        else:
            note = f"not reached up to {steps[-1]['rate']}/s"
        rows.append(
            Row.single(
                NAME,
                f"rate where p99 > {CROSS_MS:g} ms",
                crossed if crossed is not None else float("nan"),
                "chats/s",
                note=note,
                extra={"steps": steps},
            )
        )
        return rows
    finally:
        stack.close()


def _crossed(step: dict) -> bool:
    return step["p99_ms"] > CROSS_MS or step["errors"] > 0


def _brief(m: dict) -> dict:
    return {
        "chats": m["chats"],
        "errors": m["errors"],
        "p50_ms": percentile(m["added"], 50),
        "p99_ms": percentile(m["added"], 99),
        "max_slip_ms": m["max_slip_ms"],
    }


def _measure(ctx: Context, stack: Stack, rate: float, duration_s: float) -> dict:
    total = max(1, round(rate * duration_s))
    # One client process up to 100 chats/s; above, two share the schedule.
    n_clients = 1 if rate <= 100 else 2
    common = dict(
        port=stack.api.port,
        rate=rate,
        total=total,
        stride=n_clients,
        prompt=prompt_with_length(ANSWER_TOKENS),
        max_tokens=ANSWER_TOKENS,
        deadline_s=duration_s + 60,
    )
    gens, _ = start_loadgens(
        ctx.run, f"ttft{rate}", "bench.scenarios.ttft:client", [{**common, "offset": i} for i in range(n_clients)]
    )
    results = finish_loadgens(ctx.run, gens, duration_s + 90)
    chats = [c for r in results for c in r["chats"]]
    errors = sum(r["errors"] for r in results)
    # The claim's started_at, on Redis's clock (the same machine clock).
    r = ctx.redis()
    try:
        pipe = r.pipeline(transaction=False)
        for c in chats:
            pipe.hget(f"tf:{{{c['id']}}}:meta", "started_at")
        started = pipe.execute()
    finally:
        r.close()
    sim = SIM_TTFT_MS / 1000
    added, post, pickup, worker, relay = [], [], [], [], []
    for c, st in zip(chats, started, strict=True):
        if not c["ok"] or st is None:
            errors += 1
            continue
        st = float(st)
        added.append((c["first_arrival"] - c["t0"] - sim) * 1000)
        post.append((c["t1"] - c["t0"]) * 1000)
        pickup.append((st - c["t0"]) * 1000)
        worker.append((c["first_ts"] - st - sim) * 1000)
        relay.append((c["first_arrival"] - c["first_ts"]) * 1000)
    return {
        "chats": len(chats),
        "errors": errors,
        "added": added,
        "post": post,
        "pickup": pickup,
        "worker": worker,
        "relay": relay,
        "max_slip_ms": max((c["slip_ms"] for c in chats), default=0.0),
    }


def _rows(m: dict, rate: float) -> list[Row]:
    note = f"{rate}/s, {m['chats']} chats" + (f", {m['errors']} FAILED" if m["errors"] else "")
    target = Target("p50 <= 5 ms, p99 <= 25 ms", lambda r: r.p50 <= 5 and r.p99 <= 25 and not m["errors"])
    return [
        Row.dist(
            NAME,
            "POST -> first token - model TTFT",
            m["added"],
            target,
            note=note,
            extra={"client_max_slip_ms": m["max_slip_ms"]},
        ),
        Row.dist(NAME, "  of which POST -> job start", m["pickup"], note="POST answered after: see next row"),
        Row.dist(NAME, "  (POST /chat response time)", m["post"]),
        Row.dist(NAME, "  of which job start -> 1st append", m["worker"]),
        Row.dist(NAME, "  of which append -> client", m["relay"]),
    ]


# --- the client (runs in a loadgen process) ---------------------------------------


class _FirstToken(StreamCheck):
    __slots__ = ("first_arrival", "first_ts")

    def __init__(self) -> None:
        super().__init__()
        self.first_arrival = 0.0
        self.first_ts = 0.0

    def token(self, event_id, data, n, now) -> None:
        if not self.first_arrival:
            self.first_arrival = now
            self.first_ts = orjson.loads(data)["ts"]


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    rate, total = args["rate"], args["total"]
    body = {"prompt": args["prompt"], "max_tokens": args["max_tokens"]}
    errors = 0

    async def one(scheduled: float) -> dict | None:
        nonlocal errors
        t0 = time.time()
        status, created = await api.post_json("/chat", body)
        t1 = time.time()
        if status != 202:
            errors += 1
            return None
        check = _FirstToken()
        status = await api.stream(created["stream_url"], SSEDecoder(check.on_event))
        return {
            "id": created["id"],
            "t0": t0,
            "t1": t1,
            "slip_ms": (t0 - scheduled) * 1000,
            "first_arrival": check.first_arrival,
            "first_ts": check.first_ts,
            "ok": status == 200 and check.ok and check.first_arrival > 0,
        }

    async with asyncio.timeout(args["deadline_s"]):
        tasks = []
        for k in range(args["offset"], total, args["stride"]):
            scheduled = start_at + k / rate
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing
            tasks.append(asyncio.create_task(one(scheduled)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
    chats = []
    for r in results:
        if isinstance(r, BaseException):
            errors += 1
        elif r is not None:
            chats.append(r)
    api.close()
    return {"chats": chats, "errors": errors}
