"""Read a request body of either protocol into one :class:`ParsedCall`.

Both camelCase (``inlineData``, what google-genai sends) and snake_case (``inline_data``)
Gemini bodies are accepted. Reference images are decoded and their pixel size read (header
only), so a bad base64 or a non-image is a 400 like Google's.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError


class BadRequest(ValueError):
    """The body breaks the protocol: answered with HTTP 400 in the protocol's error shape."""


@dataclass(frozen=True)
class Reference:
    mime: str
    size_bytes: int
    #: The format Pillow found in the bytes ("PNG", "JPEG"...), to compare with the declared mime.
    image_format: str | None = None
    #: Pixel size, or None for references passed by URL (never fetched).
    pixels: tuple[int, int] | None = None


@dataclass
class ParsedCall:
    protocol: str
    model: str
    prompt: str
    references: list[Reference] = field(default_factory=list)
    aspect_ratio: str | None = None
    image_size: str | None = None
    wants_image: bool = True


def _pick(mapping: Any, *names: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def decode_reference(mime: str, data: str) -> Reference:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadRequest("Invalid value at 'contents[0].parts[1].inline_data.data': invalid base64") from exc
    try:
        with Image.open(io.BytesIO(raw)) as img:
            pixels = img.size
            image_format = img.format
    except (UnidentifiedImageError, OSError) as exc:
        raise BadRequest("Unable to process input image. Please retry or report the problem.") from exc
    return Reference(mime, len(raw), image_format, pixels)


def parse_gemini(model: str, body: Any) -> ParsedCall:
    if not isinstance(body, dict):
        raise BadRequest("Invalid JSON payload received. Expected an object.")
    contents = _pick(body, "contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    texts: list[str] = []
    references: list[Reference] = []
    for content in contents:
        if not isinstance(content, dict) or content.get("role", "user") != "user":
            continue
        for part in _pick(content, "parts") or []:
            if not isinstance(part, dict):
                raise BadRequest("Invalid JSON payload received. Part must be an object.")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            inline = _pick(part, "inlineData", "inline_data")
            if inline is not None:
                mime = _pick(inline, "mimeType", "mime_type") or "application/octet-stream"
                data = _pick(inline, "data")
                if not isinstance(data, str):
                    raise BadRequest("inline_data.data must be a base64 string")
                references.append(decode_reference(mime, data))
            file_data = _pick(part, "fileData", "file_data")
            if file_data is not None:
                references.append(Reference(_pick(file_data, "mimeType", "mime_type") or "", 0, None))
    config = _pick(body, "generationConfig", "generation_config") or {}
    image_config = _pick(config, "imageConfig", "image_config") or {}
    modalities = _pick(config, "responseModalities", "response_modalities")
    wants_image = not modalities or any(str(m).upper() == "IMAGE" for m in modalities)
    return ParsedCall(
        protocol="gemini",
        model=model,
        prompt="\n".join(texts),
        references=references,
        aspect_ratio=_pick(image_config, "aspectRatio", "aspect_ratio"),
        image_size=_pick(image_config, "imageSize", "image_size"),
        wants_image=wants_image,
    )


_DATA_URI_RE = re.compile(r"^data:([\w.+/-]*)(?:;[\w=.-]+)*?;base64,(.*)$", re.DOTALL)


def parse_openai(body: Any) -> ParsedCall:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is a required property and must be a non-empty array")
    texts: list[str] = []
    references: list[Reference] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str):
                    raise BadRequest("image_url.url must be a string")
                match = _DATA_URI_RE.match(url)
                if match:
                    references.append(decode_reference(match.group(1), match.group(2)))
                elif url.startswith(("http://", "https://")):
                    references.append(Reference("", 0, None))
                else:
                    raise BadRequest("Invalid image_url: expected a data URI or an http(s) URL")
    image_config = body.get("image_config") or body.get("imageConfig") or {}
    modalities = body.get("modalities")
    wants_image = not modalities or any(str(m).lower() == "image" for m in modalities)
    return ParsedCall(
        protocol="openai",
        model=model,
        prompt="\n".join(texts),
        references=references,
        aspect_ratio=_pick(image_config, "aspect_ratio", "aspectRatio"),
        image_size=_pick(image_config, "image_size", "imageSize"),
        wants_image=wants_image,
    )
