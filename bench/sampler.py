"""Sampling a value in the background while something runs (CLIENT LIST,
RSS...): used by the end-to-end tests and the benchmark."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Sampler:
    """Calls ``fn`` every ``interval`` s in a thread until stopped; keeps the
    results (exceptions are recorded, not raised)."""

    def __init__(self, fn: Callable[[], Any], interval: float) -> None:
        self.fn = fn
        self.interval = interval
        self.samples: list[Any] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.fn())
            except Exception as exc:  # noqa: BLE001
                self.errors.append(exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
