"""``python -m api``: one API process (uvicorn)."""

import logging

import uvicorn

from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        "api.app:app",
        host=settings.host,
        port=settings.port,
        # A deploy must not wait forever on open SSE streams: they close, and
        # clients reconnect (retry: ms) to another process with Last-Event-ID.
        timeout_graceful_shutdown=5,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
