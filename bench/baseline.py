"""The direct baseline (``python -m bench.baseline``): the "seed" architecture
that tokenfan replaces. The request handler itself runs the simulated LLM and
streams one SSE event per token, with no queue, no Redis and no resume.

Same stack as the tokenfan API (FastAPI, sse-starlette's EventSourceResponse,
uvicorn with the same options and heartbeat) and the same simulated provider
(``TOKENFAN_SIM_TTFT_MS``, ``TOKENFAN_SIM_TOKENS_PER_S``), so that the
difference measured is the architecture. Written as a seed would write it:
a ServerSentEvent per token, its JSON encoded by orjson.

    GET /stream?prompt=...&max_tokens=N    token events, then done
    GET /healthz
"""

from __future__ import annotations

import os

import orjson
import uvicorn
from fastapi import FastAPI
from sse_starlette import EventSourceResponse, ServerSentEvent

from shared.settings import get_settings
from worker.providers import ChatRequest, Finish
from worker.providers.simulated import SimulatedProvider

settings = get_settings()
provider = SimulatedProvider(settings.sim_ttft_ms, settings.sim_tokens_per_s)
app = FastAPI(title="direct baseline")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/stream")
async def stream(prompt: str, max_tokens: int = 512) -> EventSourceResponse:
    request = ChatRequest(messages=[{"role": "user", "content": prompt}], model=settings.model, max_tokens=max_tokens)

    async def events():
        seq = 0
        finish = Finish()
        async for piece in provider(request):
            if isinstance(piece, Finish):
                finish = piece
                continue
            seq += 1
            yield ServerSentEvent(orjson.dumps({"text": piece}).decode(), event="token", id=str(seq))
        seq += 1
        done = {"finish_reason": finish.finish_reason, "usage": finish.usage}
        yield ServerSentEvent(orjson.dumps(done).decode(), event="done", id=str(seq))

    return EventSourceResponse(
        events(),
        ping=settings.heartbeat_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        send_timeout=settings.send_timeout_s,
    )


def main() -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        timeout_graceful_shutdown=5,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
