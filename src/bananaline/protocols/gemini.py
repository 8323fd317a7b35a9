"""Gemini native protocol: ``POST {base}/v1beta/models/{model}:generateContent``.

The response is read as a stream of JSON events and only what matters is kept: the non-thought
parts (text, inline images), the finish reason, the block reason, token counts and the model
version. camelCase and snake_case keys are both accepted (relays re-serialise with either).
A top-level JSON array (the ``streamGenerateContent`` shape some relays answer with) is read as
successive chunks of one answer.

Content is classified in this order, the first match wins::

    prompt_blocked > zero_candidates_token > no_candidates > finish_reason > no_parts
    > inline_data_empty > text_response > success
"""

from __future__ import annotations

import io
import json
import re
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pybase64

from ..catalog import get_model
from ..errors import ErrorKind, GenerationError, register_secret
from ..types import Usage
from .base import DecodedResponse, EncodedRequest, RawImage, UrlFetcher, WireCall
from .blobs import BlobExtractor
from .content import error_fields, error_from_body, no_image_error
from .streaming import Path, decode_base64, json_events, malformed

_VERSION_SEGMENT = re.compile(r"/v\d+(?:alpha|beta)?\d*$")


def to_json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def base64_bytes(data: bytes) -> bytes:
    """Standard base64 as bytes, ready to splice into a JSON string (the alphabet needs no escaping)."""
    return pybase64.b64encode(data)


def accepts_image_size(model: str) -> bool:
    """Gemini 2.5 Flash Image has one size and rejects ``imageSize``; the catalog names the family."""
    name = model.removeprefix("models/")
    spec = get_model(name)
    family = spec.family if spec is not None else name
    return not family.startswith("gemini-2.5")


def gemini_url(base_url: str, model: str) -> str:
    base = base_url.rstrip("/")
    if not _VERSION_SEGMENT.search(base):
        base += "/v1beta"
    return f"{base}/models/{quote(model.removeprefix('models/'), safe='-._~')}:generateContent"


def _usage_from(counts: dict[str, int]) -> Usage:
    return Usage(
        prompt_tokens=counts.get("promptTokenCount"),
        candidates_tokens=counts.get("candidatesTokenCount"),
        total_tokens=counts.get("totalTokenCount"),
        thoughts_tokens=counts.get("thoughtsTokenCount"),
    )


@dataclass
class _Part:
    text: str | None = None
    thought: bool = False
    has_inline: bool = False
    image: bytes | None = field(default=None, repr=False)
    mime: str | None = None
    file_uri: str | None = None
    file_mime: str | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.text) or self.has_inline or self.file_uri is not None


_PARTS: Path = ("candidates", "item", "content", "parts")
_PART: Path = _PARTS + ("item",)
_INLINE_DATA: Path = ("inlineData", "data")


