"""SIGTERM to an API process (a deploy) while streams are open on it: every
stream ends cleanly (a complete HTTP response, not a dropped connection),
native streams get a small ``retry:`` so an EventSource comes back at once,
the clients reconnect to the other API process with ``Last-Event-ID`` and
miss nothing, and the process exits quickly, well within uvicorn's graceful
shutdown timeout (5 s, api/__main__.py), which bounds it whatever happens."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from harness import async_wait_until, record

from hardening.chaos import Progress, check_runs, run_chats

pytestmark = pytest.mark.e2e

STREAMS = 40  # half start on A, half on B (run_chats alternates)
SHUTDOWN_RETRY_MS = 250


@pytest.fixture
def cluster(clusters):
    return clusters(
        apis=2,
        workers=1,
        env={
            "TOKENFAN_SIM_TOKENS_PER_S": "60",
            "TOKENFAN_SHUTDOWN_RETRY_MS": str(SHUTDOWN_RETRY_MS),
            "TOKENFAN_HEARTBEAT_S": "1",
        },
    )


def test_api_sigterm_streams_move_to_the_other_api(cluster):
    a, b = cluster.apis
    marks: dict = {}
    openai_stream: dict = {}

    async def watch_openai(client: httpx.AsyncClient) -> None:
        """One OpenAI-style stream on the API that goes away: it must end with
        an ``unavailable`` error payload (the SDKs raise on it) and a complete response."""
        body = {"messages": [{"role": "user", "content": "a long one " * 3}], "stream": True, "max_tokens": 400}
        async with client.stream("POST", f"{a.url}/v1/chat/completions", json=body) as response:
            raw = b""
            async for chunk in response.aiter_raw():
                raw += chunk
                openai_stream["raw"] = raw

    progress = Progress()

    async def main():
        async with httpx.AsyncClient(timeout=30.0) as client:
            oai = asyncio.create_task(watch_openai(client))
            chats = asyncio.create_task(
                run_chats(
                    cluster,
                    STREAMS,
                    tag="api-down",
                    min_tokens=300,
                    max_tokens=400,
                    urls=[a.url, b.url],
                    follow_kwargs=progress.counting,
                )
            )
            await async_wait_until(
                lambda: progress.all_have(STREAMS, 3) and b"data:" in openai_stream.get("raw", b""),
                20,
                message="every stream to be mid-answer (those on A and those on B)",
            )
            marks["sigterm"] = time.monotonic()
            a.terminate()  # SIGTERM by PID
            await asyncio.to_thread(a.wait_stopped, 15)
            marks["exited"] = time.monotonic()
            await oai
            return await chats

    outcome = asyncio.run(main())
    assert not a.killed_hard, "the API did not exit within 15 s of SIGTERM"
    exit_s = marks["exited"] - marks["sigterm"]

    check_runs(outcome)
    moved = [r.followed for r in outcome.runs if r.followed.reconnects]
    assert len(moved) == STREAMS // 2, "every stream on A had to move, and only those"
    resumed_after, ended_after = [], []
    for f in moved:
        assert f.server_closes == 1 and not f.errors, (f.chat_id, f.server_closes, f.errors)  # a clean end
        assert SHUTDOWN_RETRY_MS in f.retry_ms, f.retry_ms
        assert not f.statuses, f.statuses
        ended_after.append(f.connection_ends[0] - marks["sigterm"])
        first_on_b = f.times[f.event_connection.index(1)]
        resumed_after.append(first_on_b - marks["sigterm"])
    raw = openai_stream["raw"]
    last = [line for line in raw.strip().split(b"\n") if line.startswith(b"data: ")][-1]
    assert json.loads(last[6:])["error"]["code"] == "unavailable", raw[-300:]
    assert raw.endswith(b"\n\n")
    assert b"[DONE]" not in raw
    log = a.log_text()
    assert "Exception in ASGI application" not in log and "without completing response" not in log
    record(
        f"API SIGTERM: {len(moved)} open streams ended cleanly {max(ended_after):.2f} s after the signal at "
        f"worst and resumed on the other API {max(resumed_after):.2f} s after it (retry: {SHUTDOWN_RETRY_MS} ms); "
        f"the process exited in {exit_s:.2f} s; {outcome.lost_events()} events lost, {outcome.fivexx} 5xx"
    )
    assert outcome.fivexx == 0 and outcome.lost_events() == 0
    assert exit_s < 6.0
    assert max(resumed_after) < 3.0
