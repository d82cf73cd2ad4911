"""Scenario 4, idle streams (and 7, Redis connections per API process).

N streams stay open on one API process, each on its own chat, with nothing
to send but heartbeats. The chats exist (created through the product's own
``ChatStore.create``, as POST /chat does) and each has an arq job key, as an
enqueued chat has, but no worker runs: they stay queued, and their streams
open and idle (a chat with no job would be ended as stalled: api/liveness.py).

Measured, once every stream is open: the API process's RSS growth per stream
(RSS with the streams open minus RSS before, over N), and, per stream, every
gap between heartbeats (the first one counted from the response's arrival, the
last one up to the end of the hold): each must be within 2x the interval. The
Redis connections of the API process are sampled meanwhile.

Then the same number of idle streams on the direct baseline (same uvicorn,
FastAPI and sse-starlette, no tokenfan): the RSS and heartbeat CPU that the
stack itself costs per stream, beside tokenfan's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.context import Context
from bench.http import HttpClient, SSEDecoder
from bench.loadgen import finish_loadgens, start_loadgens
from bench.procs import HOST, CpuMeter, Sampler, Server, Stack, fd_limit_of, sleep_until
from bench.stats import Row, Target

NAME = "4 idle streams"


FULL = dict(streams=10_000, clients=2, heartbeat_s=5.0, hold_s=15.0, connect_concurrency=100)
QUICK = dict(streams=300, clients=1, heartbeat_s=0.5, hold_s=1.5, connect_concurrency=50)


def run(ctx: Context) -> list[Row]:
    s = ctx.scale(FULL, QUICK)
    n = s["streams"]
    env = {"TOKENFAN_HEARTBEAT_S": str(s["heartbeat_s"])}
    stack = Stack(ctx.run, "idle", env).start(apis=1, workers=0)
    r = ctx.redis()
    try:
        ctx.log(f"{NAME}: creating {n} chats")
        paths = [f"/chat/{c}/stream" for c in _create_chats(ctx, n)]
        tf = _hold(ctx, s, "idle", stack.api, paths, lambda: stack.api_connections(r))
    finally:
        r.close()
        stack.close()
    # The same stack without tokenfan: what uvicorn + FastAPI + sse-starlette
    # cost per open stream by themselves (the handler waits an hour for its
    # first token, so its streams stay idle with heartbeats).
    stack = Stack(ctx.run, "idle-direct", {**env, "TOKENFAN_SIM_TTFT_MS": "3600000"}).start(apis=0, baseline=True)
    try:
        paths = [f"/stream?prompt=idle+{i}&max_tokens=10" for i in range(n)]
        direct = _hold(ctx, s, "idle-direct", stack.baselines[0], paths, lambda: 0)
    finally:
        stack.close()

    ctx.details["idle"] = {"settings": s, "tokenfan": tf, "direct": direct}
    limit_ms = 2 * s["heartbeat_s"] * 1000
    bad = tf["late"] + tf["failed"]
    return [
        Row.single(
            NAME,
            "streams open, heartbeats on time",
            n - bad,
            note=f"of {n}; {tf['failed']} failed, {tf['late']} late; opened in {tf['open_s']:.1f} s",
            target=Target(f"{n:,}", lambda row: row.value >= n),
        ),
        Row.single(
            NAME,
            "API RSS per stream",
            tf["rss_per_stream_kb"],
            "KB",
            note=f"{tf['rss_before'] / 2**20:.0f} -> {tf['rss_open'] / 2**20:.0f} MB; "
            f"direct baseline: {direct['rss_per_stream_kb']:.1f} KB",
            target=Target("<= 50 KB", lambda row: row.value <= 50),
        ),
        Row.dist(
            NAME,
            f"heartbeat gap (interval {s['heartbeat_s']:g} s)",
            tf["gaps"],
            Target(f"max <= {limit_ms:.0f} ms", lambda row: row.value <= limit_ms and not bad),
            note=f"{tf['pings']:,} pings; API CPU {tf['cpu_share']:.0%} of a core (direct: {direct['cpu_share']:.0%})",
        ),
        Row.single(
            "7 Redis connections",
            f"per API process, {n:,} idle streams",
            tf["connections"],
            target=Target("<= 3", lambda row: row.value <= 3),
        ),
    ]


def _hold(ctx: Context, s: dict[str, Any], label: str, server: Server, paths: list[str], connections) -> dict:
    """Open every path as an SSE stream, hold them ``hold_s``, close them."""
    n = len(paths)
    limit = fd_limit_of(server.pid)
    if limit < n + 200:
        raise RuntimeError(f"{server} may open {limit} files, fewer than {n} streams need (ulimit -Hn)")
    rss_before = server.rss()
    ctx.log(f"{NAME}: {label}: opening {n} streams (heartbeat {s['heartbeat_s']:g} s)")
    per = -(-n // s["clients"])
    args = [
        dict(
            port=server.port,
            paths=paths[i * per : (i + 1) * per],
            heartbeat_s=s["heartbeat_s"],
            connect_concurrency=s["connect_concurrency"],
            deadline_s=300 + s["hold_s"],
        )
        for i in range(s["clients"])
    ]
    t_open = time.monotonic()
    gens, _ = start_loadgens(ctx.run, label, "bench.scenarios.idle:client", args)
    opened = sum(g.expect("progress", 240)["opened"] for g in gens)
    open_s = time.monotonic() - t_open
    ctx.log(f"{NAME}: {label}: {opened} open after {open_s:.1f} s; holding {s['hold_s']:g} s")
    meter = CpuMeter({"server": server})
    meter.start()
    with Sampler(lambda: (server.rss(), connections()), 0.5) as samples:
        sleep_until(time.time() + s["hold_s"])  # pacing: the hold is a stretch of the schedule
    meter.stop()
    for g in gens:
        g.send({"stop": True})
    results = finish_loadgens(ctx.run, gens, 120)
    rss_open = max(x[0] for x in samples.samples)
    return {
        "opened": opened,
        "open_s": open_s,
        "rss_before": rss_before,
        "rss_open": rss_open,
        "rss_per_stream_kb": (rss_open - rss_before) / n / 1024,
        "connections": max(x[1] for x in samples.samples),
        "cpu_share": meter.utilisation()["server"],
        "gaps": [g for res in results for g in res["gaps_ms"]],
        "late": sum(res["late"] for res in results),
        "failed": sum(res["failed"] for res in results),
        "pings": sum(res["pings"] for res in results),
    }


def _create_chats(ctx: Context, n: int) -> list[str]:
    """Chats as POST /chat records them, each with a (never run) job key: queued."""
    from redis.asyncio import BlockingConnectionPool, Redis

    from shared import keys
    from shared.store import ChatStore

    async def create() -> list[str]:
        redis = Redis(connection_pool=BlockingConnectionPool.from_url(ctx.run.redis_url, max_connections=32))
        store = ChatStore(redis, ttl_s=3600, maxlen=1000)
        ids = [keys.new_chat_id() for _ in range(n)]
        request = {"messages": [{"role": "user", "content": "idle"}], "model": "simulated", "max_tokens": 10}
        try:
            for i in range(0, n, 500):
                await asyncio.gather(*(store.create(c, request, model="simulated") for c in ids[i : i + 500]))
                async with redis.pipeline(transaction=False) as pipe:
                    for c in ids[i : i + 500]:
                        pipe.set(keys.job(c), b"queued, never run (bench)", ex=3600)
                    await pipe.execute()
        finally:
            await redis.aclose()
        return ids

    return asyncio.run(create())


# --- the client (runs in a loadgen process) ---------------------------------------


class _Idle:
    __slots__ = ("last", "gaps", "pings", "opened", "status", "bad")

    def __init__(self) -> None:
        self.last = 0.0
        self.gaps: list[float] = []
        self.pings = 0
        self.opened = False
        self.status = 0
        self.bad = False

    def on_head(self, status: int, now: float) -> None:
        self.status = status
        self.opened = status == 200
        self.last = now

    def on_ping(self, now: float) -> None:
        self.pings += 1
        self.gaps.append(now - self.last)
        self.last = now

    def on_event(self, event_id, etype, data, now) -> None:
        self.bad = True  # an idle chat has no events


async def client(args: dict, start_at: float, ctl: Any) -> dict:
    api = HttpClient(HOST, args["port"])
    limit = args["heartbeat_s"] * 2
    streams = [_Idle() for _ in args["paths"]]
    sem = asyncio.Semaphore(args["connect_concurrency"])  # connection setups in flight
    settled = 0
    all_settled = asyncio.Event()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == len(streams):
            all_settled.set()

    async def one(st: _Idle, path: str) -> None:
        await sem.acquire()
        released = False

        def on_head(status: int, now: float) -> None:
            nonlocal released
            st.on_head(status, now)
            released = True
            sem.release()
            settle()

        try:
            await api.stream(path, SSEDecoder(st.on_event, st.on_ping), on_head=on_head)
            st.bad = True  # the server ended an idle stream
        except asyncio.CancelledError:
            raise
        except Exception:
            st.bad = True
        finally:
            if not released:
                sem.release()
                settle()

    async with asyncio.timeout(args["deadline_s"]):
        tasks = [asyncio.create_task(one(st, c)) for st, c in zip(streams, args["paths"], strict=True)]
        await all_settled.wait()
        ctl.progress(opened=sum(st.opened for st in streams))
        await ctl.wait_stop()
        end = time.time()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    api.close()
    failed = sum(1 for st in streams if not st.opened or st.bad)
    late = sum(
        1 for st in streams if st.opened and not st.bad and (end - st.last > limit or any(g > limit for g in st.gaps))
    )
    return {
        "failed": failed,
        "late": late,
        "pings": sum(st.pings for st in streams),
        "gaps_ms": [round(g * 1000, 2) for st in streams for g in st.gaps],
    }
