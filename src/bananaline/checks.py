"""Output checks: is what came back the image that was ordered?

:func:`inspect_image` turns delivered bytes into a :class:`GeneratedImage` with the *real* MIME type
(magic numbers) and size, or raises ``invalid_image``. :func:`output_warnings` then compares it with
the order and returns codes, always in this order:

* ``mime_mismatch``   the declared type differs from the real one (``image/jpg`` counts as ``image/jpeg``)
* ``aspect_mismatch`` width/height is off the requested ratio by more than 2 %
* ``size_mismatch``   the ratio is right but an edge is off the catalog's pixel size by more than 3 %
                      (a 4K order delivered at 1K)
* ``blank_image``     one flat colour (all black, all white, fully transparent)

:func:`check_output` makes any warning fatal (``output_check``) when the caller asked for strictness.
"""

from __future__ import annotations

import io

from PIL import Image

from .errors import ErrorKind, GenerationError
from .imaging import (
    PREVIEW_PX,
    PROBE_PX,
    ImageTooLarge,
    UndecodableImage,
    decode,
    format_mime,
    open_lazily,
    scan,
    sniff_mime,
    streams,
    verify,
)
from .types import GeneratedImage

ASPECT_TOLERANCE = 0.02
SIZE_TOLERANCE = 0.03
#: Per-band spread (0-255) still counted as one colour: encoder noise on a flat image.
BLANK_TOLERANCE = 6
#: is_blank has no caller's limit: the one of the default settings (8192 x 8192).
_BLANK_MAX_PIXELS = 8192 * 8192

_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


def normalize_mime(mime: str | None) -> str | None:
    if not mime:
        return None
    base = mime.split(";", 1)[0].strip().lower()
    return _MIME_ALIASES.get(base, base)


def _invalid(detail: str, reason: str) -> GenerationError:
    return GenerationError(
        ErrorKind.INVALID_IMAGE,
        detail=detail,
        message=f"The returned bytes are not a valid image: {reason}",
        message_zh=f"返回的数据不是有效图片：{reason}",
    )


def inspect_image(data: bytes, declared_mime: str | None, *, max_pixels: int) -> GeneratedImage:
    """Real MIME type and size of delivered bytes, after proving they decode.

    Size comes from the header; anything over ``max_pixels`` is refused before decoding
    (detail ``too_large``). Bytes that are no image, or a truncated/corrupt one, raise
    ``invalid_image`` with detail ``empty``, ``unknown_format`` or ``undecodable``.

    PNG, JPEG, WebP, GIF and TIFF are decoded once, in strips, by libvips (:func:`imaging.scan`):
    the same pass gives the flatness verdict and the 160 px preview, and a 4K image never exists
    as a full raster. Other formats take the Pillow path.
    """
    if not data:
        raise _invalid("empty", "no bytes")
    mime = sniff_mime(data)
    try:
        if mime == "image/png":
            verify(data, max_pixels=max_pixels)  # chunk CRCs: cheap, and libvips does not check them all
        if streams(mime):
            assert mime is not None
            found = scan(data, mime, max_pixels=max_pixels, tolerance=BLANK_TOLERANCE)
            width, height, blank, preview = found.width, found.height, found.blank, found.preview
        else:
            mime, width, height, blank, preview = _inspect_with_pillow(data, mime, max_pixels)
    except ImageTooLarge as exc:
        raise _invalid("too_large", str(exc)) from exc
    except UndecodableImage as exc:
        raise _invalid("undecodable" if mime else "unknown_format", str(exc)) from exc
    if mime is None:
        raise _invalid("unknown_format", "the bytes are no known image format")
    generated = GeneratedImage.from_bytes(data, mime, width, height, declared_mime=declared_mime)
    generated.blank = blank
    generated.preview = preview
    return generated


def _inspect_with_pillow(
    data: bytes, mime: str | None, max_pixels: int
) -> tuple[str | None, int, int, bool, bytes | None]:
    """The Pillow path for formats libvips is not given (BMP, HEIF/AVIF): one decode, a ≤ 256 px copy."""
    verify(data, max_pixels=max_pixels)
    found, width, height, small = _decode_small(data, max_pixels)
    return mime or found, width, height, _is_flat(small), _preview_jpeg(small)


def _decode_small(data: bytes, max_pixels: int) -> tuple[str | None, int, int, Image.Image]:
    """Pillow: bomb guard from the header, one full decode, and the ≤ 256 px copy it is judged on."""
    with open_lazily(data, max_pixels=max_pixels) as image:
        decode(image)
        return format_mime(image.format), image.width, image.height, _small_copy(image)


