"""The FastAPI application: ``api.app:app`` for uvicorn, ``create_app`` for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, metrics, middleware, openai_compat, page, responses, ui_stream
from api.routes import router
from api.services import Services
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings)
        app.state.services = services
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="tokenfan", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    middleware.install(app, settings)  # body size, API keys, stream tokens, rate limit
    app.include_router(router)
    app.include_router(openai_compat.router)
    app.include_router(responses.router)
    app.include_router(ui_stream.router)
    app.include_router(metrics.router)
    app.include_router(page.router)
    return app


app = create_app()
