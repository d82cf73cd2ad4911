"""The simulated provider, except for prompts containing ``[fail]``: those
say a few tokens and then fail with ``ProviderError("ux_failure", …)``, so
that one cluster serves both answers and ``error`` events
(``TOKENFAN_PROVIDER=ux_provider:generate``, with tests/ux on PYTHONPATH)."""

from __future__ import annotations

from shared.settings import get_settings
from worker.providers.base import ChatRequest, ProviderError
from worker.providers.simulated import SimulatedProvider, prompt_text

FAIL_MARK = "[fail]"
TOKENS_BEFORE_FAILING = 3

_settings = get_settings()
_simulated = SimulatedProvider(_settings.sim_ttft_ms, _settings.sim_tokens_per_s)


async def generate(request: ChatRequest):
    failing = FAIL_MARK in prompt_text(request)
    count = 0
    async for piece in _simulated(request):
        if failing and count == TOKENS_BEFORE_FAILING:
            raise ProviderError("ux_failure", "the test provider failed on purpose")
        count += 1
        yield piece
