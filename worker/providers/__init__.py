"""Choosing the provider a worker uses: ``simulated`` (the default), ``openai``,
``anthropic``, or any importable async generator function named
``package.module:function``."""

from __future__ import annotations

import importlib

from shared.settings import Settings
from worker.providers.base import ChatRequest, Finish, Provider, ProviderError
from worker.providers.simulated import SimulatedProvider

__all__ = ["ChatRequest", "Finish", "Provider", "ProviderError", "load_provider"]


def load_provider(settings: Settings) -> Provider:
    name = settings.provider
    if name == "simulated":
        return SimulatedProvider(settings.sim_ttft_ms, settings.sim_tokens_per_s)
    if name in ("openai", "anthropic"):
        # Imported here: a worker that does not use an SDK does not load it.
        module = importlib.import_module(f"worker.providers.{name}_provider")
        return module.build(settings)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    raise ValueError(f"unknown provider {name!r}: use 'simulated', 'openai', 'anthropic' or 'package.module:function'")