@dataclass
class _GeminiAnswer:
    """What the event stream told us; classified once the body has been read."""

    candidates: int = 0
    finish_reason: str | None = None
    block_reason: str | None = None
    model_version: str | None = None
    usage_counts: dict[str, int] = field(default_factory=dict)
    parts: list[_Part] = field(default_factory=list)
    error: dict[str, Any] | None = None
    #: Holds the long base64 strings (images) the JSON events name by placeholder.
    blobs: BlobExtractor = field(default_factory=BlobExtractor)
    _current: _Part | None = None

    def feed(self, path: Path, event: str, value: Any) -> None:
        if event == "string" and path[-2:] != _INLINE_DATA and self.blobs.is_placeholder(value):
            if path[-1] == "thoughtSignature":  # long, base64, and never read
                self.blobs.discard(value)
                return
            try:
                value = self.blobs.as_text(value)  # a long base64 string where text is expected
            except ValueError as exc:
                raise malformed(f"invalid base64 in {'.'.join(path)}") from exc
        if path[:4] == _PARTS:
            self._feed_part(path, event, value)
        elif path == ("candidates", "item"):
            if event == "start_map":
                self.candidates += 1
        elif path == ("candidates",):
            if event not in ("start_array", "end_array", "null"):
                raise malformed("candidates is not an array")
        elif path == ("candidates", "item", "finishReason"):
            if event == "string" and value and self.finish_reason is None:
                self.finish_reason = value
        elif path == ("promptFeedback", "blockReason"):
            if event == "string" and value:
                self.block_reason = value
        elif len(path) == 2 and path[0] == "usageMetadata":
            if event == "number":
                self.usage_counts[path[1]] = int(value)
        elif path == ("modelVersion",):
            if event == "string":
                self.model_version = value
        elif path and path[0] == "error":
            self.error = error_fields(self.error, path, event, value)

    def _feed_part(self, path: Path, event: str, value: Any) -> None:
        if path == _PARTS:
            if event not in ("start_array", "end_array", "null"):
                raise malformed("parts is not an array")
            return
        if path == _PART:
            if event == "start_map":
                self._current = _Part()
            elif event == "end_map" and self._current is not None:
                self.parts.append(self._current)
                self._current = None
            return
        part = self._current
        if part is None:
            return
        leaf = path[5:]
        if leaf == ("text",) and event == "string":
            part.text = (part.text or "") + value
        elif leaf == ("thought",) and event == "boolean":
            part.thought = bool(value)
            if part.thought:
                part.image = None  # an interim thought image: never kept
        elif leaf == ("inlineData",) and event == "start_map":
            part.has_inline = True
        elif leaf == ("inlineData", "mimeType") and event == "string":
            part.mime = value.strip().lower() or None
        elif leaf == ("inlineData", "data"):
            if event != "string":
                raise malformed("inlineData.data is not a string")
            if not value or part.thought:
                self.blobs.discard(value)  # an interim thought image: never kept, freed now
                return
            try:
                image = self.blobs.take(value)
                part.image = decode_base64(value) if image is None else image
            except ValueError as exc:
                raise malformed("invalid base64 in inlineData.data") from exc
        elif leaf == ("fileData", "fileUri") and event == "string":
            part.file_uri = value
        elif leaf == ("fileData", "mimeType") and event == "string":
            part.file_mime = value.strip().lower() or None

    async def classify(self, fetch_url: UrlFetcher) -> DecodedResponse:
        if self.error is not None:
            raise error_from_body(self.error.get("code"), self.error.get("status"), self.error.get("message"))
        if self.block_reason:
            raise GenerationError(ErrorKind.PROMPT_BLOCKED, detail=self.block_reason)
        if self.usage_counts.get("candidatesTokenCount") == 0:
            raise GenerationError(ErrorKind.ZERO_CANDIDATES_TOKEN, detail="candidatesTokenCount=0")
        if self.candidates == 0:
            raise GenerationError(ErrorKind.NO_CANDIDATES)
        if self.finish_reason is not None and self.finish_reason.upper() != "STOP":
            raise GenerationError(ErrorKind.FINISH_REASON, detail=self.finish_reason)
        visible = [part for part in self.parts if not part.thought and part.has_content]
        if not visible:
            raise GenerationError(ErrorKind.NO_PARTS)
        images: list[RawImage] = []
        for part in visible:
            if part.image:
                images.append(RawImage(part.image, part.mime))
            elif part.file_uri and part.file_uri.startswith(("http://", "https://")):
                fetched = await fetch_url(part.file_uri)
                if fetched:
                    images.append(RawImage(fetched, part.file_mime))
                else:
                    part.has_inline = True  # an empty download is an empty image
        text = "".join(part.text for part in visible if part.text) or None
        if not images:
            raise no_image_error(text, inline_empty=any(part.has_inline for part in visible))
        return DecodedResponse(
            images=images,
            text=text,
            usage=_usage_from(self.usage_counts),
            finish_reason=self.finish_reason,
            model_version=self.model_version,
        )


class GeminiProtocol:
    """Google's native ``generateContent``, as served by Google and by relays such as APIYI."""

    name = "gemini"

    def encode(self, call: WireCall) -> EncodedRequest:
        """Build the request. The body is written piece by piece into one buffer: each reference
        is base64-encoded once, straight to bytes, with no str copy and no JSON escaping pass over
        megabytes (peak ~1.2x the body instead of 3x for ``json.dumps`` of a dict)."""
        register_secret(call.api_key)
        headers = {"Content-Type": "application/json"}
        if call.google_auth:
            headers["x-goog-api-key"] = call.api_key
        else:
            headers["Authorization"] = f"Bearer {call.api_key}"
        image_config: dict[str, str] = {}
        if call.aspect_ratio is not None:
            image_config["aspectRatio"] = call.aspect_ratio
        if call.image_size is not None and accepts_image_size(call.model):
            image_config["imageSize"] = call.image_size
        generation_config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if image_config:
            generation_config["imageConfig"] = image_config
        body = io.BytesIO()
        body.write(b'{"contents":[{"role":"user","parts":[')
        body.write(to_json_bytes({"text": call.prompt}))
        for reference in call.references:
            body.write(b',{"inlineData":{"mimeType":')
            body.write(to_json_bytes(reference.mime))
            body.write(b',"data":"')
            body.write(base64_bytes(reference.data))
            body.write(b'"}}')
        body.write(b']}],"generationConfig":')
        body.write(to_json_bytes(generation_config))
        body.write(b"}")
        return EncodedRequest("POST", gemini_url(call.base_url, call.model), headers, body.getvalue())

    async def decode(self, response: httpx.Response, fetch_url: UrlFetcher) -> DecodedResponse:
        answer = _GeminiAnswer()
        top_level: str | None = None
        try:
            async with aclosing(json_events(response.aiter_bytes(), answer.blobs)) as events:
                async for path, event, value in events:
                    if top_level is None:
                        top_level = event
                        if event not in ("start_map", "start_array"):
                            raise malformed(f"expected a JSON object, got {event}")
                        continue
                    if top_level == "start_array":
                        if not path:
                            continue
                        if path == ("item",) and event not in ("start_map", "map_key", "end_map"):
                            raise malformed("expected an array of JSON objects")
                        path = path[1:]
                    if path:
                        answer.feed(path, event, value)
        finally:
            await response.aclose()
        return await answer.classify(fetch_url)
