"""Compressed copy and thumbnail: sizes, formats, memory-friendly path, decompression bombs."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from storage_support import make_settings

from bananaline.errors import ErrorKind, GenerationError
from bananaline.storage import ImageStore


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture(scope="session")
def png_4k() -> bytes:
    """5504x3072 RGB noise, the worst case for every codec (about 48 MiB as PNG)."""
    width, height = 5504, 3072
    image = Image.frombytes("RGB", (width, height), random.Random(4).randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=0)
    image.close()
    return buffer.getvalue()


async def test_4k_png_gets_4500px_jpeg_and_512px_webp(png_4k: bytes, tmp_path: Path) -> None:
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path))
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        stored = await store.put_image(png_4k, mime="image/png", metadata={"prompt": "noise"})
    finally:
        ticking.cancel()
    largest_gap_s = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    assert largest_gap_s < 1.0, f"event loop blocked for {largest_gap_s:.2f}s"

    assert stored.compressed_key and stored.thumbnail_key
    with Image.open(io.BytesIO(await store.read(stored.compressed_key))) as compressed:
        assert compressed.format == "JPEG" and compressed.size == (4500, 2512) and compressed.mode == "RGB"
    with Image.open(io.BytesIO(await store.read(stored.thumbnail_key))) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (512, 286)
    meta = json.loads(await store.read(stored.key.replace(".png", ".json")))
    assert meta["compressed"]["width"] == 4500 and meta["thumbnail"]["width"] == 512
    assert (meta["width"], meta["height"]) == (5504, 3072)


async def test_large_jpeg_is_downscaled_through_draft(tmp_path: Path) -> None:
    image = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path))
    stored = await store.put_image(buffer.getvalue(), mime="image/jpeg", metadata={})
    assert stored.key.endswith(".jpg") and stored.compressed_key
    with Image.open(io.BytesIO(await store.read(stored.compressed_key))) as compressed:
        assert compressed.size == (4500, 3000)


async def test_transparent_png_is_flattened_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path))
    stored = await store.put_image(buffer.getvalue(), mime="image/png", metadata={})
    assert stored.compressed_key
    with Image.open(io.BytesIO(await store.read(stored.compressed_key))) as compressed:
        assert compressed.getpixel((50, 25)) == pytest.approx((255, 255, 255), abs=2)


async def test_quality_and_sizes_follow_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, compressed_long_edge_px=40, thumbnail_px=16, compressed_jpeg_quality=50
    )
    store = ImageStore.from_url("memory://", settings=settings)
    image = Image.new("RGB", (80, 60), (10, 120, 200))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    stored = await store.put_image(buffer.getvalue(), mime="image/png", metadata={})
    assert stored.compressed_key and stored.thumbnail_key
    with Image.open(io.BytesIO(await store.read(stored.compressed_key))) as compressed:
        assert compressed.size == (40, 30)
    with Image.open(io.BytesIO(await store.read(stored.thumbnail_key))) as thumb:
        assert thumb.size == (16, 12)


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"), [(40000, 40000, 8192 * 8192), (2000, 2000, 1_000_000)]
)
async def test_decompression_bomb_is_refused_before_decoding(
    width: int, height: int, max_pixels: int, tmp_path: Path
) -> None:
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path, max_image_pixels=max_pixels))
    with pytest.raises(GenerationError) as caught:
        await store.put_image(bomb_png(width, height), mime="image/png", metadata={})
    error = caught.value
    assert error.kind is ErrorKind.INVALID_IMAGE and error.detail == "decompression_bomb"
    assert f"{width}x{height}" in error.message and "decompression bomb" in error.message
    assert await store.list() == []
    assert not (tmp_path / "spool").exists()
