"""OpenAI-compatible protocol: ``POST {base}/v1/chat/completions`` with ``modalities``.

Relays return the image in one of several shapes, all accepted, several images allowed:

1. markdown ``![..](data:image/png;base64,...)`` inside ``choices[0].message.content``;
2. ``message.images[].image_url.url`` (a data URI or an http(s) URL; ``b64_json`` too);
3. content-part arrays: ``{"type": "image_url", "image_url": {"url": ...}}``, also
   ``{"type": "image", "image_url": ...}`` and ``b64_json``;
4. an http(s) URL (markdown image, a markdown link to an image file, a bare URL as the whole
   text, or in the fields above), downloaded with the caller's SSRF-guarded ``fetch_url``.

The same image delivered twice (markdown and ``images[]``) is kept once.

Content is classified in the Gemini order, adapted to what OpenAI shapes can say::

    error object > prompt_blocked > zero_candidates_token > no_candidates > finish_reason
    > no_parts > inline_data_empty > text_response > success

``usage.completion_tokens == 0`` counts as a silent refusal only when no image came back:
relays that do not count image tokens report 0 next to a perfectly good image, so zero tokens
is trusted only when unambiguous. ``prompt_blocked`` comes from a passed-through
``prompt_feedback.block_reason`` or a relay's ``content_policy_violation`` error object.
"""

from __future__ import annotations

import hashlib
import io
import re
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import ErrorKind, GenerationError, register_secret
from ..types import Usage
from .base import DecodedResponse, EncodedRequest, RawImage, UrlFetcher, WireCall
from .blobs import BlobExtractor
from .content import error_fields, error_from_body, no_image_error
from .gemini import accepts_image_size, base64_bytes, to_json_bytes
from .streaming import Path, decode_base64, find_data_uris, json_events, malformed, parse_data_uri_header

_VERSION_TAIL = re.compile(r"/(?:v\d+(?:alpha|beta)?\d*|openai)$")
_MD_IMAGE = re.compile(r"!\[[^\]\n]{0,500}\]\(\s*(https?://[^\s)]+)\s*\)")
_MD_FILE_LINK = re.compile(
    r"\[[^\]\n]{0,500}\]\(\s*(https?://[^\s)]+?\.(?:png|jpe?g|webp|gif|heic|heif)(?:\?[^\s)]*)?)\s*\)",
    re.IGNORECASE,
)
_MD_EMPTY_IMAGE = re.compile(r"!\[[^\]\n]{0,500}\]\(\s*\)")
_BARE_URL = re.compile(r"https?://\S+")

_CHOICE: Path = ("choices", "item")
_MESSAGE: Path = _CHOICE + ("message",)
_CONTENT: Path = _MESSAGE + ("content",)
_CONTENT_PART: Path = _CONTENT + ("item",)
_IMAGES_ITEM: Path = _MESSAGE + ("images", "item")

#: Leaf keys (relative to a content part or an images[] entry) that carry an image.
_IMAGE_LEAVES = {
    ("imageUrl",),
    ("imageUrl", "url"),
    ("url",),
    ("image",),
    ("image", "url"),
}
_B64_LEAVES = {("b64Json",), ("imageUrl", "b64Json"), ("image", "b64Json")}


def _reads_data_uris(path: Path) -> bool:
    """A string the decoder searches for data URIs: there, inline blob placeholders are taken."""
    if path in (_CONTENT, _CONTENT_PART, _IMAGES_ITEM):
        return True
    leaf = path[5:]
    return path[:5] in (_CONTENT_PART, _IMAGES_ITEM) and (leaf == ("text",) or leaf in _IMAGE_LEAVES)


def _is_b64_field(path: Path) -> bool:
    """A ``b64_json`` field of a content part or an ``images[]`` entry: pure base64 by contract."""
    return path[:5] in (_CONTENT_PART, _IMAGES_ITEM) and path[5:] in _B64_LEAVES


def openai_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not _VERSION_TAIL.search(base):
        base += "/v1"
    return f"{base}/chat/completions"


@dataclass
class _Entry:
    """A content part or an ``images[]`` entry being read."""

    type: str | None = None
    text: str | None = None


