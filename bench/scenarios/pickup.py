"""Scenario 6, pickup: enqueue -> job start, with 1 and with 8 idle workers,
with 1 idle worker while 5,000 chats run on other workers (issue 16: arq's
poll reads the first 1,000 ids of a queue that holds running jobs too), and
what idle workers cost Redis.

The benchmark enqueues exactly as POST /chat does (``ChatStore.submit``:
record, enqueue and nudge in one script), one chat at a time at a steady
pace, each a 1-token answer, so that every enqueue finds the workers idle.
Pickup is the claim's ``started_at`` (Redis TIME) minus the wall-clock time
when the submit returned: one machine, one clock. The next chat is sent once
the previous one's ``done`` has been published (pub/sub, no polling). The
chats "running elsewhere" are in Redis what a chat running on a live worker
is: enqueued, then started by start_job.lua with a long in-progress time (as
if renewed), older than every new chat.

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


FULL = dict(jobs=200, interval_s=0.05, idle_s=10.0, settle_s=1.0, levels=[(1, 0), (8, 0), (1, 5_000)])
QUICK = dict(jobs=20, interval_s=0.05, idle_s=2.0, settle_s=0.5, levels=[(1, 0), (8, 0), (1, 2_000)])


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    env = {"TOKENFAN_SIM_TTFT_MS": "0", "TOKENFAN_SIM_TOKENS_PER_S": "0", "TOKENFAN_QUEUE_NAME": QUEUE}
    rows: list[Row] = []
    details = {}
    for n, running in s["levels"]:
        ctx.flush()
        if running:
            ctx.log(f"{NAME}: {running:,} chats running on other workers")
            asyncio.run(_run_elsewhere(ctx, running))
        with Stack(ctx.run, f"pickup{n}-{running}", env).start(apis=0, workers=n):
            ctx.log(f"{NAME}: {n} idle worker(s): Redis commands over {s['idle_s']:g} s")
            idle = _idle_cost(ctx, s["settle_s"], s["idle_s"])
            ctx.log(f"{NAME}: {n} worker(s): {s['jobs']} pickups")
            m = asyncio.run(_pickups(ctx, s["jobs"], s["interval_s"]))
        label = f"{n} idle worker{'s' if n > 1 else ''}" + (f", {running:,} chats running elsewhere" if running else "")
        details[label] = {**idle, "commands_per_job": m["commands_per_job"], "bad": m["bad"]}
        note = f"{len(m['times'])} jobs, {m['commands_per_job']:.0f} Redis commands/pickup" + (
            f", {m['bad']} FAILED" if m["bad"] else ""
        )
        rows.append(
            Row.dist(
                NAME,
                f"enqueue -> job start, {label}",
                m["times"],
                Target("p50 <= 2 ms", lambda r, bad=m["bad"]: r.p50 <= 2 and not bad),
                note=note,
            )
        )
        rows.append(
            Row.single(
                NAME,
                f"Redis commands/s, {label}",
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

    from api.admission import queued_job
    from shared import keys
    from shared.settings import Settings
    from shared.store import ChatStore

    redis = ArqRedis.from_url(ctx.run.redis_url)
    store = ChatStore(redis, ttl_s=3600, maxlen=1000)
    settings = Settings(queue_name=QUEUE, max_queued=0)
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
            await store.submit(chat_id, REQUEST, queued_job(redis, settings, chat_id), model="simulated", owner="")
            t_enqueue = time.time()  # the job is in the queue, the workers nudged
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


REQUEST = {"messages": [{"role": "user", "content": "pickup"}], "model": "simulated", "max_tokens": 1}
ELSEWHERE_MS = 600_000  # the in-progress time of chats running elsewhere: longer than the level


async def _run_elsewhere(ctx: Context, n: int) -> None:
    """``n`` chats running on other workers, as Redis sees them."""
    from arq.connections import ArqRedis
    from arq.utils import timestamp_ms

    from api.admission import queued_job
    from shared import keys, scripts
    from shared.settings import Settings
    from shared.store import ChatStore

    redis = ArqRedis.from_url(ctx.run.redis_url)
    store = ChatStore(redis, ttl_s=3600, maxlen=1000)
    settings = Settings(queue_name=QUEUE, max_queued=0)
    start_job = redis.register_script(scripts.START_JOB)
    try:
        ids = [keys.new_chat_id() for _ in range(n)]
        for chat_id in ids:
            await store.submit(chat_id, REQUEST, queued_job(redis, settings, chat_id), model="simulated", owner="")
        async with redis.pipeline(transaction=False) as pipe:
            for chat_id in ids:
                await start_job(
                    keys=[keys.in_progress(chat_id), QUEUE], args=[chat_id, timestamp_ms(), ELSEWHERE_MS], client=pipe
                )
            started = await pipe.execute()
        assert all(started), "a chat meant to run elsewhere was not started"
    finally:
        await redis.aclose()


async def _wait_done(pubsub: Any, channel: bytes, timeout: float) -> bool:
    """Until the chat's terminal event is published (its seq, type, JSON)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message and message["channel"] == channel and message["data"].split(b" ", 2)[1] in (b"done", b"error"):
            return True
    return False
