"""Image bytes without trusting anyone's word for them: magic-number sniffing, a lazy open that
refuses decompression bombs from the header alone, a guarded decode, and a shrinking re-encoder.

Errors here are plain exceptions (:class:`ImageTooLarge`, :class:`UndecodableImage`); the
callers translate them into their own :class:`~bananaline.errors.GenerationError` kinds, because a
bad reference (``reference_error``) and a bad output (``invalid_image``) are different failures.

Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left alone: our own limit (``max_pixels``) is checked
right after the header is read, and Pillow's own bomb error/warning is caught and reported the same way.

Generated images (output checks, compressed copy, thumbnail) go through libvips (``pyvips`` with the
``pyvips-binary`` wheel; no system package): PNG/JPEG/WebP/GIF/TIFF are decoded sequentially in
strips and reduced on the way, so a 4K check never holds the 51 MB raster Pillow would (:func:`scan`,
:func:`derive`). Pillow stays for references (small, often exotic formats), for formats outside that
list, and for the header-only bomb guard (:func:`open_lazily`).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

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


_P = ParamSpec("_P")
_T = TypeVar("_T")
_cpu_pool: ThreadPoolExecutor | None = None
_cpu_pool_lock = threading.Lock()


async def run_cpu(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run blocking image work (decode, checks, derivatives, hashing) off the event loop, in the one
    process-wide pool sized to the cores: every client and store shares it, so a burst of answers
    queues here instead of starving the loop or multiplying decoded pixels held at once."""
    global _cpu_pool
    if _cpu_pool is None:
        with _cpu_pool_lock:
            if _cpu_pool is None:
                workers = os.cpu_count() or 1
                _cpu_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bananaline-cpu")
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_cpu_pool, call)


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


def format_mime(pillow_format: str | None) -> str | None:
    """The MIME type of a Pillow format name (``"PNG"`` -> ``"image/png"``)."""
    return _PILLOW_MIMES.get(pillow_format or "")


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


# ---- streaming path (libvips) ---------------------------------------------------------------

#: libvips loaders by sniffed MIME type: the loader is chosen from our own sniffing, never by
#: libvips' (which would also accept SVG, PDF or matrix files).
_VIPS_LOADERS = {
    "image/png": "pngload_source",
    "image/jpeg": "jpegload_source",
    "image/webp": "webpload_source",
    "image/gif": "gifload_source",
    "image/tiff": "tiffload_source",
}
#: Side of the reduced copy the flatness test and the preview are judged on.
PROBE_PX = 256
PREVIEW_PX = 160
_vips_module: Any = None
_vips_lock = threading.Lock()


def _vips() -> Any:
    """pyvips, configured once: no operation cache (it would keep our buffers alive) and one
    libvips worker thread per call (the caller's pool is already sized to the cores)."""
    global _vips_module
    if _vips_module is None:
        with _vips_lock:
            if _vips_module is None:
                # libvips reports through GLib's log, which pyvips forwards to Python logging from
                # libvips' own threads; with a DEBUG handler installed (pytest's caplog, a verbose
                # service) two such threads deadlocked. Failures reach us as exceptions anyway.
                vips_log = logging.getLogger("pyvips")
                vips_log.setLevel(logging.CRITICAL + 1)
                vips_log.propagate = False
                vips_log.disabled = True
                import pyvips

                pyvips.cache_set_max(0)
                pyvips.cache_set_max_mem(0)
                pyvips.concurrency_set(1)
                _vips_module = pyvips
    return _vips_module


def preload() -> None:
    """Load libvips now (it is otherwise loaded on the first image): for servers and benchmarks
    that want its one-off cost (~10 MB of shared libraries) at start-up, not on a request."""
    _vips()


def streams(mime: str | None) -> bool:
    """Whether ``mime`` takes the libvips path (else the Pillow one)."""
    return mime in _VIPS_LOADERS


@dataclass(frozen=True)
class Scan:
    """What one sequential decode of a generated image proved and produced."""

    width: int
    height: int
    blank: bool
    preview: bytes | None


def _vips_open(data: bytes, mime: str, *, max_pixels: int, **load_options: Any) -> Any:
    """Header only, then the bomb check: no pixel is decoded before ``max_pixels`` is enforced.

    ``fail_on="truncated"`` turns truncated or corrupt pixel data into an error when the pixels are
    read (libvips would otherwise pad with grey); the bytes are not copied (``Source.new_from_memory``).
    """
    pyvips = _vips()
    try:
        source = pyvips.Source.new_from_memory(data)
        loader = getattr(pyvips.Image, _VIPS_LOADERS[mime])
        image = loader(source, access="sequential", fail_on="truncated", **load_options)
    except pyvips.Error as exc:
        raise UndecodableImage(f"not a readable image ({_vips_message(exc)})") from exc
    width, height = int(image.width), int(image.height)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the limit of "
            f"{max_pixels / 1e6:.1f} Mpx (refused before decoding)"
        )
    return image


def _vips_message(exc: Exception) -> str:
    text = str(getattr(exc, "detail", "") or exc).strip().replace("\n", "; ")
    return text[:300]


def _to_srgb8(image: Any) -> Any:
    """8-bit sRGB (or 8-bit grey), alpha kept: 16-bit, CMYK and Lab images brought to what the
    flatness tolerance and the encoders expect."""
    interpretation = str(image.interpretation)
    if interpretation in ("srgb", "b-w") and str(image.format) == "uchar":
        return image
    target = "b-w" if interpretation in ("b-w", "grey16") else "srgb"
    try:
        image = image.colourspace(target)
    except Exception:  # noqa: BLE001 - odd interpretations: scale the values instead
        if str(image.format) == "ushort":
            image = image / 257
    return image.cast("uchar") if str(image.format) != "uchar" else image


