"""The chaos scenario's provider (``TOKENFAN_PROVIDER=chaos_provider:generate``):
the simulated model, except for prompts that contain ``[boom]``, whose
generation yields bytes after a few tokens. The worker's ``"".join(batch)``
then raises TypeError outside the provider's iterator: an unexpected
exception in the worker, which must end the chat with ``error`` /
``internal_error`` (issue 12, item 2), whatever else happens to the workers."""

from __future__ import annotations

from shared.settings import get_settings
from worker.providers.base import ChatRequest
from worker.providers.simulated import SimulatedProvider, prompt_text

BOOM = "[boom]"
BOOM_AFTER = 8  # tokens

_simulated: SimulatedProvider | None = None


async def generate(request: ChatRequest):
    global _simulated
    if _simulated is None:
        settings = get_settings()
        _simulated = SimulatedProvider(settings.sim_ttft_ms, settings.sim_tokens_per_s)
    boom = BOOM in prompt_text(request)
    count = 0
    async for piece in _simulated(request):
        if boom and count == BOOM_AFTER:
            yield b"not text"
        count += 1
        yield piece
