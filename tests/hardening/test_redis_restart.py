"""A Redis restart mid-run, with the embedded default's persistence on
(append-only file): no accepted chat is lost, the hubs reconnect and every
client catches up, the workers survive and finish every chat, ``/readyz`` is
503 while Redis is away and 200 after, and a request meanwhile gets a quick
503 with ``Retry-After`` (the only 5xx allowed here), never a 500 or a hang.

The restart is a SIGTERM (Redis writes its append-only file on the way out);
a SIGKILL may lose the last second of writes (``appendfsync everysec``)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from harness import ClusterFactory, async_wait_until, record, wait_until

from hardening.chaos import Progress, check_runs, run_chats
from tokenfan.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.e2e

CHATS = 30
OUTAGE_S = 2.0


@pytest.fixture
def persistent_redis(tmp_path):
    """A redis-server of our own (it gets restarted), with AOF on."""
    servers: list[EmbeddedRedis] = []
    port = free_port()

    def start() -> EmbeddedRedis:
        server = EmbeddedRedis(port=port, data_dir=tmp_path / "redis", persistent=True).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def test_redis_restart_mid_run(persistent_redis):
    server = persistent_redis()
    factory = ClusterFactory(server, "redis-restart")
    try:
        cluster = factory(
            apis=2,
            workers=2,
            env={"TOKENFAN_SIM_TOKENS_PER_S": "60", "TOKENFAN_SSE_RETRY_MS": "300", "TOKENFAN_HEARTBEAT_S": "1"},
        )
        _run(cluster, server, persistent_redis)
    finally:
        factory.close()


def _run(cluster, server, restart) -> None:
    progress = Progress()
    marks: dict = {}

    async def main():
        chats = asyncio.create_task(
            run_chats(
                cluster,
                CHATS,
                tag="redis-restart",
                min_tokens=250,
                max_tokens=400,
                follow_kwargs=progress.counting,
                deadline_s=45,
            )
        )
        await async_wait_until(lambda: progress.all_have(CHATS, 3), 20, message="every chat to have started")
        async with httpx.AsyncClient(timeout=10.0) as client:
            marks["stop"] = time.monotonic()
            await asyncio.to_thread(server.stop)  # SIGTERM: the AOF is written on the way out
            api = cluster.apis[0]
            started = time.monotonic()
            r = await client.get(f"{api.url}/readyz")
            marks["readyz_down"] = (r.status_code, r.headers.get("retry-after"))
            r = await client.post(f"{api.url}/chat", json={"prompt": "while Redis is away"})
            marks["post_down"] = (r.status_code, r.headers.get("retry-after"), time.monotonic() - started)
            # The outage lasts 2 s at least, and until both workers have noticed it.
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    time.monotonic() - marks["stop"] >= OUTAGE_S
                    and all("Error 111" in w.log_text() or "Connection closed" in w.log_text() for w in cluster.workers)
                ),
                15,
                0.05,
                "the workers to notice Redis is gone",
            )
            marks["down_s"] = time.monotonic() - marks["stop"]
            await asyncio.to_thread(restart)
            marks["back"] = time.monotonic()
            for api in cluster.apis:
                await asyncio.to_thread(
                    wait_until, lambda a=api: httpx.get(f"{a.url}/readyz").status_code == 200, 15, 0.05, "/readyz"
                )
            marks["ready_s"] = time.monotonic() - marks["back"]
        return await chats

    outcome = asyncio.run(main())
    assert marks["readyz_down"] == (503, "1")
    assert marks["post_down"][:2] == (503, "1") and marks["post_down"][2] < 3.0
    check_runs(outcome)  # every chat accepted before the restart ran to done, whole
    for worker in cluster.workers:
        worker.check_alive()  # the workers rode it out (arq alone exits on a ConnectionError)
    errors = {s: n for s, n in outcome.statuses.items() if s >= 500}
    assert set(errors) <= {503}, outcome.statuses  # 503 + Retry-After only, never a 500
    catch_up = [
        f.times[next(i for i, t in enumerate(f.times) if t > marks["back"])] - marks["back"]
        for f in (r.followed for r in outcome.runs)
        if f.times[-1] > marks["back"]
    ]
    resets = outcome.resets()
    record(
        f"Redis restart (SIGTERM, AOF): down {marks['down_s']:.2f} s; {CHATS} chats all done, "
        f"{outcome.lost_events()} events lost, {resets} resets, {outcome.reconnects} client reconnects, "
        f"{errors.get(503, 0)} 503s while away, 0 other 5xx; /readyz 200 again {marks['ready_s']:.2f} s after "
        f"the restart; streams moving again {max(catch_up, default=0):.2f} s after it at worst"
    )
    assert outcome.lost_events() == 0
    assert catch_up, "no stream was still running at the restart: the test proved nothing"
