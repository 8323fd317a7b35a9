"""Wire protocols: encode a request, decode a streamed answer, classify its content.

>>> get_protocol("gemini").name
'gemini'
"""

from __future__ import annotations

from .base import (
    DecodedResponse,
    EncodedRequest,
    RawImage,
    ReferencePart,
    UrlFetcher,
    WireCall,
    WireProtocolAdapter,
)
from .content import classify_refusal_text
from .gemini import GeminiProtocol
from .openai_chat import OpenAIChatProtocol

_PROTOCOLS: dict[str, type[GeminiProtocol] | type[OpenAIChatProtocol]] = {
    "gemini": GeminiProtocol,
    "openai": OpenAIChatProtocol,
}


def get_protocol(name: str) -> WireProtocolAdapter:
    """The adapter for ``"gemini"`` or ``"openai"`` (a :class:`bananaline.types.WireProtocol` works too)."""
    key = str(name).strip().lower()
    try:
        return _PROTOCOLS[key]()
    except KeyError:
        raise ValueError(f"unknown wire protocol {name!r}; valid: {', '.join(_PROTOCOLS)}") from None


__all__ = [
    "DecodedResponse",
    "EncodedRequest",
    "GeminiProtocol",
    "OpenAIChatProtocol",
    "RawImage",
    "ReferencePart",
    "UrlFetcher",
    "WireCall",
    "WireProtocolAdapter",
    "classify_refusal_text",
    "get_protocol",
]
