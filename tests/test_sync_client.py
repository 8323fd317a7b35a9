"""The blocking facade, for scripts and notebooks: same request, same result, same errors."""

from __future__ import annotations

from bananaline import GenerationRequest, Settings, SyncImageClient
from bananaline.errors import ErrorKind


def test_sync_client_generates_and_classifies(sim):
    settings = Settings(base_url=sim.base_url, api_key="sync-key-123456", max_attempts=1)
    with SyncImageClient(settings) as client:
        ok = client.generate(GenerationRequest(prompt="a lemon", aspect_ratio="3:4", image_size="2K"))
        refused = client.generate(GenerationRequest(prompt="x [sim fault=prompt_blocked]"))
    assert ok.ok and (ok.images[0].width, ok.images[0].height) == (1792, 2400)
    assert ok.cost_usd == 0.134 and ok.usage.candidates_tokens
    assert refused.error.kind is ErrorKind.PROMPT_BLOCKED and refused.error.detail == "SAFETY"
    assert "bytes" in repr(ok.images[0]) and len(repr(ok)) < 300  # summaries, never the bytes


def test_unknown_model_passes_through_with_a_warning(sim):
    settings = Settings(base_url=sim.base_url, api_key="sync-key-123456")
    with SyncImageClient(settings) as client:
        result = client.generate(GenerationRequest(prompt="a fig", model="nano-banana-next-week"))
    assert result.ok and "unknown_model" in result.warnings
    assert sim.stats()["by_model"] == {"nano-banana-next-week": 1}
