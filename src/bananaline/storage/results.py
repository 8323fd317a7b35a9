"""What the store hands back: one :class:`StoredImage` per put, one :class:`FlushReport` per flush."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class StoredImage:
    """Where one image ended up. ``status == "stored_locally"`` means: in the spool, not yet uploaded."""

    key: str
    sha256: str
    bytes: int
    mime: str
    url: str | None = None
    compressed_key: str | None = None
    compressed_url: str | None = None
    thumbnail_key: str | None = None
    thumbnail_url: str | None = None
    status: Literal["stored", "stored_locally"] = "stored"
    error: str | None = None
    spool_path: Path | None = None
    deduplicated: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spool_path"] = str(self.spool_path) if self.spool_path else None
        return data


@dataclass
class FlushReport:
    uploaded: int = 0
    failed: int = 0
    remaining: int = 0
    skipped_other_store: int = 0
    errors: list[str] = field(default_factory=list)
