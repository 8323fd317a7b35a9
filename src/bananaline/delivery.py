"""Where a successful result's images go: a local folder with provenance, and/or a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .provenance import save_image
from .types import GenerationResult

if TYPE_CHECKING:
    from .storage import ImageStore


def result_metadata(result: GenerationResult, **extra: Any) -> dict[str, Any]:
    """What is recorded beside every image: enough to reproduce and to audit the cost."""
    request = result.request
    return {
        "prompt": request.prompt,
        "model": request.model,
        "aspect_ratio": request.aspect_ratio,
        "image_size": request.image_size,
        "reference_count": len(request.references),
        "tags": dict(request.tags),
        "attempts": result.attempts,
        "elapsed_s": round(result.elapsed_s, 3),
        "usage": result.usage.to_dict(),
        "warnings": list(result.warnings),
        "cost_usd": result.cost_usd,
        "text": result.text,
        **extra,
    }


def save_result(result: GenerationResult, out_dir: Path) -> list[Path]:
    metadata = result_metadata(result)
    paths = []
    for image in result.images:
        image.path = save_image(image, out_dir, metadata=metadata).resolve()
        paths.append(image.path)
    return paths


async def store_result(result: GenerationResult, store: ImageStore, **extra: Any) -> None:
    """Store every image; an upload failure lands in the spool and is reported, never raised."""
    metadata = result_metadata(result, **extra)
    for image in result.images:
        stored = await store.put_image(image.data, mime=image.mime, metadata=metadata)
        image.url = stored.url or (str(stored.spool_path) if stored.spool_path else None)
        image.compressed_url = stored.compressed_url
        image.thumbnail_url = stored.thumbnail_url
        image.storage_status = stored.status
