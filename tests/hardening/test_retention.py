"""Retention: a chat's metadata and log expire ``TOKENFAN_STREAM_TTL_S`` after
its last write, and after a run nothing is left in Redis without a TTL: the
whole keyspace of the run's database is scanned, after chats of every kind
(streamed to the end, non-streamed, cancelled while queued and while running,
refused by the rate limit) and API keys (rate-limit buckets), once every
process of the run has stopped."""

from __future__ import annotations

import httpx
import pytest
from harness import create_chat, prompt_with_length, read_stream, record, stop_all, wait_chat_status, wait_until

from api import auth

pytestmark = pytest.mark.e2e

TTL_S = 4
KEY, KEY2 = "tf-retention-key-0123456789", "tf-retention-key2-0123456789"
# Global keys that hold no chat data and must outlive every chat: the
# stream-token secret (when TOKENFAN_SECRET is unset), without which every
# outstanding stream token would stop working.
PERMANENT = {"tf:secret"}


@pytest.fixture
def cluster(clusters):
    return clusters(
        env={
            "TOKENFAN_STREAM_TTL_S": str(TTL_S),
            "TOKENFAN_API_KEYS": f"{auth.hash_key(KEY)},{auth.hash_key(KEY2)}",
            "TOKENFAN_RATE_LIMIT_PER_S": "20",
            "TOKENFAN_RATE_LIMIT_BURST": "40",
            "TOKENFAN_SIM_TOKENS_PER_S": "200",
        }
    )


def keyspace(r) -> dict[str, int]:
    """Every key of the database and its TTL in ms (-1: none)."""
    return {key: r.pttl(key) for key in r.scan_iter(count=1000)}


def test_everything_expires(cluster):
    api, r = cluster.api, cluster.redis
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=httpx.Timeout(20.0), headers=headers) as client:
        streamed = create_chat(client, api.url, prompt_with_length(40, 80, "ret-1"), max_tokens=200)
        read = read_stream(client, api.url, streamed)
        assert read.closed_by_server
        running = create_chat(client, api.url, prompt_with_length(380, 419, "ret-2"), max_tokens=500)
        wait_chat_status(client, api.url, running, ["running"])
        assert client.delete(f"{api.url}/chat/{running}").status_code == 202
        queued = create_chat(client, api.url, "cancelled before it started", max_tokens=5)
        assert client.delete(f"{api.url}/chat/{queued}").status_code in (200, 202, 409)
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}
        completion = client.post(f"{api.url}/v1/chat/completions", json=body)
        assert completion.status_code == 200
        ids = [streamed, running, queued, completion.headers["x-chat-id"]]
        for chat_id in ids:
            wait_chat_status(client, api.url, chat_id, ["done"])
        other = {"authorization": f"Bearer {KEY2}"}
        codes = [client.get(f"{api.url}/v1/models", headers=other).status_code for _ in range(80)]
        assert 429 in codes  # the rate limiter has written its bucket
        # The workers are done with everything: no job, no lease left.
        queue = cluster.env["TOKENFAN_QUEUE_NAME"]
        wait_until(lambda: r.zcard(queue) == 0 and r.zcard("tf:running") == 0, 10, 0.05, "the queue to drain")

        # The end of the run: every process stops (SIGTERM); then the keyspace.
        stop_all(cluster.processes)
        keys = keyspace(r)
        assert any(k.startswith(f"tf:{{{streamed}}}") for k in keys), keys
        no_ttl = {k for k, ttl in keys.items() if ttl < 0 and k not in PERMANENT}
        assert not no_ttl, f"keys without a TTL: {sorted(no_ttl)}"
        chat_keys = {k: ttl for k, ttl in keys.items() if k.startswith("tf:{")}
        assert chat_keys and all(0 < ttl <= TTL_S * 1000 for ttl in chat_keys.values()), chat_keys

        # And then they are gone, within stream_ttl: a finished chat is a 404.
        left = wait_until(
            lambda: set(k := keyspace(r)) <= PERMANENT and k,
            TTL_S + 10,
            0.2,
            lambda: f"every key to expire (left: {sorted(keyspace(r))})",
        )
        fresh = cluster.add_api()
        for chat_id in ids:
            assert client.get(f"{fresh.url}/chat/{chat_id}").status_code == 404
    record(
        f"retention: {len(keys)} keys after the run ({len(chat_keys)} of chats), all with a TTL but "
        f"{sorted(PERMANENT & set(keys))}; all expired within stream_ttl {TTL_S} s + 10 s; left: {sorted(left)}"
    )
