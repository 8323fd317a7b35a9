"""The compressed copy and the thumbnail, made with one decoded image in memory per job.

The original is decoded once (JPEG sources through ``Image.draft``, so the decoder itself
downscales), shrunk in place with ``Image.thumbnail`` (which uses ``reduce()`` before resampling),
encoded as the compressed JPEG, shrunk in place again and encoded as the WebP thumbnail. Every
function here is blocking: callers run it in a worker thread.

Dimensions are read from the header before anything is decoded; an image larger than
``max_image_pixels`` is refused as ``invalid_image`` / ``decompression_bomb``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..config import Settings
from ..errors import ErrorKind, GenerationError
from ..imaging import ImageTooLarge, UndecodableImage, open_lazily, to_rgb, upright

THUMBNAIL_WEBP_QUALITY = 80
#: libwebp effort 0-6; above 2 costs 3x the time for a few percent fewer bytes on a thumbnail.
THUMBNAIL_WEBP_METHOD = 2


@dataclass(frozen=True)
class ImageHeader:
    format: str | None
    width: int
    height: int


@dataclass
class Derivatives:
    compressed: bytes | None = None
    compressed_size: tuple[int, int] | None = None
    thumbnail: bytes | None = None
    thumbnail_size: tuple[int, int] | None = None


def bomb_error(width: int, height: int, max_pixels: int) -> GenerationError:
    return GenerationError(
        ErrorKind.INVALID_IMAGE,
        detail="decompression_bomb",
        message=(
            f"Refused a decompression bomb: the image declares {width}x{height} = {width * height} pixels, "
            f"more than max_image_pixels={max_pixels}"
        ),
        message_zh=f"拒绝疑似解压炸弹：图片声明尺寸 {width}x{height}，超过 max_image_pixels={max_pixels}",
        retryable=False,
    )


def probe(data: bytes, max_pixels: int) -> ImageHeader | None:
    """Header-only look at the bytes through the one bomb guard (``imaging.open_lazily``).
    ``None`` when the bytes are not an image."""
    try:
        with open_lazily(data, max_pixels=max_pixels) as image:
            return ImageHeader(image.format, *image.size)
    except ImageTooLarge:
        raise bomb_error(*_declared_size(data), max_pixels) from None
    except UndecodableImage:
        return None


def _declared_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG IHDR, for the message when Pillow refused to open it at all."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 0, 0


def _fit(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def wants_compressed(info: ImageHeader | None, settings: Settings) -> bool:
    """A compressed copy is worth making only when the original is not a JPEG or is too large."""
    return (
        info is not None
        and settings.make_compressed
        and (info.format != "JPEG" or max(info.width, info.height) > settings.compressed_long_edge_px)
    )


def wants_thumbnail(info: ImageHeader | None, settings: Settings) -> bool:
    return info is not None and settings.make_thumbnail


def make_derivatives(
    data: bytes, info: ImageHeader, settings: Settings, *, compressed: bool = True, thumbnail: bool = True
) -> Derivatives:
    """Blocking. ``compressed``/``thumbnail`` narrow what the settings ask for (e.g. repair one)."""
    long_edge = settings.compressed_long_edge_px
    want_compressed = compressed and wants_compressed(info, settings)
    want_thumbnail = thumbnail and wants_thumbnail(info, settings)
    result = Derivatives()
    if not (want_compressed or want_thumbnail):
        return result
    largest_needed = long_edge if want_compressed else settings.thumbnail_px
    image: Image.Image = open_lazily(data, max_pixels=settings.max_image_pixels)
    try:
        if image.format == "JPEG":
            image.draft("RGB", _fit(image.size, largest_needed))
        image.load()
        upright(image)
        image = to_rgb(image)
        if want_compressed:
            image.thumbnail((long_edge, long_edge), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=settings.compressed_jpeg_quality, optimize=False)
            result.compressed, result.compressed_size = buffer.getvalue(), image.size
        if want_thumbnail:
            edge = settings.thumbnail_px
            # Box-reduce by the integer factor first, then resample the rest: a gallery thumbnail
            # does not need LANCZOS over a full 4K frame (3x cheaper, visually the same at 512 px).
            image.thumbnail((edge, edge), Image.Resampling.LANCZOS, reducing_gap=1.0)
            buffer = io.BytesIO()
            image.save(buffer, "WEBP", quality=THUMBNAIL_WEBP_QUALITY, method=THUMBNAIL_WEBP_METHOD)
            result.thumbnail, result.thumbnail_size = buffer.getvalue(), image.size
    finally:
        image.close()
    return result
