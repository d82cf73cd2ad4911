"""Scenario 6, pickup: enqueue -> job start, with 1 and with 8 idle workers,
and what idle workers cost Redis.

The benchmark enqueues exactly as POST /chat does (record the chat with
``ChatStore.create``, ``enqueue_job`` with ``_job_id=chat_id``, publish the
``wake`` nudge), one chat at a time at a steady pace, each a 1-token answer, so
that every enqueue finds the workers idle. Pickup is the claim's
``started_at`` (Redis TIME) minus the wall-clock time when ``enqueue_job``
returned (the job is in the queue; the nudge is sent after, so its cost is
in): one machine, one clock. The next chat is sent once the
previous one's ``done`` has been published (pub/sub, no polling).

Idle cost: Redis's ``total_commands_processed`` over a stretch with the
workers idle and no other client (the benchmark's own INFO subtracted), and
the commands per pickup (all clients: the benchmark's enqueue included).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.context import Context
from bench.procs import Stack, sleep_until
from bench.stats import Row, Target

NAME = "6 pickup"
QUEUE = "tokenfan:queue"


FULL = dict(jobs=200, interval_s=0.05, idle_s=10.0, settle_s=1.0)
QUICK = dict(jobs=20, interval_s=0.05, idle_s=2.0, settle_s=0.5)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    env = {"TOKENFAN_SIM_TTFT_MS": "0", "TOKENFAN_SIM_TOKENS_PER_S": "0", "TOKENFAN_QUEUE_NAME": QUEUE}
    rows: list[Row] = []
    details = {}
    for n in (1, 8):
        ctx.flush()
        with Stack(ctx.run, f"pickup{n}", env).start(apis=0, workers=n):
            ctx.log(f"{NAME}: {n} idle worker(s): Redis commands over {s['idle_s']:g} s")
            idle = _idle_cost(ctx, s["settle_s"], s["idle_s"])
            ctx.log(f"{NAME}: {n} worker(s): {s['jobs']} pickups")
            m = asyncio.run(_pickups(ctx, s["jobs"], s["interval_s"]))
        details[n] = {**idle, "commands_per_job": m["commands_per_job"], "bad": m["bad"]}
        note = f"{len(m['times'])} jobs, {m['commands_per_job']:.0f} Redis commands/pickup" + (
            f", {m['bad']} FAILED" if m["bad"] else ""
        )
        rows.append(
            Row.dist(
                NAME,
                f"enqueue -> job start, {n} idle worker{'s' if n > 1 else ''}",
                m["times"],
                Target("p50 <= 2 ms", lambda r, bad=m["bad"]: r.p50 <= 2 and not bad),
                note=note,
            )
        )
        rows.append(
            Row.single(
                NAME,
                f"Redis commands/s, {n} idle worker{'s' if n > 1 else ''}",
                idle["commands_per_s"],
                note=f"Redis CPU {idle['redis_cpu_share']:.1%} of a core",
            )
        )
    ctx.details["pickup"] = {"settings": s, "by_workers": details}
    return rows


def _idle_cost(ctx: Context, settle_s: float, window_s: float) -> dict[str, float]:
    r = ctx.redis()
    proc = ctx.redis_process()
    try:
        sleep_until(time.time() + settle_s)  # pacing: let the workers' startup traffic pass
        c0 = r.info("stats")["total_commands_processed"]
        cpu0 = sum(proc.cpu_times()[:2])
        sleep_until(time.time() + window_s)  # pacing: the measured stretch
        c1 = r.info("stats")["total_commands_processed"]
        cpu1 = sum(proc.cpu_times()[:2])
    finally:
        r.close()
    return {"commands_per_s": (c1 - c0 - 1) / window_s, "redis_cpu_share": (cpu1 - cpu0) / window_s}


async def _pickups(ctx: Context, jobs: int, interval_s: float) -> dict[str, Any]:
    from arq.connections import ArqRedis

    from shared import keys
    from shared.store import ChatStore

    redis = ArqRedis.from_url(ctx.run.redis_url)
    store = ChatStore(redis, ttl_s=3600, maxlen=1000)
    request = {"messages": [{"role": "user", "content": "pickup"}], "model": "simulated", "max_tokens": 1}
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    times: list[float] = []
    bad = 0
    try:
        await pubsub.psubscribe("tf:{*}:live")
        c0 = (await redis.info("stats"))["total_commands_processed"]
        start = time.time()
        for i in range(jobs):
            delay = start + i * interval_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing
            chat_id = keys.new_chat_id()
            await store.create(chat_id, request, model="simulated")
            await redis.enqueue_job("generate", chat_id, _job_id=chat_id, _queue_name=QUEUE)
            t_enqueue = time.time()  # the job is in the queue (enqueue_job's MULTI/EXEC has returned)
            await redis.publish(keys.WORKERS_CHANNEL, "wake")
            if not await _wait_done(pubsub, keys.live(chat_id).encode(), 10.0):
                bad += 1
                continue
            started_at = await redis.hget(keys.meta(chat_id), "started_at")
            times.append((float(started_at) - t_enqueue) * 1000)
        c1 = (await redis.info("stats"))["total_commands_processed"]
    finally:
        await pubsub.aclose()
        await redis.aclose()
    return {"times": times, "bad": bad, "commands_per_job": (c1 - c0) / jobs}


async def _wait_done(pubsub: Any, channel: bytes, timeout: float) -> bool:
    """Until the chat's terminal event is published (its seq, type, JSON)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message and message["channel"] == channel and message["data"].split(b" ", 2)[1] in (b"done", b"error"):
            return True
    return False
