"""``python -m worker.health``: a worker's health check (docker compose).

Exits 0 when a worker process on this host has pushed its metrics to Redis
within the last three ``TOKENFAN_WORKER_METRICS_INTERVAL_S`` (see
worker/metrics.py): the process runs, its event loop turns and it reaches
Redis. Exits 1 otherwise."""

from __future__ import annotations

import socket
import sys
from typing import cast

import redis

from shared import keys
from shared.settings import get_settings


def healthy(client: redis.Redis, host: str) -> bool:
    prefix = f"{host}:"
    members = cast(set[bytes], client.smembers(keys.WORKER_METRICS_SET))  # a sync client: a set, not an awaitable
    ids = [m.decode() for m in members]
    return any(client.exists(keys.worker_metrics(i)) for i in ids if i.startswith(prefix))


def main() -> int:
    settings = get_settings()
    client = redis.Redis.from_url(settings.effective_redis_url, socket_timeout=3, socket_connect_timeout=3)
    host = socket.gethostname()
    try:
        ok = healthy(client, host)
    except (redis.RedisError, OSError) as exc:
        print(f"worker health: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not ok:
        print(f"worker health: no worker on {host} pushed its metrics recently", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
