"""``python -m api``: one API process (uvicorn)."""

import uvicorn

from shared.observability import configure_logging
from shared.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging("api", level=settings.log_level, fmt=settings.log_format)
    uvicorn.run(
        "api.app:app",
        host=settings.host,
        port=settings.port,
        # A deploy must not wait forever on open SSE streams: they close, and
        # clients reconnect (retry: ms) to another process with Last-Event-ID.
        timeout_graceful_shutdown=5,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through configure_logging's handler
        access_log=False,
    )


if __name__ == "__main__":
    main()