def _is_flat_vips(small: Any, tolerance: int) -> bool:
    """One flat colour: every band's spread within ``tolerance``; fully transparent counts too."""
    bands = int(small.bands)
    has_alpha = bool(small.hasalpha())
    if has_alpha and small.extract_band(bands - 1).max() == 0:
        return True
    colour = small.extract_band(0, n=bands - 1) if has_alpha else small
    stats = colour.stats()  # row 0: all bands; rows 1..n: per band (min, max, ...)
    return all(stats(1, row)[0] - stats(0, row)[0] <= tolerance for row in range(1, int(colour.bands) + 1))


def _flatten_rgb(image: Any) -> Any:
    """The one flatten for outputs: transparency onto white, then 3-band 8-bit sRGB."""
    image = _to_srgb8(image)
    if image.hasalpha():
        image = image.flatten(background=[255] * (int(image.bands) - 1))
    if int(image.bands) < 3:
        image = image.colourspace("srgb")
    return image


def scan(data: bytes, mime: str, *, max_pixels: int, tolerance: int, preview: bool = True) -> Scan:
    """Decode every pixel once, in strips, into a ≤ 256 px box-averaged copy: that proves the image
    decodes (truncated or corrupt data raises :class:`UndecodableImage`), judges flatness, and
    gives the 160 px JPEG preview. The full raster is never held: a 4K PNG adds about 12 MB.
    JPEGs are decoded at reduced DCT scale (every entropy-coded byte is still read)."""
    pyvips = _vips()
    probe = _vips_open(data, mime, max_pixels=max_pixels)
    width, height = int(probe.width), int(probe.height)
    options: dict[str, Any] = {}
    longest = max(width, height)
    if mime == "image/jpeg":
        options["shrink"] = max((s for s in (1, 2, 4, 8) if longest // s >= PROBE_PX), default=1)
    elif mime == "image/webp":
        options["scale"] = min(1.0, PROBE_PX * 2 / longest)
    image = _vips_open(data, mime, max_pixels=max_pixels, **options) if options else probe
    try:
        factor = max(1, -(-max(int(image.width), int(image.height)) // PROBE_PX))
        small = image.shrink(factor, factor) if factor > 1 else image
        small = _to_srgb8(small).copy_memory()
        blank = _is_flat_vips(small, tolerance)
        jpeg = None
        if preview:
            jpeg = _flatten_rgb(small.thumbnail_image(PREVIEW_PX)).jpegsave_buffer(Q=70, strip=True)
    except pyvips.Error as exc:
        raise UndecodableImage(f"image data does not decode ({_vips_message(exc)})") from exc
    return Scan(width, height, blank, jpeg)


@dataclass(frozen=True)
class Derived:
    """An encoded derivative and its pixel size."""

    data: bytes
    width: int
    height: int


def fit(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """``size`` shrunk (never enlarged) so its long edge is at most ``long_edge``."""
    width, height = size
    scale = min(1.0, long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _vips_thumbnail(data: bytes, mime: str, size: tuple[int, int], *, max_pixels: int) -> Any:
    """Shrink-on-load (JPEG DCT scaling, WebP scale) and Lanczos to exactly ``size``, EXIF
    orientation applied, transparency flattened onto white, streamed."""
    pyvips = _vips()
    header = _vips_open(data, mime, max_pixels=max_pixels)
    width, height = size
    # libvips orients before resizing: give it the box in the upright orientation.
    if int(header.get("orientation") if header.get_typeof("orientation") else 1) in (5, 6, 7, 8):
        width, height = height, width
    source = pyvips.Source.new_from_memory(data)
    image = pyvips.Image.thumbnail_source(
        source, width, height=height, size="force", option_string="fail_on=truncated"
    )
    return _flatten_rgb(image)


def derive(
    data: bytes,
    mime: str,
    size: tuple[int, int],
    *,
    compressed_long_edge: int | None,
    thumbnail_long_edge: int | None,
    jpeg_quality: int,
    webp_quality: int,
    webp_effort: int,
    max_pixels: int,
) -> tuple[Derived | None, Derived | None]:
    """The compressed JPEG and the WebP thumbnail, each streamed from the bytes (never a full
    raster). The thumbnail is made from the compressed JPEG when there is one: JPEG shrink-on-load
    makes that far cheaper than decoding a 4K PNG a second time."""
    pyvips = _vips()
    compressed = thumbnail = None
    try:
        if compressed_long_edge is not None:
            target = fit(size, compressed_long_edge)
            image = _vips_thumbnail(data, mime, target, max_pixels=max_pixels)
            encoded = image.jpegsave_buffer(
                Q=jpeg_quality, subsample_mode="on", optimize_coding=False, strip=True
            )
            compressed = Derived(encoded, int(image.width), int(image.height))
        if thumbnail_long_edge is not None:
            base, base_mime = (compressed.data, "image/jpeg") if compressed else (data, mime)
            base_size = (compressed.width, compressed.height) if compressed else size
            target = fit(base_size, thumbnail_long_edge)
            image = _vips_thumbnail(base, base_mime, target, max_pixels=max_pixels)
            encoded = image.webpsave_buffer(Q=webp_quality, effort=webp_effort, strip=True)
            thumbnail = Derived(encoded, int(image.width), int(image.height))
    except pyvips.Error as exc:
        raise UndecodableImage(f"image data does not decode ({_vips_message(exc)})") from exc
    return compressed, thumbnail
