"""What every scenario gets: the run (Redis, processes, logs), the scale, and
a place for the raw details that go into the JSON file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import redis

from bench.procs import Run, prepare_peer

T = TypeVar("T")

# Every token event carries "ts", the wall-clock time its first token came
# from the model (worker side): with the client's arrival stamps, one clock
# for every relay measurement, the batch's wait included.
STAMP = {"TOKENFAN_STAMP_EVENTS": "true"}


@dataclass
class Context:
    run: Run
    quick: bool = False
    profile: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)
    # Why the peer (bench/peer) cannot run, once checked; "" when it can.
    peer_skipped: str | None = None

    def scale(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    def log(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def has_peer(self) -> bool:
        """Whether the peer runs in this benchmark (checked, and npm ci run
        when needed, on the first call). Without Node it is skipped, said
        once here and once in the table."""
        if self.peer_skipped is None:
            self.log("peer: checking Node and bench/peer/node_modules (npm ci on first use)")
            self.peer_skipped = prepare_peer(self.run) or ""
            if self.peer_skipped:
                self.log(f"peer SKIPPED, the benchmark runs without it: {self.peer_skipped}")
        return not self.peer_skipped

    def redis(self) -> redis.Redis:
        return self.run.redis()

    def redis_process(self) -> psutil.Process:
        assert self.run.redis_server is not None
        return psutil.Process(self.run.redis_server.pid)

    def flush(self) -> None:
        """A clean Redis between scenarios."""
        r = self.redis()
        try:
            r.flushall()
        finally:
            r.close()
