"""Image bytes without trusting anyone's word for them: magic-number sniffing, a lazy open that
refuses decompression bombs from the header alone, a guarded decode, and a shrinking re-encoder.

Errors here are plain exceptions (:class:`ImageTooLarge`, :class:`UndecodableImage`); the
callers translate them into their own :class:`~bananaline.errors.GenerationError` kinds, because a
bad reference (``reference_error``) and a bad output (``invalid_image``) are different failures.

Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left alone: our own limit (``max_pixels``) is checked
right after the header is read, and Pillow's own bomb error/warning is caught and reported the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

#: HEIF-family brands (ISO-BMFF ``ftyp``) and the MIME type each implies.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif", b"mif2"})
_BRAND_MIMES = ((_AVIF_BRANDS, "image/avif"), (_HEIC_BRANDS, "image/heic"), (_HEIF_BRANDS, "image/heif"))
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

#: What the Gemini API accepts inline; other formats are re-encoded before sending.
UPSTREAM_MIMES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})

_PILLOW_MIMES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
}


class ImageTooLarge(Exception):
    """The header announces more pixels than allowed: refused before any pixel is decoded."""


class UndecodableImage(Exception):
    """The bytes are not an image Pillow can read (unknown, truncated or corrupt)."""


def _ftyp_mime(data: bytes) -> str | None:
    """A specific brand (AVIF, HEIC) wins over the generic HEIF ones (``mif1``), major or compatible."""
    box_size = int.from_bytes(data[0:4], "big")
    end = min(max(box_size, 16), len(data), 4096)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    for group, mime in _BRAND_MIMES:
        if data[8:12] in group and group is not _HEIF_BRANDS:
            return mime
    for group, mime in _BRAND_MIMES:
        if brands & group:
            return mime
    return None


def sniff_mime(data: bytes) -> str | None:
    """The real image type from magic numbers only; ``None`` when the bytes are no known image.

    File names and declared types lie (a ``.png`` that is a JPEG, an ``image/png`` that is HTML);
    the first bytes do not.
    """
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[0:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[0:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _ftyp_mime(bytes(data[:4096]))
    if head[0:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image/bmp"
    if head[0:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    return None


def pillow_mime(image: Image.Image) -> str | None:
    return _PILLOW_MIMES.get(image.format or "")


def open_lazily(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open without decoding pixels and refuse anything over ``max_pixels`` from the header alone.

    The caller owns the returned image (use it as a context manager).
    """
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image header announces a decompression bomb ({exc})") from exc
    except Exception as exc:  # Pillow raises many types for hostile bytes
        raise UndecodableImage(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise UndecodableImage(f"image header announces an empty size {width}x{height}")
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the limit of "
            f"{max_pixels / 1e6:.1f} Mpx (refused before decoding)"
        )
    return image


def decode(image: Image.Image) -> None:
    """Decode the first frame in place; corrupt or truncated data becomes :class:`UndecodableImage`."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:
        raise UndecodableImage(f"image data does not decode ({type(exc).__name__}: {exc})") from exc


def verify(data: bytes, *, max_pixels: int) -> None:
    """Pillow's structural check (chunk CRCs for PNG) on a fresh open, as ``verify`` requires."""
    with open_lazily(data, max_pixels=max_pixels) as image:
        try:
            image.verify()
        except Exception as exc:
            raise UndecodableImage(f"image fails verification ({type(exc).__name__}: {exc})") from exc


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


@dataclass(frozen=True)
class Encoded:
    """A re-encoded image: PNG when it has transparency, JPEG q90 otherwise."""

    data: bytes
    mime: str
    width: int
    height: int


_WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """The one RGB flatten: transparency onto white, 16/32-bit greyscale scaled to 8 bits.
    Closes ``image`` when it made a new one."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        converted = image.convert("RGBA")
        image.close()
        image = converted
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        flat = Image.new("RGB", image.size, _WHITE)
        flat.paste(image, mask=image.getchannel("A"))
    elif image.mode.startswith("I"):
        flat = ImageOps.grayscale(image).convert("RGB")
    else:
        flat = image.convert("RGB")
    image.close()
    return flat


def upright(image: Image.Image) -> None:
    """Apply the EXIF orientation in place (the metadata that carried it is dropped on re-encode);
    broken EXIF must not sink a usable image."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - Pillow raises many types for hostile EXIF
        return


def reencode(data: bytes, *, long_edge_px: int, max_pixels: int, jpeg_quality: int = 90) -> Encoded:
    """Decode ``data``, shrink it so its long edge is at most ``long_edge_px``, and encode it again.

    JPEGs are decoded with ``draft`` (DCT scaling) and others with ``reduce`` inside ``thumbnail``, so a
    large source never costs more than one full-size decoded copy. EXIF orientation is applied, since
    the metadata that carried it is dropped.
    """
    with open_lazily(data, max_pixels=max_pixels) as image:
        box = (long_edge_px, long_edge_px)
        if image.format == "JPEG":
            image.draft("RGB", box)
        decode(image)
        image.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=3.0)
        upright(image)
        work: Image.Image = image
        buffer = io.BytesIO()
        if has_alpha(work):
            work = work.convert("LA" if work.mode in ("L", "LA", "La") else "RGBA")
            work.save(buffer, format="PNG", optimize=False, compress_level=6)
            mime = "image/png"
        else:
            work = to_rgb(work)
            work.save(buffer, format="JPEG", quality=jpeg_quality, optimize=True)
            mime = "image/jpeg"
        return Encoded(buffer.getvalue(), mime, work.width, work.height)
