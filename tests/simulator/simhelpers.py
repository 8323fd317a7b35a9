"""Small helpers shared by the simulator tests (imported, not fixtures)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

KEY = "sim-test-key-0001"
GEMINI_MODEL = "gemini-3-pro-image-preview"


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def decode_image(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def gemini_image_part(document: dict[str, Any]) -> dict[str, Any]:
    """The final (non-thought) image part of a camelCase Gemini answer."""
    parts = document["candidates"][0]["content"]["parts"]
    images = [part for part in parts if "inlineData" in part and not part.get("thought")]
    assert len(images) == 1, parts
    return images[0]
