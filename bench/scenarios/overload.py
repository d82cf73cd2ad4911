"""Scenario 9, twice the load the machine sustains.

Issue 13's target: under 2x the load this machine sustains, no 5xx, no
restarted answer and no failed stream; only latency grows, and the front door
refuses (503 ``queue_full`` with ``Retry-After``, or 429) before it accepts a
chat it cannot serve.

"What this machine sustains" is measured here, not assumed: chats are sent at
a steady rate for a short while, the rate doubling until the chats finish at
a lower rate than they arrive (or answers fail). The last rate that kept up is
the sustained rate. Then chats arrive at twice that rate for the main window,
with the admission limit (``TOKENFAN_MAX_QUEUED``) the deployment would run
with: every chat is one request (POST with ``Accept: text/event-stream``)
read to its end and checked (ids in order, one ``done``, no ``reset``), or a
refusal, counted by status.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.context import Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, Stack
from bench.stats import Row, Target
from bench.streams import FirstTokenCheck, prompt_with_length

NAME = "9 overload"
ANSWER_TOKENS = 20
ENV = {
    "TOKENFAN_SIM_TTFT_MS": "50",
    "TOKENFAN_SIM_TOKENS_PER_S": "100",
    # A queue a few seconds deep: chats that would wait longer are refused.
    "TOKENFAN_MAX_QUEUED": "300",
}

FULL = dict(probe_rates=[50, 100, 200, 400, 800], probe_s=4.0, window_s=15.0)
QUICK = dict(probe_rates=[50, 100], probe_s=1.0, window_s=2.0)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    with Stack(ctx.run, "overload", ENV).start(apis=1, workers=1) as stack:
        port = stack.api.port
        sustained = 0
        probes = []
        for rate in s["probe_rates"]:
            ctx.log(f"{NAME}: probe, {rate} chats/s for {s['probe_s']:g} s")
            m = _measure(ctx, port, rate, s["probe_s"])
            probes.append({"rate": rate, **_brief(m)})
            if not _kept_up(m, s["probe_s"]):
                break
            sustained = rate
        sustained = sustained or s["probe_rates"][0]
        rate = 2 * sustained
        ctx.log(f"{NAME}: {rate} chats/s (2x the sustained {sustained}/s) for {s['window_s']:g} s")
        m = _measure(ctx, port, rate, s["window_s"])
    ctx.details["overload"] = {"probes": probes, "sustained": sustained, "rate": rate, "main": _brief(m)}
    statuses = m["statuses"]
    server_errors = sum(n for code, n in statuses.items() if code >= 500 and code != 503)
    refused = statuses.get(503, 0) + statuses.get(429, 0)
    accepted = statuses.get(200, 0)
    note = (
        f"{rate} chats/s = 2 x {sustained}/s sustained; {m['sent']} sent, {accepted} streamed, "
        f"{refused} refused (503/429), statuses {dict(sorted(statuses.items()))}"
    )
    clean = Target("0", lambda r: r.value == 0)
    return [
        Row.single(NAME, "5xx answers (503 refusals aside)", server_errors, target=clean, note=note),
        Row.single(NAME, "accepted streams that failed their check", m["bad"], target=clean),
        Row.single(NAME, "restarted answers (reset events)", m["resets"], target=clean),
        Row.single(NAME, "connection errors", m["errors"], target=clean),
        Row.single(
            NAME,
            "refused at the door (503 queue_full / 429)",
            refused,
            note="refusals are the intended answer past capacity",
        ),
        Row.dist(NAME, "accepted: POST -> first token", m["ttft_ms"], note="latency is what grows"),
        Row.dist(NAME, "accepted: POST -> done", m["total_ms"]),
    ]


def _kept_up(m: dict, duration_s: float) -> bool:
    """Every chat of the probe was answered, cleanly, and the last one ended
    soon after the probe: the machine did not fall behind."""
    clean = m["bad"] == 0 and m["errors"] == 0 and m["resets"] == 0 and m["statuses"].get(200, 0) == m["sent"]
    return clean and m["last_done_s"] <= duration_s + 1.0


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("sent", "bad", "resets", "errors", "last_done_s")} | {
        "statuses": {str(k): v for k, v in m["statuses"].items()}
    }


def _measure(ctx: Context, port: int, rate: float, duration_s: float) -> dict:
    total = max(1, round(rate * duration_s))
    n_clients = 1 if rate <= 100 else 2  # one client process keeps ~100 chats/s on schedule
    common = dict(port=port, rate=rate, total=total, stride=n_clients, deadline_s=duration_s + 120)
    gens, _ = start_loadgens(
        ctx.run,
        f"overload{rate}",
        "bench.scenarios.overload:client",
        [{**common, "offset": i, "prompt": prompt_with_length(ANSWER_TOKENS)} for i in range(n_clients)],
    )
    results = finish_loadgens(ctx.run, gens, duration_s + 180)
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update({int(k): v for k, v in r["statuses"].items()})
    return {
        "sent": sum(r["sent"] for r in results),
        "statuses": statuses,
        "bad": sum(r["bad"] for r in results),
        "resets": sum(r["resets"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "ttft_ms": [x for r in results for x in r["ttft_ms"]],
        "total_ms": [x for r in results for x in r["total_ms"]],
        "last_done_s": max((r["last_done_s"] for r in results), default=0.0),
    }


# --- the client (runs in a loadgen process) ---------------------------------------


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    body = {"prompt": args["prompt"], "max_tokens": ANSWER_TOKENS}
    out: dict[str, Any] = {
        "sent": 0,
        "statuses": Counter(),
        "bad": 0,
        "resets": 0,
        "errors": 0,
        "ttft_ms": [],
        "total_ms": [],
        "last_done_s": 0.0,
    }

    async def one() -> None:
        chat = FirstTokenCheck()
        t0 = time.time()
        try:
            status, _ = await api.open_stream("POST", "/chat", SSEDecoder(chat.on_event), payload=body)
        except Exception:  # noqa: BLE001 - a connection error is what is counted
            out["errors"] += 1
            return
        done = time.time()
        out["statuses"][status] += 1
        if status != 200:
            return
        out["resets"] += chat.resets
        if not chat.ok or chat.resets:
            out["bad"] += 1
            return
        out["ttft_ms"].append((chat.first_arrival - t0) * 1000)
        out["total_ms"].append((done - t0) * 1000)
        out["last_done_s"] = max(out["last_done_s"], done - start_at)

    async with asyncio.timeout(args["deadline_s"]):
        tasks = []
        for k in range(args["offset"], args["total"], args["stride"]):
            delay = start_at + k / args["rate"] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing
            out["sent"] += 1
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    api.close()
    out["statuses"] = {str(k): v for k, v in out["statuses"].items()}
    return out
