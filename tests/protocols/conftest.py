"""Fixtures for the protocol decoders: streamed HTTP responses, real PNGs, a URL fetcher."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import pytest
from PIL import Image

from bananaline.protocols.base import DecodedResponse, UrlFetcher


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png_red() -> bytes:
    return _png(16, 16, (220, 30, 30))


@pytest.fixture(scope="session")
def png_blue() -> bytes:
    return _png(24, 16, (30, 30, 220))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _chunks(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def split(body: bytes, chunk_size: int) -> list[bytes]:
    return [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]


def streamed(
    body: bytes | Any, *, chunk_size: int = 65536, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A 200 response whose body arrives in ``chunk_size`` pieces, as from a socket."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return httpx.Response(200, headers=headers, content=_chunks(split(body, chunk_size)))


def streamed_pieces(pieces: Iterable[bytes]) -> httpx.Response:
    return httpx.Response(200, content=_chunks(pieces))


def fetcher(pages: dict[str, bytes]) -> UrlFetcher:
    """A URL fetcher that serves ``pages`` and records what was asked for."""
    asked: list[str] = []

    async def fetch(url: str) -> bytes:
        asked.append(url)
        return pages[url]

    fetch.asked = asked  # type: ignore[attr-defined]
    return fetch


async def no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


Decoder = Callable[..., Awaitable[DecodedResponse]]


@pytest.fixture
def tools() -> Any:
    """The helpers above, as one namespace (test modules are not importable packages)."""

    class Tools:
        pass

    for name, value in {
        "b64": b64,
        "streamed": streamed,
        "streamed_pieces": streamed_pieces,
        "fetcher": fetcher,
        "no_fetch": no_fetch,
        "split": split,
    }.items():
        setattr(Tools, name, staticmethod(value))
    return Tools
