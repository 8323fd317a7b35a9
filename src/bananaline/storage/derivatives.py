"""The compressed copy and the thumbnail, streamed: no full-size raster is ever held.

PNG, JPEG, WebP, GIF and TIFF go through libvips (:func:`bananaline.imaging.derive`): the original
is decoded in strips and resized on the way (JPEG through DCT shrink-on-load) into the compressed
JPEG, and the WebP thumbnail is made from that JPEG with shrink-on-load, so a 4K PNG is decoded
once and adds tens of MB instead of the 160 MB Pillow needed. Other formats keep the Pillow path
(one decoded image, shrunk in place). Every function here is blocking: callers run it in a worker
thread.

Dimensions are read from the header before anything is decoded; an image larger than
``max_image_pixels`` is refused as ``invalid_image`` / ``decompression_bomb``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..config import Settings
from ..errors import ErrorKind, GenerationError
from ..imaging import (
    ImageTooLarge,
    UndecodableImage,
    derive,
    fit,
    format_mime,
    open_lazily,
    streams,
    to_rgb,
    upright,
)

#: Below this, Pillow's one decoded copy is small and its encoders are faster than libvips'
#: (1K PNG: ~38 ms vs ~73 ms for both derivatives); above it, streaming wins on memory and CPU.
STREAM_MIN_PIXELS = 4_000_000
THUMBNAIL_WEBP_QUALITY = 80
#: libwebp effort 0-6: 0 is a third cheaper than 2 for a few percent more bytes on a thumbnail.
THUMBNAIL_WEBP_METHOD = 0


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
    mime = format_mime(info.format)
    if streams(mime) and info.width * info.height > STREAM_MIN_PIXELS:
        assert mime is not None
        try:
            made_compressed, made_thumbnail = derive(
                data,
                mime,
                (info.width, info.height),
                compressed_long_edge=long_edge if want_compressed else None,
                thumbnail_long_edge=settings.thumbnail_px if want_thumbnail else None,
                jpeg_quality=settings.compressed_jpeg_quality,
                webp_quality=THUMBNAIL_WEBP_QUALITY,
                webp_effort=THUMBNAIL_WEBP_METHOD,
                max_pixels=settings.max_image_pixels,
            )
        except ImageTooLarge:
            raise bomb_error(info.width, info.height, settings.max_image_pixels) from None
        except UndecodableImage as exc:
            raise ValueError(str(exc)) from exc  # the store's "derivatives_failed" warning
        if made_compressed is not None:
            result.compressed = made_compressed.data
            result.compressed_size = (made_compressed.width, made_compressed.height)
        if made_thumbnail is not None:
            result.thumbnail = made_thumbnail.data
            result.thumbnail_size = (made_thumbnail.width, made_thumbnail.height)
        return result
    largest_needed = long_edge if want_compressed else settings.thumbnail_px
    image: Image.Image = open_lazily(data, max_pixels=settings.max_image_pixels)
    try:
        if image.format == "JPEG":
            image.draft("RGB", fit(image.size, largest_needed))
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
