"""Where a successful result's images go: a local folder with provenance, and/or a store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GenerationError
from .logs import get_logger
from .provenance import save_image
from .types import GenerationResult

if TYPE_CHECKING:
    from .storage import ImageStore, StoredImage

log = get_logger("bananaline.delivery")


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


async def store_result(
    result: GenerationResult,
    store: ImageStore,
    *,
    url_for_key: Callable[[str], str] | None = None,
    public: bool = False,
    skip_failed: bool = False,
    **extra: Any,
) -> list[StoredImage | None]:
    """Store every image and set its URLs; one entry per image of ``result.images``, in order.

    An upload failure lands in the spool (``storage_status == "stored_locally"``, the spool path
    as URL) and is reported, never raised. Stored images get the store's own URLs, or
    ``url_for_key(key)`` when given: the service serves a ``file://`` store under ``/files/…``
    and hands out those links instead of paths on its disk. ``public``: the URLs are for other
    people (the service), so an image still in the spool has no link at all, never a local path.

    A ``GenerationError`` (even the spool failed, or the image is refused) is raised, unless
    ``skip_failed``: then that image's entry is ``None``, ``storage_failed`` joins the warnings and
    the other images are still stored (the service answers what it could keep).
    """
    metadata = result_metadata(result, **extra)
    stored_images: list[StoredImage | None] = []
    for image in result.images:
        try:
            stored = await store.put_image(
                image.data, mime=image.mime, metadata=metadata, sha256=image.sha256
            )
        except GenerationError as error:
            if not skip_failed:
                raise
            log.warning("store_failed", error=error.message)
            result.warnings.append("storage_failed")
            stored_images.append(None)
            continue
        stored_here = stored.status == "stored"
        if stored_here and url_for_key is not None:
            image.url = url_for_key(stored.key)
            image.thumbnail_url = url_for_key(stored.thumbnail_key) if stored.thumbnail_key else None
            image.compressed_url = url_for_key(stored.compressed_key) if stored.compressed_key else None
        elif stored_here or not public:
            image.url = stored.url or (str(stored.spool_path) if stored.spool_path else None)
            image.compressed_url = stored.compressed_url
            image.thumbnail_url = stored.thumbnail_url
        else:  # in this host's spool until it can be uploaded: nothing to show others yet
            image.url = image.thumbnail_url = image.compressed_url = None
        image.storage_status = stored.status
        stored_images.append(stored)
    return stored_images
