"""The contract between the client and a wire protocol.

A protocol knows two things: how to encode a :class:`WireCall` into an HTTP request, and how
to decode a *streamed* HTTP 200 response into a :class:`DecodedResponse`, classifying
content-level failures (refusals, empty answers) as :class:`~bananaline.errors.GenerationError`.
Transport-level failures (HTTP status, timeouts, resets) belong to the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from ..types import Usage


@dataclass(frozen=True)
class ReferencePart:
    """A reference image ready to inline: bytes and their real (sniffed) mime type."""

    data: bytes = field(repr=False)
    mime: str


@dataclass(frozen=True)
class WireCall:
    """Everything a protocol needs to build one upstream request."""

    base_url: str
    api_key: str = field(repr=False)
    model: str
    prompt: str
    references: tuple[ReferencePart, ...] = ()
    aspect_ratio: str | None = None
    image_size: str | None = None
    #: Google's own host wants ``x-goog-api-key``; relays want ``Authorization: Bearer``.
    google_auth: bool = False


@dataclass(frozen=True)
class EncodedRequest:
    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass
class RawImage:
    """Image bytes as delivered, with the mime type the upstream declared for them."""

    data: bytes = field(repr=False)
    declared_mime: str | None


@dataclass
class DecodedResponse:
    images: list[RawImage] = field(default_factory=list)
    text: str | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    model_version: str | None = None


#: Fetches an image URL the upstream answered with (SSRF-guarded by the caller).
UrlFetcher = Callable[[str], Awaitable[bytes]]


class WireProtocolAdapter(Protocol):
    name: str

    def encode(self, call: WireCall) -> EncodedRequest: ...

    async def decode(self, response: httpx.Response, fetch_url: UrlFetcher) -> DecodedResponse:
        """Consume ``response`` (status 200, not yet read) as a stream; raise GenerationError."""
        ...