def _ratio(text: str) -> float | None:
    try:
        left, right = text.replace("：", ":").split(":")
        value = float(left) / float(right)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _off(actual: float, wanted: float) -> float:
    return abs(actual / wanted - 1.0)


def is_blank(data: bytes, *, tolerance: int = BLANK_TOLERANCE) -> bool:
    """One flat colour? Judged on a ≤ 256 px box-averaged copy made while decoding (libvips, in
    strips), so a 4K image never costs a full raster; other formats take Pillow behind the same
    header-only bomb guard. ``False`` when the bytes do not decode or announce over 8192 x 8192 px."""
    mime = sniff_mime(data)
    try:
        if streams(mime):
            assert mime is not None
            return scan(data, mime, max_pixels=_BLANK_MAX_PIXELS, tolerance=tolerance, preview=False).blank
        return _is_flat(_decode_small(data, _BLANK_MAX_PIXELS)[3], tolerance=tolerance)
    except Exception:  # undecodable here means inspect_image was skipped; not this check's call
        return False


def _small_copy(image: Image.Image) -> Image.Image:
    """A ≤ 256 px copy of a decoded image by integer box reduction: about 1 ms for 1K, and the
    only extra pixels ever held besides the decoded image itself."""
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
    factor = max(1, -(-max(image.size) // PROBE_PX))
    return image.reduce(factor) if factor > 1 else image.copy()


def _preview_jpeg(small: Image.Image) -> bytes | None:
    """A 160 px JPEG for sheets, reports and galleries, made from the probe copy for free."""
    try:
        preview = small.convert("RGB") if small.mode != "RGB" else small.copy()
        preview.thumbnail((PREVIEW_PX, PREVIEW_PX), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        preview.save(buffer, format="JPEG", quality=70)
        return buffer.getvalue()
    except (OSError, ValueError):
        return None


def _is_flat(small: Image.Image, *, tolerance: int = BLANK_TOLERANCE) -> bool:
    """The flatness test on a :func:`_small_copy` (L, LA, RGB or RGBA, ≤ 256 px)."""
    extrema = small.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if small.mode in ("LA", "RGBA") and bands[-1][1] == 0:
        return True  # fully transparent, whatever the colour channels hold
    return all(high - low <= tolerance for low, high in bands)


def output_warnings(
    image: GeneratedImage, *, aspect_ratio: str | None, expected_pixels: tuple[int, int] | None
) -> list[str]:
    """Warning codes for ``image`` against the order, in the documented order."""
    codes: list[str] = []
    declared = normalize_mime(image.declared_mime)
    if declared is not None and declared != normalize_mime(image.mime):
        codes.append("mime_mismatch")
    aspect_ok = True
    if image.width > 0 and image.height > 0:
        actual = image.width / image.height
        wanted = [ratio for ratio in [_ratio(aspect_ratio)] if ratio] if aspect_ratio else []
        if wanted and expected_pixels and expected_pixels[1] > 0:
            # The catalog's own pixel size can sit a hair further off the nominal ratio (2.5 Flash 21:9).
            wanted.append(expected_pixels[0] / expected_pixels[1])
        if wanted and all(_off(actual, ratio) > ASPECT_TOLERANCE for ratio in wanted):
            codes.append("aspect_mismatch")
            aspect_ok = False
        if aspect_ok and expected_pixels and min(expected_pixels) > 0:
            want_w, want_h = expected_pixels
            if _off(image.width, want_w) > SIZE_TOLERANCE or _off(image.height, want_h) > SIZE_TOLERANCE:
                codes.append("size_mismatch")
    if image.blank if image.blank is not None else is_blank(image.data):
        codes.append("blank_image")
    return codes


def check_output(
    image: GeneratedImage,
    *,
    aspect_ratio: str | None,
    expected_pixels: tuple[int, int] | None,
    strict: bool,
) -> list[str]:
    """:func:`output_warnings`, but in ``strict`` mode any warning raises ``output_check``
    with the codes, comma-joined, as detail."""
    codes = output_warnings(image, aspect_ratio=aspect_ratio, expected_pixels=expected_pixels)
    if strict and codes:
        raise GenerationError(ErrorKind.OUTPUT_CHECK, detail=",".join(codes), request_sent=True)
    return codes
