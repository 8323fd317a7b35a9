"""Fixtures of the simulator's own tests: a light (noise-free) simulator for speed, an httpx
client, and helpers that speak each protocol over real loopback HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from simhelpers import GEMINI_MODEL, KEY

from bananaline.simulator import SimulatorConfig, SimulatorServer


@pytest.fixture(scope="session")
def light_simulator() -> Iterator[SimulatorServer]:
    """Images without noise: every test stays fast even at 4K."""
    with SimulatorServer(SimulatorConfig(realistic=False)) as server:
        yield server


@pytest.fixture
def lsim(light_simulator: SimulatorServer) -> Iterator[SimulatorServer]:
    """The light simulator with counters, faults and config back to their defaults."""
    light_simulator.reset()
    defaults = SimulatorConfig(realistic=False)
    light_simulator.configure(
        latency_s=0.0,
        valid_keys=None,
        image_format=defaults.image_format,
        default_openai_style=defaults.default_openai_style,
    )
    yield light_simulator
    light_simulator.reset()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


GeminiCall = Callable[..., Awaitable[httpx.Response]]
OpenAICall = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def gemini(lsim: SimulatorServer, http: httpx.AsyncClient) -> GeminiCall:
    """POST a generateContent request; keyword arguments shape it."""

    async def call(
        prompt: str,
        *,
        model: str = GEMINI_MODEL,
        ratio: str | None = None,
        size: str | None = None,
        references: list[bytes] | None = None,
        key: str | None = KEY,
        snake_request: bool = False,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        parts: list[dict[str, Any]] = [{"text": prompt}]
        for reference in references or []:
            data = base64.b64encode(reference).decode()
            if snake_request:
                parts.append({"inline_data": {"mime_type": "image/png", "data": data}})
            else:
                parts.append({"inlineData": {"mimeType": "image/png", "data": data}})
        image_config = {k: v for k, v in (("aspectRatio", ratio), ("imageSize", size)) if v is not None}
        body = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config},
        }
        headers = {"x-goog-api-key": key} if key else {}
        url = f"{lsim.base_url}/v1beta/models/{model}:generateContent"
        return await http.post(url, json=body, headers=headers, timeout=timeout_s or 30.0)

    return call


@pytest.fixture
def openai(lsim: SimulatorServer, http: httpx.AsyncClient) -> OpenAICall:
    """POST a chat/completions request; keyword arguments shape it."""

    async def call(
        prompt: str,
        *,
        model: str = GEMINI_MODEL,
        ratio: str | None = None,
        size: str | None = None,
        references: list[bytes] | None = None,
        key: str | None = KEY,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        content: Any = prompt
        if references:
            uris = ["data:image/png;base64," + base64.b64encode(r).decode() for r in references]
            content = [{"type": "text", "text": prompt}]
            content += [{"type": "image_url", "image_url": {"url": uri}} for uri in uris]
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        image_config = {k: v for k, v in (("aspect_ratio", ratio), ("image_size", size)) if v is not None}
        if image_config:
            body["image_config"] = image_config
        headers = {"authorization": f"Bearer {key}"} if key else {}
        url = f"{lsim.base_url}/v1/chat/completions"
        return await http.post(url, json=body, headers=headers, timeout=timeout_s or 30.0)

    return call
