"""The request and result every entry point shares: CLI, batch row, plugin call, gateway call."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .catalog import DEFAULT_MODEL, normalize_ratio, normalize_size
from .errors import GenerationError


class WireProtocol(StrEnum):
    GEMINI = "gemini"
    OPENAI = "openai"


class GenerationRequest(BaseModel):
    """What to make. ``references`` are paths, http(s) URLs or data URIs, in order.

    No references means text-to-image; any reference makes it an edit (image-to-image).
    ``aspect_ratio`` and ``image_size`` left ``None`` let the model decide.
    """

    model_config = ConfigDict(frozen=True)

    prompt: str = Field(min_length=1)
    references: tuple[str, ...] = ()
    model: str = DEFAULT_MODEL
    aspect_ratio: str | None = None
    image_size: str | None = None
    strict_checks: bool = False
    #: Free-form tags carried into metadata (caller, batch, row).
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        return value

    @field_validator("image_size")
    @classmethod
    def _norm_size(cls, value: str | None) -> str | None:
        return normalize_size(value)

    @field_validator("aspect_ratio")
    @classmethod
    def _norm_ratio(cls, value: str | None) -> str | None:
        return normalize_ratio(value)

    @property
    def is_edit(self) -> bool:
        return bool(self.references)


class Usage(BaseModel):
    prompt_tokens: int | None = None
    candidates_tokens: int | None = None
    total_tokens: int | None = None
    thoughts_tokens: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return self.model_dump()


class GeneratedImage(BaseModel):
    """One delivered image: the bytes exactly as the model sent them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    data: bytes = Field(repr=False)
    mime: str
    width: int
    height: int
    sha256: str
    declared_mime: str | None = None
    path: Path | None = None
    url: str | None = None
    compressed_url: str | None = None
    thumbnail_url: str | None = None
    storage_status: str | None = None
    #: Set by the output checks when they decoded the image anyway, so nothing decodes it twice.
    blank: bool | None = Field(default=None, repr=False)
    #: A 160 px JPEG made from the same decode, for sheets, reports and galleries.
    preview: bytes | None = Field(default=None, repr=False)

    @classmethod
    def from_bytes(
        cls, data: bytes, mime: str, width: int, height: int, declared_mime: str | None = None
    ) -> GeneratedImage:
        return cls(
            data=data,
            mime=mime,
            width=width,
            height=height,
            sha256=hashlib.sha256(data).hexdigest(),
            declared_mime=declared_mime,
        )

    @property
    def extension(self) -> str:
        return MIME_EXTENSIONS.get(self.mime, "bin")

    def __repr__(self) -> str:
        size = f"{self.width}x{self.height}"
        return f"GeneratedImage({self.mime}, {size}, {len(self.data)} bytes, sha256={self.sha256[:12]})"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path) if self.path else None,
            "mime": self.mime,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "sha256": self.sha256,
        }
        for key in ("url", "compressed_url", "thumbnail_url", "storage_status"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


MIME_EXTENSIONS = {
    "image/avif": "avif",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
}


class GenerationResult(BaseModel):
    """What happened: images and text on success, a classified ``error`` otherwise.

    ``warnings`` are codes (``mime_mismatch``, ``aspect_mismatch``, ``size_mismatch``,
    ``blank_image``, ``unknown_model``...), never free text.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request: GenerationRequest
    images: list[GeneratedImage] = Field(default_factory=list)
    text: str | None = None
    usage: Usage = Field(default_factory=Usage)
    attempts: int = 0
    elapsed_s: float = 0.0
    warnings: list[str] = Field(default_factory=list)
    error: GenerationError | None = None
    cost_usd: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.images)

    def raise_for_error(self) -> GenerationResult:
        if self.error is not None:
            raise self.error
        return self

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"error={self.error.kind.value if self.error else 'none'}"
        return (
            f"GenerationResult({state}, images={len(self.images)}, attempts={self.attempts}, "
            f"elapsed_s={self.elapsed_s:.2f}, warnings={self.warnings})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` shape."""
        return {
            "ok": self.ok,
            "images": [image.summary() for image in self.images],
            "text": self.text,
            "warnings": list(self.warnings),
            "attempts": self.attempts,
            "elapsed_s": round(self.elapsed_s, 3),
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "error": self.error.to_dict() if self.error else None,
        }
