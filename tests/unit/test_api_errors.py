"""Issue 12 items 11 and 14: answers that were plain-text 500s or late 503s."""

from __future__ import annotations

import asyncio

import pytest
from arq.jobs import Job
from arq.utils import to_unix_ms

from shared import keys
from shared.store import ChatStore
from tests.unit.test_api_routes import SETTINGS, client, redis  # noqa: F401  (fixtures)
from tests.unit.test_hardening import client_for

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


async def test_an_accepted_chat_is_enqueued_as_arq_itself_would_enqueue_it(client, redis):  # noqa: F811
    # POST /chat writes arq's job in its own script (one round trip): what arq
    # reads back must be what ArqRedis.enqueue_job would have written.
    chat_id = (await client.post("/chat", json={"prompt": "hi"})).json()["id"]
    info = await Job(chat_id, redis, _queue_name=SETTINGS.queue_name).info()
    assert info is not None and info.function == "generate" and info.args == (chat_id,) and info.job_try is None
    assert await redis.zscore(SETTINGS.queue_name, chat_id) == info.score == to_unix_ms(info.enqueue_time)
    assert 86_390_000 < await redis.pttl(keys.job(chat_id)) <= 86_400_000  # arq's expires_extra_ms
    assert (await redis.hgetall(keys.meta(chat_id)))[b"status"] == b"queued"


async def test_concurrent_chats_never_overshoot_the_queue_limit(redis):  # noqa: F811
    settings = SETTINGS.model_copy(update={"max_queued": 5})
    async with client_for(settings, redis) as capped:
        answers = await asyncio.gather(*(capped.post("/chat", json={"prompt": "hi"}) for _ in range(20)))
    assert sorted(r.status_code for r in answers) == [202] * 5 + [503] * 15
    assert await redis.zcard(SETTINGS.queue_name) == 5
