"""What the fake model answers, before it is dressed in one protocol's JSON.

Both protocol shapers render the same :class:`Outcome`, so a content fault means the same
thing on the Gemini endpoint and on the OpenAI-compatible one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .images import Payload

#: Stands for the main image's base64 in a serialized body; replaced by the cached bytes.
IMAGE_PLACEHOLDER = "@@SIM_IMAGE_B64@@"
_PLACEHOLDER_BYTES = IMAGE_PLACEHOLDER.encode()


@dataclass
class Outcome:
    model: str
    response_id: str
    image: Payload | None = None
    #: The mime type the answer claims for ``image`` (``jpeg_as_png`` lies here).
    declared_mime: str | None = None
    thought_image: Payload | None = None
    thought_text: str | None = None
    thought_signature: str | None = None
    text: str | None = None
    finish_reason: str = "STOP"
    block_reason: str | None = None
    has_candidates: bool = True
    #: ``no_parts``: a candidate whose content has no parts at all.
    empty_parts: bool = False
    prompt_text_tokens: int = 0
    prompt_image_tokens: int = 0
    candidates_tokens: int = 0
    thoughts_tokens: int = 0
    #: Report a zero output-token count (``zero_candidates_token``). Otherwise a zero count is
    #: left out, as Google's proto3 JSON does, so no other fault reads as a silent refusal.
    explicit_zero_output: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_text_tokens + self.prompt_image_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.candidates_tokens + self.thoughts_tokens


def split_on_placeholder(document: object, image_b64: bytes | None) -> list[bytes]:
    """Serialize ``document`` and splice the cached base64 where the placeholder stands.

    The big base64 is never copied into a new string: the body goes out as three chunks.
    """
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if image_b64 is None or _PLACEHOLDER_BYTES not in text:
        return [text]
    head, tail = text.split(_PLACEHOLDER_BYTES, 1)
    return [head, image_b64, tail]
