"""Stream helpers, and what decoding a 4K-sized answer costs in memory."""

from __future__ import annotations

import base64
import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from bananaline.protocols import get_protocol
from bananaline.protocols.streaming import (
    BASE64_CHUNK_CHARS,
    AsyncByteReader,
    decode_base64,
    find_data_uris,
)

IMAGE_BYTES = 22 * 1024 * 1024 + 512 * 1024  # base64 ~30 MiB: the size of a 4K PNG answer


@pytest.fixture(scope="module")
def big_image() -> bytes:
    return random.Random(4096).randbytes(IMAGE_BYTES)


def test_base64_wrapped_lines_across_chunk_boundaries():
    raw = random.Random(1).randbytes(BASE64_CHUNK_CHARS)  # encodes to more than one decoding chunk
    wrapped = base64.encodebytes(raw).decode()  # 76-char lines: chunk slices are not 4-aligned
    assert len(wrapped) > BASE64_CHUNK_CHARS
    assert decode_base64(wrapped) == raw


def test_base64_urlsafe_unpadded_and_spans():
    raw = bytes(range(256)) * 3 + b"xy"
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_base64(urlsafe) == raw
    text = f"prefix({base64.b64encode(raw).decode()})suffix"
    assert decode_base64(text, 7, len(text) - 7) == raw
    with pytest.raises(ValueError):
        decode_base64("QUJDR")
    with pytest.raises(ValueError):
        decode_base64("QU*D")


def test_find_data_uris_in_markdown():
    text = 'a ![x](data:image/png;base64,QUJD) b data:image/jpeg;charset=x;base64,REVG" data:image/gif,plain'
    spans = find_data_uris(text)
    assert [(span.mime, text[span.payload_start : span.end]) for span in spans] == [
        ("image/png", "QUJD"),
        ("image/jpeg", "REVG"),
    ]


async def test_reader_coalesces_small_network_chunks():
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([48 + i]) * 3

    reader = AsyncByteReader(chunks())
    assert await reader.read(0) == b""
    assert await reader.read(7) == b"0001112"
    assert await reader.read(100) == b"22333444555666777888999"
    assert await reader.read(100) == b""
    assert reader.bytes_read == 30


def _b64_pieces(raw: bytes, step: int = 49152) -> Iterator[bytes]:
    for offset in range(0, len(raw), step):
        yield base64.b64encode(raw[offset : offset + step])


def _stream(head: bytes, raw: bytes, tail: bytes) -> httpx.Response:
    """The body is generated chunk by chunk (64 KiB), so the test itself holds no copy of it."""

    async def body() -> AsyncIterator[bytes]:
        yield head
        for piece in _b64_pieces(raw):
            yield piece
        yield tail

    return httpx.Response(200, content=body())


async def _measure(protocol: str, response: httpx.Response) -> tuple[bytes, int]:
    async def no_fetch(url: str) -> bytes:
        raise AssertionError(url)

    tracemalloc.start()
    try:
        decoded = await get_protocol(protocol).decode(response, no_fetch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (image,) = decoded.images
    return image.data, peak


async def test_gemini_4k_answer_decodes_exactly_within_bounded_memory(big_image):
    head = (
        b'{"candidates":[{"content":{"role":"model","parts":[{"text":"done"},'
        b'{"inlineData":{"mimeType":"image/png","data":"'
    )
    tail = b'"}}]},"finishReason":"STOP"}],"usageMetadata":{"candidatesTokenCount":2000}}'
    data, peak = await _measure("gemini", _stream(head, big_image, tail))
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_image).digest()
    print(
        f"\ngemini: image {len(big_image) / 2**20:.1f} MiB, JSON ~{len(big_image) * 4 / 3 / 2**20:.1f} MiB, "
        f"traced peak {peak / 2**20:.1f} MiB = {peak / len(big_image):.2f}x image"
    )
    # The base64 is decoded as it streams in (protocols/blobs.py): the image and a chunk, never the
    # 1.33x str on top (2.41x before).
    assert peak < 1.3 * len(big_image)


async def test_openai_b64_json_4k_answer_decodes_exactly_within_bounded_memory(big_image):
    head = b'{"choices":[{"message":{"role":"assistant","images":[{"type":"image_url","b64_json":"'
    tail = b'"}]},"finish_reason":"stop"}]}'
    data, peak = await _measure("openai", _stream(head, big_image, tail))
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_image).digest()
    print(f"\nopenai b64_json: traced peak {peak / 2**20:.1f} MiB = {peak / len(big_image):.2f}x image")
    assert peak < 1.3 * len(big_image)


async def test_openai_markdown_4k_answer_decodes_exactly_within_bounded_memory(big_image):
    head = (
        b'{"choices":[{"index":0,"message":{"role":"assistant",'
        b'"content":"Here:\\n![image](data:image/png;base64,'
    )
    tail = b')"},"finish_reason":"stop"}],"usage":{"completion_tokens":2000}}'
    data, peak = await _measure("openai", _stream(head, big_image, tail))
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_image).digest()
    print(
        f"\nopenai markdown: image {len(big_image) / 2**20:.1f} MiB, "
        f"traced peak {peak / 2**20:.1f} MiB = {peak / len(big_image):.2f}x image"
    )
    # The data URI's payload is decoded as it streams in (BlobExtractor data_uris): 2.41x before.
    assert peak < 1.3 * len(big_image)
