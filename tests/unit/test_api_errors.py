"""Issue 12 items 11 and 14: answers that were plain-text 500s or late 503s."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.store import ChatStore
from tests.unit.test_api_routes import client, redis  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio


async def test_get_chat_after_the_log_was_trimmed_is_a_json_error(client, redis):  # noqa: F811
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    store = ChatStore(redis, ttl_s=60, maxlen=10)
    claim = await store.claim(chat_id, 1000)
    await store.append(chat_id, claim.attempt, [("token", {"text": f"{i} "}) for i in range(5)])
    await redis.xdel(keys.log(chat_id), "1-0", "2-0")  # what MAXLEN ~ trims first

    response = await client.get(f"/chat/{chat_id}")
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "log_expired"


async def test_a_chat_once_enqueued_is_a_202_even_if_the_wake_up_fails(client, redis, monkeypatch):  # noqa: F811
    async def publish_fails(channel, message):
        raise RedisConnectionError("Redis went away right after the enqueue")

    monkeypatch.setattr(redis, "publish", publish_fails)
    response = await client.post("/chat", json={"prompt": "hi"})
    assert response.status_code == 202, response.text  # a retry would run the chat twice
    chat_id = response.json()["id"]
    assert await redis.exists(f"arq:job:{chat_id}")  # the workers' poll finds it