@dataclass
class _OpenAIAnswer:
    choices: int = 0
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    has_content: bool = False
    inline_empty: bool = False
    #: In delivery order: decoded images and URLs still to fetch.
    slots: list[RawImage | str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    usage_counts: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    block_reason: str | None = None
    error: dict[str, Any] | None = None
    #: Holds the long base64 strings (``b64_json`` images, and data URI payloads in text and URL
    #: fields) the JSON events name by placeholder.
    blobs: BlobExtractor = field(default_factory=lambda: BlobExtractor(data_uris=True))
    _entry: _Entry | None = None

    def feed(self, path: Path, event: str, value: Any) -> None:
        if event == "string" and not _is_b64_field(path) and self.blobs.is_placeholder(value):
            try:
                value = self.blobs.as_text(value)  # a long base64 string where text is expected
            except ValueError as exc:
                raise malformed(f"invalid base64 in {'.'.join(path)}") from exc
        elif event == "string" and not _reads_data_uris(path):
            value = self._expand(value, path)  # a long data URI in a field read as text
        if path[:3] == _MESSAGE:
            self._feed_message(path, event, value)
        elif path == _CHOICE:
            if event == "start_map":
                self.choices += 1
        elif path == ("choices",):
            if event not in ("start_array", "end_array", "null"):
                raise malformed("choices is not an array")
        elif path == _CHOICE + ("finishReason",):
            if event == "string" and value and self.finish_reason is None:
                self.finish_reason = value
        elif path == _CHOICE + ("nativeFinishReason",):
            # Relays that wrap Gemini (OpenRouter style) keep its own word: IMAGE_SAFETY says more
            # than content_filter, and decides retryability the same way as on the native protocol.
            if event == "string" and value and self.native_finish_reason is None:
                self.native_finish_reason = value
        elif path[:1] == ("usage",) and event == "number":
            self.usage_counts[".".join(path[1:])] = int(value)
        elif path == ("model",) and event == "string":
            self.model = value
        elif path == ("promptFeedback", "blockReason") and event == "string" and value:
            self.block_reason = value
        elif path[:1] == ("error",):
            self.error = error_fields(self.error, path, event, value)

    def _feed_message(self, path: Path, event: str, value: Any) -> None:
        if path == _CONTENT:
            if event == "string":
                self._absorb_text(value)
            elif event not in ("start_array", "end_array", "null"):
                raise malformed("message.content is neither text nor a list of parts")
        elif path == _CONTENT_PART or path == _IMAGES_ITEM:
            if event == "start_map":
                self._entry = _Entry()
            elif event == "end_map" and self._entry is not None:
                entry, self._entry = self._entry, None
                if entry.text and entry.type in (None, "text", "output_text"):
                    self._absorb_text(entry.text)
                elif entry.text:
                    self.blobs.discard_inline(entry.text)  # e.g. a reasoning part's image: freed now
            elif event == "string" and path == _IMAGES_ITEM:  # images: ["data:..."]
                self._absorb_image_string(value)
            elif event == "string":  # content: ["text", ...]
                self._absorb_text(value)
        elif path[: len(_CONTENT_PART)] == _CONTENT_PART:
            self._feed_entry(path[len(_CONTENT_PART) :], event, value)
        elif path[: len(_IMAGES_ITEM)] == _IMAGES_ITEM:
            self._feed_entry(path[len(_IMAGES_ITEM) :], event, value)

    def _feed_entry(self, leaf: Path, event: str, value: Any) -> None:
        entry = self._entry
        if entry is None or event != "string":
            return
        if leaf == ("type",):
            entry.type = value
        elif leaf == ("text",):
            entry.text = (entry.text or "") + value
        elif leaf in _IMAGE_LEAVES:
            self._absorb_image_string(value)
        elif leaf in _B64_LEAVES:
            self.has_content = True
            try:
                data = self.blobs.take(value)
            except ValueError as exc:
                raise malformed("invalid base64 in an image") from exc
            if data is None:
                self._add_base64(value, 0, None)
            else:
                self.slots.append(RawImage(data, None))

    def _expand(self, text: str, path: Path = ()) -> str:
        try:
            return self.blobs.expand(text)
        except ValueError as exc:
            raise malformed(f"invalid base64 in {'.'.join(path) or 'an image'}") from exc

    def _add_blob(self, placeholder: str, mime: str | None) -> None:
        """The image a data URI's payload placeholder names (decoded while it streamed in)."""
        try:
            data = self.blobs.take(placeholder)
        except ValueError as exc:
            raise malformed("invalid base64 in an image") from exc
        if data:
            self.slots.append(RawImage(data, mime))
        else:
            self.inline_empty = True

    def _add_base64(self, text: str, start: int, end: int | None, mime: str | None = None) -> None:
        if (end if end is not None else len(text)) <= start:
            self.inline_empty = True
            return
        try:
            data = decode_base64(text, start, end)
        except ValueError as exc:
            raise malformed("invalid base64 in an image") from exc
        if data:
            self.slots.append(RawImage(data, mime))
        else:
            self.inline_empty = True

    def _absorb_image_string(self, value: str) -> None:
        url = value.strip()
        if not url:
            return
        self.has_content = True
        header = parse_data_uri_header(value, len(value) - len(value.lstrip()))
        if header is not None:
            mime, payload_start = header
            end = self.blobs.inline_end(value, payload_start)
            if end is not None and not value[end:].strip():
                self._add_blob(value[payload_start:end], mime)
            else:
                self._add_base64(self._expand(value), payload_start, None, mime)
        elif url.startswith(("http://", "https://")):
            self.slots.append(self._expand(url))
        else:
            raise malformed("an image field holds neither a data URI nor an http(s) URL")

    def _absorb_text(self, text: str) -> None:
        """Pull data URIs and image links out of message text; keep the rest as text."""
        if not text:
            return
        self.has_content = True
        segments: list[str] = []
        pos = 0
        for span in find_data_uris(text):
            segments.append(text[pos : span.uri_start])
            blob_end = self.blobs.inline_end(text, span.payload_start)
            if blob_end is not None:  # the payload was decoded while it streamed in
                self._add_blob(text[span.payload_start : blob_end], span.mime)
                pos = blob_end
                continue
            self._add_base64(text, span.payload_start, span.end, span.mime)
            pos = span.end
        remaining = text[pos:] if pos else text
        if segments:
            remaining = "".join(segments) + remaining
        remaining = self._expand(remaining)  # a placeholder find_data_uris did not reach
        for pattern in (_MD_IMAGE, _MD_FILE_LINK):
            for match in pattern.finditer(remaining):
                self.slots.append(match.group(1))
            remaining = pattern.sub("", remaining)
        remaining = _MD_EMPTY_IMAGE.sub("", remaining).strip()
        if _BARE_URL.fullmatch(remaining):
            self.slots.append(remaining)
            remaining = ""
        if remaining:
            self.texts.append(remaining)

    async def classify(self, fetch_url: UrlFetcher) -> DecodedResponse:
        if self.error is not None:
            error = self.error
            status = error.get("status") or error.get("type")
            raise error_from_body(error.get("code"), status, error.get("message"))
        if self.block_reason:
            raise GenerationError(ErrorKind.PROMPT_BLOCKED, detail=self.block_reason)
        if self.usage_counts.get("completionTokens") == 0 and not self.slots:
            raise GenerationError(ErrorKind.ZERO_CANDIDATES_TOKEN, detail="completion_tokens=0")
        if self.choices == 0:
            raise GenerationError(ErrorKind.NO_CANDIDATES)
        if self.finish_reason is not None and self.finish_reason.lower() != "stop":
            detail = self.native_finish_reason or self.finish_reason
            raise GenerationError(ErrorKind.FINISH_REASON, detail=detail)
        if not self.has_content:
            raise GenerationError(ErrorKind.NO_PARTS)
        text = "\n".join(self.texts) or None
        if not self.slots:
            raise no_image_error(text, inline_empty=self.inline_empty)
        images = await _resolve(self.slots, fetch_url)
        if not images:  # every URL answered with an empty body
            raise GenerationError(ErrorKind.INLINE_DATA_EMPTY)
        return DecodedResponse(
            images=images,
            text=text,
            usage=Usage(
                prompt_tokens=self.usage_counts.get("promptTokens"),
                candidates_tokens=self.usage_counts.get("completionTokens"),
                total_tokens=self.usage_counts.get("totalTokens"),
                thoughts_tokens=self.usage_counts.get("completionTokensDetails.reasoningTokens"),
            ),
            finish_reason=self.finish_reason,
            model_version=self.model,
        )


async def _resolve(slots: list[RawImage | str], fetch_url: UrlFetcher) -> list[RawImage]:
    """Fetch URL slots in order; drop empty downloads and exact duplicates (same URL or bytes)."""
    images: list[RawImage] = []
    seen: set[str] = set()
    for slot in slots:
        if isinstance(slot, str):
            if slot in seen:
                continue
            seen.add(slot)
            image = RawImage(await fetch_url(slot), None)
        else:
            image = slot
        if not image.data:
            continue
        digest = hashlib.sha256(image.data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        images.append(image)
    return images


class OpenAIChatProtocol:
    """``/v1/chat/completions`` with ``modalities: ["image", "text"]``, as relays serve Nano Banana."""

    name = "openai"

    def encode(self, call: WireCall) -> EncodedRequest:
        """Build the request; each reference becomes a data URI written straight into the body."""
        register_secret(call.api_key)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {call.api_key}"}
        image_config: dict[str, str] = {}
        if call.aspect_ratio is not None:
            image_config["aspect_ratio"] = call.aspect_ratio
        if call.image_size is not None and accepts_image_size(call.model):
            image_config["image_size"] = call.image_size
        body = io.BytesIO()
        body.write(b'{"model":')
        body.write(to_json_bytes(call.model))
        body.write(b',"messages":[{"role":"user","content":[')
        body.write(to_json_bytes({"type": "text", "text": call.prompt}))
        for reference in call.references:
            body.write(b',{"type":"image_url","image_url":{"url":')
            body.write(to_json_bytes(f"data:{reference.mime};base64,")[:-1])  # the JSON string stays open
            body.write(base64_bytes(reference.data))
            body.write(b'"}}')
        body.write(b']}],"modalities":["image","text"]')
        if image_config:
            body.write(b',"image_config":')
            body.write(to_json_bytes(image_config))
        body.write(b',"stream":false}')
        return EncodedRequest("POST", openai_url(call.base_url), headers, body.getvalue())

    async def decode(self, response: httpx.Response, fetch_url: UrlFetcher) -> DecodedResponse:
        answer = _OpenAIAnswer()
        first = True
        try:
            async with aclosing(json_events(response.aiter_bytes(), answer.blobs)) as events:
                async for path, event, value in events:
                    if first:
                        first = False
                        if event != "start_map":
                            raise malformed(f"expected a JSON object, got {event}")
                        continue
                    if path:
                        answer.feed(path, event, value)
        finally:
            await response.aclose()
        return await answer.classify(fetch_url)
