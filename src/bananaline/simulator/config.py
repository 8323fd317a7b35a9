"""Knobs of the fake upstream, shared by the app, the threaded server and the CLI runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OpenAIStyle = Literal["markdown", "images", "parts", "url"]
OPENAI_STYLES: tuple[str, ...] = ("markdown", "images", "parts", "url")


@dataclass
class SimulatorConfig:
    """How the simulator behaves when no fault is asked for.

    ``valid_keys=None`` accepts any non-empty key. ``realistic`` adds a noise texture so that
    PNGs weigh what Google's do (a 4K PNG is 15-30 MB); turn it off for tiny, fast payloads.
    ``palette_size`` bounds how many distinct colours (hence cache entries per pixel size)
    prompts map to: a 4K benchmark can set 1 to pay the first encode only once.

    Example::

        config = SimulatorConfig(latency_s=0.2, valid_keys={"k1", "k2"}, image_format="jpeg")
    """

    latency_s: float = 0.0
    valid_keys: set[str] | None = None
    image_format: Literal["png", "jpeg"] = "png"
    realistic: bool = True
    default_openai_style: OpenAIStyle = "markdown"
    palette_size: int = 8
    #: Upper bound of the encoded-image cache (bytes + base64), least recently used evicted.
    cache_budget_bytes: int = 1_500_000_000
    #: How long the ``hang`` fault sleeps unless the request says otherwise.
    hang_s: float = 3600.0
