"""Real images at exact pixel sizes, encoded once and served many times.

Encoding a realistic 4K PNG takes a couple of seconds, so payloads are cached by
``(format, width, height, palette index, variant, realistic)`` together with their base64;
responses are then assembled from the cached bytes without copying or re-encoding. The cache
is thread-safe and de-duplicates concurrent first encodes of the same key (one encode, many
waiters), and evicts least recently used entries beyond a byte budget.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageChops, ImageDraw

ImageFormat = Literal["png", "jpeg"]
Variant = Literal["normal", "black", "thought"]

#: Eight colours a prompt hash picks from: (light, dark) ends of the gradient.
PALETTE: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((236, 196, 64), (120, 60, 20)),  # banana
    ((90, 170, 230), (20, 40, 110)),  # sky
    ((120, 200, 120), (20, 80, 40)),  # leaf
    ((230, 110, 110), (90, 20, 40)),  # coral
    ((180, 140, 220), (50, 30, 90)),  # lavender
    ((240, 160, 90), (110, 50, 20)),  # apricot
    ((100, 210, 200), (20, 80, 90)),  # teal
    ((200, 200, 200), (60, 60, 70)),  # slate
)

MIME = {"png": "image/png", "jpeg": "image/jpeg"}
EXT = {"png": "png", "jpeg": "jpg"}

#: Noise strength that makes a 4K PNG weigh about 20 MB, like Google's.
_NOISE_SIGMA = 8.0


def palette_index(prompt: str, palette_size: int = len(PALETTE)) -> int:
    """The palette colour a prompt maps to: stable across runs and processes."""
    size = max(1, min(palette_size, len(PALETTE)))
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % size


@dataclass(frozen=True)
class Payload:
    """Encoded image bytes and their base64, both kept so no request re-encodes anything."""

    data: bytes = field(repr=False)
    b64: bytes = field(repr=False)
    mime: str
    width: int
    height: int

    @property
    def ext(self) -> str:
        return "jpg" if self.mime == "image/jpeg" else "png"

    @classmethod
    def of(cls, data: bytes, mime: str, width: int = 0, height: int = 0) -> Payload:
        return cls(data, base64.b64encode(data), mime, width, height)


def render(width: int, height: int, palette: int, variant: Variant, realistic: bool) -> Image.Image:
    """Draw the picture: a diagonal two-colour gradient, a disc, and (realistic) noise."""
    if variant == "black":
        return Image.new("RGB", (width, height), (0, 0, 0))
    light, dark = PALETTE[palette % len(PALETTE)]
    vertical = Image.linear_gradient("L")
    diagonal = ImageChops.add(vertical, vertical.transpose(Image.Transpose.ROTATE_90), scale=2.0)
    mask = diagonal.resize((width, height), Image.Resampling.BILINEAR)
    img = Image.composite(
        Image.new("RGB", (width, height), light), Image.new("RGB", (width, height), dark), mask
    )
    draw = ImageDraw.Draw(img)
    radius = min(width, height) // 4
    cx, cy = width // 2, height // 2
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=dark, outline=light, width=3)
    if realistic:
        noise = Image.effect_noise((width, height), _NOISE_SIGMA)
        img = ImageChops.add(img, Image.merge("RGB", (noise, noise, noise)), scale=1.0, offset=-128)
    return img


def encode(img: Image.Image, fmt: ImageFormat) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=90)
    else:
        # Level 1: about twice as fast as the default on noisy pixels, a few % larger.
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


#: (format, width, height, palette, variant, realistic)
CacheKey = tuple[str, int, int, int, str, bool]


def _build(key: CacheKey) -> Payload:
    fmt, width, height, palette, variant, realistic = key
    img = render(width, height, palette, variant, realistic)  # type: ignore[arg-type]
    data = encode(img, fmt)  # type: ignore[arg-type]
    return Payload.of(data, MIME[fmt], width, height)


class ImageCache:
    """Encoded payloads by key, LRU-bounded by bytes, safe from any thread or event loop."""

    def __init__(self, budget_bytes: int = 1_500_000_000, workers: int = 2) -> None:
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._done: OrderedDict[CacheKey, Payload] = OrderedDict()
        self._pending: dict[CacheKey, Future[Payload]] = {}
        self._bytes = 0
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self.encodes = 0

    def _lookup(self, key: CacheKey) -> Payload | Future[Payload]:
        with self._lock:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
                return hit
            pending = self._pending.get(key)
            if pending is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sim-encode")
                pending = self._pool.submit(self._build_and_store, key)
                self._pending[key] = pending
            return pending

    def _build_and_store(self, key: CacheKey) -> Payload:
        try:
            payload = _build(key)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        size = len(payload.data) + len(payload.b64)
        with self._lock:
            self.encodes += 1
            self._done[key] = payload
            self._bytes += size
            while self._bytes > self.budget_bytes and len(self._done) > 1:
                _, old = self._done.popitem(last=False)
                self._bytes -= len(old.data) + len(old.b64)
        return payload

    def get(
        self, fmt: ImageFormat, width: int, height: int, palette: int, variant: Variant, realistic: bool
    ) -> Payload:
        """Blocking lookup (encodes on a miss)."""
        found = self._lookup((fmt, width, height, palette, variant, realistic))
        return found if isinstance(found, Payload) else found.result()

    async def aget(
        self, fmt: ImageFormat, width: int, height: int, palette: int, variant: Variant, realistic: bool
    ) -> Payload:
        """Awaitable lookup: a miss encodes in a worker thread, the event loop keeps serving."""
        found = self._lookup((fmt, width, height, palette, variant, realistic))
        return found if isinstance(found, Payload) else await asyncio.wrap_future(found)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._done), "bytes": self._bytes, "encodes": self.encodes}

    def clear(self) -> None:
        with self._lock:
            self._done.clear()
            self._bytes = 0

    def close(self) -> None:
        """Stop the encoder threads (a later miss starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def thought_size(width: int, height: int) -> tuple[int, int]:
    """Thought images are low-resolution previews of the final aspect."""
    scale = 256 / max(width, height)
    return max(16, round(width * scale)), max(16, round(height * scale))


#: Bytes that no decoder accepts as an image (the ``invalid_image`` fault).
NOT_AN_IMAGE = b"\x00\x01garbage, not an image: " + bytes(range(256)) * 4
