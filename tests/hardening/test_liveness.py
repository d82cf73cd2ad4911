"""Issue 12 item 3: a stream ends, with an ``error`` event whose code says
why, whenever its chat can no longer finish (api/liveness.py), checked at
heartbeat cadence. Real API processes, no worker: nothing else ends these chats."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from harness import aread_stream, create_chat, read_stream, wait_until

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.3
TTL_S = 2
STALL_GRACE_S = 0.5
DEADLINE_S = 15.0  # far beyond TTL/grace + two checks; old code never ends the stream at all


@pytest.fixture(scope="module")
def expiring(module_clusters):
    env = {"TOKENFAN_STREAM_TTL_S": str(TTL_S), "TOKENFAN_HEARTBEAT_S": str(HEARTBEAT_S)}
    return module_clusters("expiring", workers=0, env=env)


@pytest.fixture(scope="module")
def stalling(module_clusters):
    env = {"TOKENFAN_HEARTBEAT_S": str(HEARTBEAT_S), "TOKENFAN_STALL_GRACE_S": str(STALL_GRACE_S)}
    return module_clusters("stalling", workers=0, env=env)


async def _read_with_deadline(base_url: str, chat_id: str, last_event_id: int | None = None):
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        # Heartbeats keep a read timeout from ever firing: bound the whole read.
        return await asyncio.wait_for(aread_stream(client, base_url, chat_id, last_event_id), DEADLINE_S)


def test_a_stream_of_a_chat_whose_metadata_expired_ends_with_an_error(expiring):
    api = expiring.api
    with httpx.Client(timeout=10) as client:
        chat_id = create_chat(client, api.url, "nobody will run me")
        read = asyncio.run(_read_with_deadline(api.url, chat_id))
        assert read.status_code == 200 and read.closed_by_server
        (last,) = read.events
        assert last[1] == "error" and last[0] == -1  # no id: not part of the (gone) log
        assert json.loads(last[2])["code"] == "chat_expired"
        assert client.get(f"{api.url}/chat/{chat_id}").status_code == 404


def test_a_chat_whose_job_is_gone_ends_with_an_error_every_reader_agrees_on(stalling):
    api = stalling.api
    r = stalling.redis
    with httpx.Client(timeout=10) as client:
        chat_id = create_chat(client, api.url, "my job will vanish")
        assert r.exists(f"arq:job:{chat_id}")

        async def main():
            reader = asyncio.create_task(_read_with_deadline(api.url, chat_id))
            # The stream is open (the hub has a client) before the job goes away.
            await asyncio.to_thread(
                wait_until, lambda: r.pubsub_numsub(f"tf:{{{chat_id}}}:live")[0][1] == 1, 10, 0.02, "subscribed"
            )
            # arq dropped the job (max_tries, job_timeout or its expiry): nothing will ever run it.
            r.delete(f"arq:job:{chat_id}")
            r.zrem(stalling.env["TOKENFAN_QUEUE_NAME"], chat_id)
            return await reader

        read = asyncio.run(main())
        assert read.closed_by_server
        (last,) = read.events
        assert last[0] == 1 and last[1] == "error"  # a real, logged terminal event
        assert json.loads(last[2])["code"] == "chat_stalled"

        state = client.get(f"{api.url}/chat/{chat_id}").json()
        assert state["status"] == "error" and state["error"]["code"] == "chat_stalled"
        # A later reader replays the same end; one that has it gets nothing more.
        assert read_stream(client, api.url, chat_id).events == read.events
        resumed = read_stream(client, api.url, chat_id, last_event_id=1)
        assert resumed.events == [] and resumed.status_code == 204  # EventSource stops on 204
