"""``python -m worker``: one worker process."""

import asyncio

from shared.observability import configure_logging
from shared.settings import get_settings
from worker.arq_worker import create_worker


def main() -> None:
    settings = get_settings()
    configure_logging("worker", level=settings.log_level, fmt=settings.log_format)
    # uvloop, as uvicorn uses for the API: the worker runs a task per
    # generation and a Redis round trip per batch; measured (bench, relay lag
    # at a fixed 1,000 events/s) ~15% less worker CPU than the standard loop.
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it everywhere but Windows
        pass
    else:
        asyncio.set_event_loop(uvloop.new_event_loop())  # arq's Worker takes the current loop
    create_worker().run()


if __name__ == "__main__":
    main()
