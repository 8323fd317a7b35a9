"""Reference images: a local path, an http(s) URL or a ``data:`` URI in, checked image bytes out.

Every source ends up as a :class:`ReferenceImage` whose ``mime`` comes from magic numbers (a JPEG
named ``x.png`` is ``image/jpeg``) and whose pixels were decoded once to prove they are an image.
Decompression bombs are refused from the header, before decoding. A reference is re-encoded only
when it must be: its long edge exceeds ``settings.reference_long_edge_px``, its format is one the
upstream does not take inline (GIF, BMP, TIFF, AVIF), or all references together would exceed
``settings.inline_request_limit_bytes`` as base64 (then the largest ones shrink first). Anything
left unchanged keeps its exact original bytes.

URLs go through the SSRF guard (:func:`guarded_fetch`) and are fetched concurrently.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import httpx
import pybase64  # SIMD base64, as in the answer decoders: a 20 MB data URI in ms, not tens of ms

from .imaging import (
    UPSTREAM_MIMES,
    ImageTooLarge,
    UndecodableImage,
    decode,
    open_lazily,
    reencode,
    run_cpu,
    sniff_mime,
)
from .ssrf import Resolver, guarded_fetch, redact_url, reference_error

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["ReferenceImage", "Resolver", "guarded_fetch", "inline_size", "load_references", "sniff_mime"]

#: Room left in the inline budget for the JSON envelope and the prompt.
ENVELOPE_RESERVE_BYTES = 64 * 1024
#: References are never shrunk below this long edge to fit the inline budget.
MIN_LONG_EDGE_PX = 256
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_OPAQUE_MIMES = frozenset({"image/heic", "image/heif"})


@dataclass(frozen=True)
class ReferenceImage:
    """One reference ready to send. ``source`` is display-safe: no query string, userinfo or payload.

    ``width``/``height`` are 0 for HEIC/HEIF that this Pillow cannot decode; those are passed through.
    """

    data: bytes = field(repr=False)
    mime: str
    width: int
    height: int
    source: str

    def __repr__(self) -> str:
        return (
            f"ReferenceImage({self.mime}, {self.width}x{self.height}, {len(self.data)} bytes, "
            f"source={self.source!r})"
        )


def inline_size(byte_count: int) -> int:
    """Size of ``byte_count`` bytes once base64-encoded into a request body."""
    return 4 * ((byte_count + 2) // 3)


@dataclass
class _Loaded:
    original: bytes
    label: str
    data: bytes = b""
    mime: str = ""
    width: int = 0
    height: int = 0

    @property
    def long_edge(self) -> int:
        return max(self.width, self.height)


def _label(source: str) -> str:
    if source[:5].lower() == "data:":
        header = source[5:65].split(",", 1)[0]  # never slice the payload: it may be megabytes
        return f"data:{header},…"
    if _URL_LIKE.match(source):
        return redact_url(source)
    return source if len(source) <= 200 else source[:197] + "..."


#: Data URIs longer than this (in characters) are decoded in a worker thread, off the event loop.
DATA_URI_INLINE_DECODE_CHARS = 64 * 1024
#: Percent-decoding works through the payload this many characters at a time, so the temporary
#: objects it makes stay small whatever the URI's size.
_DATA_URI_CHUNK_CHARS = 16 * 1024
_BASE64_WHITESPACE = b" \t\n\r\f\v"


def _decode_data_uri(source: str, label: str, limit: int) -> bytes:
    """The bytes of a ``data:`` URI, never more than ``limit`` of them.

    Bounded before and while decoding: a payload whose smallest possible decoded size (every
    ``%XY`` escape counted as one byte, every literal whitespace dropped for base64) exceeds
    ``limit`` is refused without decoding; otherwise the payload is percent-decoded in chunks into
    one buffer that is abandoned as soon as it outgrows the limit (``inline_size(limit)`` for base64
    text). Peak memory is about the decoded size plus one chunk, never a multiple of the URI.
    """
    comma = source.find(",", 5)
    if comma == -1:
        raise reference_error("not_an_image", label, "data URI has no comma")
    is_base64 = source[5:comma].lower().endswith(";base64")
    escapes = source.count("%", comma + 1)
    payload_chars = len(source) - comma - 1
    if is_base64:
        literal_whitespace = sum(source.count(char, comma + 1) for char in " \t\n\r\f\v")
        least_text = max(0, payload_chars - 3 * escapes - literal_whitespace)
        least_bytes = least_text // 4 * 3
    else:
        least_bytes = payload_chars - 2 * escapes
    if least_bytes > limit:
        raise reference_error("too_large", label, f"data URI holds more than {limit} bytes")
    text_limit = inline_size(limit) + 3 if is_base64 else limit
    decoded = _unquote_bounded(source, comma + 1, text_limit, strip_whitespace=is_base64)
    if decoded is None:
        raise reference_error("too_large", label, f"data URI holds more than {limit} bytes")
    if not is_base64:
        return bytes(decoded)
    decoded += b"=" * (-len(decoded) % 4)
    altchars = b"-_" if (b"-" in decoded or b"_" in decoded) else None
    try:
        return pybase64.b64decode(decoded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise reference_error("not_an_image", label, f"data URI payload is not valid base64 ({exc})") from exc


def _unquote_bounded(source: str, start: int, limit: int, *, strip_whitespace: bool) -> bytearray | None:
    """Percent-decode ``source[start:]`` chunk by chunk; ``None`` once the output exceeds ``limit``."""
    decoded = bytearray()
    position, end = start, len(source)
    while position < end:
        stop = min(position + _DATA_URI_CHUNK_CHARS, end)
        if stop < end:  # never cut an escape in two
            split_escape = source.rfind("%", stop - 2, stop)
            if split_escape != -1:
                stop = split_escape
        piece = unquote_to_bytes(source[position:stop])
        if strip_whitespace:
            piece = piece.translate(None, _BASE64_WHITESPACE)
        decoded += piece
        if len(decoded) > limit:
            return None
        position = stop
    return decoded


def _read_local(source: str, label: str, limit: int) -> bytes:
    """Read a regular file, at most ``limit`` bytes; FIFOs, devices and directories are refused
    (opened non-blocking, then checked with ``fstat`` on the same descriptor)."""
    path = Path(source).expanduser()
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise reference_error("not_found", label, "no such file") from exc
    except IsADirectoryError as exc:
        raise reference_error("not_an_image", label, "is a directory") from exc
    except OSError as exc:
        raise reference_error("not_found", label, f"cannot be opened ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise reference_error("not_an_image", label, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise reference_error("not_an_image", label, "is not a regular file")
        if info.st_size > limit:
            raise reference_error("too_large", label, f"{info.st_size} bytes, limit is {limit}")
    except BaseException:
        os.close(fd)
        raise
    chunks = bytearray()
    with os.fdopen(fd, "rb", buffering=0) as handle:
        while len(chunks) <= limit:
            chunk = handle.read(min(1 << 20, limit + 1 - len(chunks)))
            if not chunk:
                break
            chunks += chunk
    if len(chunks) > limit:
        raise reference_error("too_large", label, f"more than {limit} bytes")
    return bytes(chunks)


async def _known(reference_bytes: bytes) -> bytes:
    return reference_bytes


async def _load_raw(
    source: str,
    *,
    settings: Settings,
    client: httpx.AsyncClient | None,
    resolver: Resolver | None,
    allow_paths: bool,
) -> bytes:
    label = _label(source)
    limit = settings.reference_max_download_bytes
    if source[:5].lower() == "data:":
        if len(source) <= DATA_URI_INLINE_DECODE_CHARS:
            return _decode_data_uri(source, label, limit)
        return await run_cpu(_decode_data_uri, source, label, limit)
    if _URL_LIKE.match(source):
        return await guarded_fetch(source, settings=settings, client=client, resolver=resolver)
    if not allow_paths:
        raise reference_error("blocked_address", label, "local paths are not accepted here")
    return await asyncio.to_thread(_read_local, source, label, limit)


def _shrink(item: _Loaded, long_edge_px: int, settings: Settings) -> None:
    try:
        encoded = reencode(item.original, long_edge_px=long_edge_px, max_pixels=settings.max_image_pixels)
    except ImageTooLarge as exc:
        raise reference_error("too_large", item.label, str(exc)) from exc
    except UndecodableImage as exc:
        raise reference_error("not_an_image", item.label, str(exc)) from exc
    item.data, item.mime, item.width, item.height = encoded.data, encoded.mime, encoded.width, encoded.height


def _prepare(item: _Loaded, settings: Settings) -> None:
    """Sniff, refuse bombs, prove the bytes decode, and shrink/convert when the rules say so."""
    mime = sniff_mime(item.original)
    if mime is None:
        looks = " (looks like HTML/text)" if item.original.lstrip()[:1] in (b"<", b"{") else ""
        raise reference_error("not_an_image", item.label, f"not a known image format{looks}")
    try:
        with open_lazily(item.original, max_pixels=settings.max_image_pixels) as image:
            width, height = image.size
            must_reencode = max(width, height) > settings.reference_long_edge_px or mime not in UPSTREAM_MIMES
            if not must_reencode:
                decode(image)
    except ImageTooLarge as exc:
        raise reference_error("too_large", item.label, str(exc)) from exc
    except UndecodableImage as exc:
        if mime in _OPAQUE_MIMES:  # the upstream reads HEIC/HEIF even when this Pillow cannot
            item.data, item.mime = item.original, mime
            return
        raise reference_error("not_an_image", item.label, str(exc)) from exc
    if must_reencode:
        _shrink(item, min(settings.reference_long_edge_px, max(width, height)), settings)
    else:
        item.data, item.mime, item.width, item.height = item.original, mime, width, height


def _fit_inline(items: list[_Loaded], settings: Settings) -> None:
    """Shrink the largest references until all of them fit the inline request budget together."""
    budget = settings.inline_request_limit_bytes - ENVELOPE_RESERVE_BYTES
    for _round in range(64):
        total = sum(inline_size(len(item.data)) for item in items)
        if total <= budget:
            return
        shrinkable = [item for item in items if item.long_edge > MIN_LONG_EDGE_PX]
        if not shrinkable:
            break
        biggest = max(shrinkable, key=lambda item: len(item.data))
        current = inline_size(len(biggest.data))
        target = max(current - (total - budget), current // 10)
        factor = min(0.9, max(0.3, (target / current) ** 0.5 * 0.95))
        _shrink(biggest, max(MIN_LONG_EDGE_PX, int(biggest.long_edge * factor)), settings)
    total = sum(inline_size(len(item.data)) for item in items)
    where = ", ".join(item.label for item in items)[:200]
    raise reference_error(
        "too_large", where, f"references need {total} bytes inline even when shrunk; limit is {budget}"
    )


def _prepare_all(items: list[_Loaded], settings: Settings) -> list[ReferenceImage]:
    for item in items:
        _prepare(item, settings)
    _fit_inline(items, settings)
    return [ReferenceImage(item.data, item.mime, item.width, item.height, item.label) for item in items]


async def load_references(
    sources: Sequence[str],
    *,
    settings: Settings,
    client: httpx.AsyncClient | None = None,
    resolver: Resolver | None = None,
    allow_paths: bool = True,
    known: Mapping[str, bytes] | None = None,
) -> list[ReferenceImage]:
    """Load every reference, keeping their order. URLs are fetched concurrently through the SSRF guard.

    ``allow_paths=False`` refuses local paths (``blocked_address``): entry points that take sources
    from remote callers must not read the server's own files. A failure is raised as
    ``reference_error`` with detail ``not_found``, ``not_an_image``, ``too_large``, ``blocked_address``
    or ``download_failed``: the first to happen (source order breaks ties), and the other downloads
    are cancelled rather than awaited. ``known``: bytes the caller already holds for some sources
    (not fetched; checked like any other).
    """
    if not sources:
        return []
    texts = [os.fspath(source) for source in sources]
    own_client = client is None and any(_URL_LIKE.match(text) for text in texts)
    http = httpx.AsyncClient(follow_redirects=False, trust_env=False) if own_client else client
    tasks = [
        asyncio.create_task(
            _known(known[text])
            if known and text in known
            else _load_raw(text, settings=settings, client=http, resolver=resolver, allow_paths=allow_paths)
        )
        for text in texts
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if own_client and http is not None:
            await http.aclose()
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    items = [
        _Loaded(original=task.result(), label=_label(text)) for task, text in zip(tasks, texts, strict=True)
    ]
    return await run_cpu(_prepare_all, items, settings)  # decode/re-encode: the shared CPU pool
