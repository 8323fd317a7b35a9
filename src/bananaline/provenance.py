"""Saving an image with its provenance: the delivered bytes, never re-encoded, plus how it was made.

PNG files carry the metadata inside: ``iTXt`` chunks (UTF-8, so a Chinese prompt survives)
``bananaline:prompt``, ``bananaline:model`` and ``bananaline:params`` (JSON of everything else), and a
``Software`` ``tEXt`` chunk, spliced in just before ``IEND`` with correct CRCs; ``IDAT`` is untouched,
so the pixels are bit-for-bit the model's. Other formats get a JSON sidecar ``<file name>.json``.

Files are written atomically (a temp file in the same directory, then ``os.replace``) and named
``<UTC yyyymmdd-HHMMSS>-<sha256[:12]>.<ext>`` unless a stem is given; a given stem is hostile input
and is sanitised (:func:`sanitize_stem`). Saving twice under the same name replaces the file.
"""

from __future__ import annotations

import json
import re
import struct
import time
import unicodedata
import zlib
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .atomicfile import atomic_write
from .errors import ErrorKind, GenerationError
from .types import GeneratedImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEY_PREFIX = "bananaline:"
#: Pillow refuses a compressed text chunk over 1 MB; values are capped well below that.
MAX_TEXT_BYTES = 512 * 1024
_COMPRESS_OVER_BYTES = 2048
MAX_STEM_BYTES = 150
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in range(10)}
    | {f"lpt{i}" for i in range(10)}
)


def _software() -> str:
    try:
        return f"bananaline {importlib_metadata.version('bananaline')}"
    except importlib_metadata.PackageNotFoundError:
        return "bananaline"


def sanitize_stem(stem: str) -> str:
    """A file stem safe on every platform: letters, marks and digits of any script, ``-``, ``_`` and
    single dots; no separators, control or bidi characters, no leading dot, no Windows device
    names (``con``, ``nul``, ``com1``...), at most :data:`MAX_STEM_BYTES` UTF-8 bytes. May be empty."""
    text = unicodedata.normalize("NFKC", stem)
    text = "".join(ch if unicodedata.category(ch)[0] in "LMN" or ch in "-_." else "_" for ch in text)
    text = re.sub(r"\.{2,}", ".", re.sub(r"_{2,}", "_", text)).strip(" ._-")
    if text.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    encoded = text.encode("utf-8")[:MAX_STEM_BYTES]
    return encoded.decode("utf-8", errors="ignore").rstrip(" .")


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _cap(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= MAX_TEXT_BYTES:
        return raw
    kept = raw[: MAX_TEXT_BYTES - 16].decode("utf-8", errors="ignore")
    return (kept + " …[truncated]").encode("utf-8")


def _itxt(keyword: str, text: str) -> bytes:
    value = _cap(text)
    compressed = len(value) > _COMPRESS_OVER_BYTES
    if compressed:
        value = zlib.compress(value, 9)
    # keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
    body = keyword.encode("latin-1") + b"\0" + bytes([1 if compressed else 0, 0]) + b"\0\0" + value
    return _chunk(b"iTXt", body)


def _iend_offset(png: bytes) -> int | None:
    """Offset of the IEND chunk, walking chunk lengths; ``None`` if the structure is broken."""
    if not png.startswith(PNG_SIGNATURE):
        return None
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        if kind == b"IEND":
            return offset
        offset += 12 + length
    return None


def _text_chunks(metadata: dict[str, Any]) -> list[bytes]:
    params = dict(metadata)
    chunks = []
    for key in ("prompt", "model"):
        if isinstance(params.get(key), str):
            chunks.append(_itxt(KEY_PREFIX + key, params.pop(key)))
    if params:
        chunks.append(_itxt(KEY_PREFIX + "params", json.dumps(params, ensure_ascii=False, default=str)))
    chunks.append(_chunk(b"tEXt", b"Software\0" + _software().encode("latin-1", errors="replace")))
    return chunks


def png_with_metadata(png: bytes, metadata: dict[str, Any]) -> bytes | None:
    """``png`` with provenance chunks spliced in before IEND, or ``None`` if it is not a sound PNG."""
    iend = _iend_offset(png)
    if iend is None:
        return None
    return png[:iend] + b"".join(_text_chunks(metadata)) + png[iend:]


def _file_name(image: GeneratedImage, stem: str | None) -> str:
    clean = sanitize_stem(stem) if stem is not None else ""
    if not clean:
        clean = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + image.sha256[:12]
    return f"{clean}.{image.extension}"


def save_image(
    image: GeneratedImage, out_dir: Path, *, metadata: dict[str, Any], stem: str | None = None
) -> Path:
    """Write ``image`` into ``out_dir`` with its provenance and return the file's path.

    Raises ``storage`` when the directory or file cannot be written.
    """
    out_dir = Path(out_dir)
    path = out_dir / _file_name(image, stem)
    payload = png_with_metadata(image.data, metadata) if image.mime == "image/png" else None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if payload is not None:
            atomic_write(path, payload)
        else:
            atomic_write(path, image.data)
            sidecar = {
                "software": _software(),
                "image": {
                    "file": path.name,
                    "mime": image.mime,
                    "width": image.width,
                    "height": image.height,
                    "sha256": image.sha256,
                    "bytes": len(image.data),
                },
                "metadata": metadata,
            }
            text = json.dumps(sidecar, ensure_ascii=False, indent=2, default=str)
            atomic_write(path.with_name(path.name + ".json"), text.encode("utf-8"))
    except OSError as exc:
        raise GenerationError(
            ErrorKind.STORAGE, detail=f"cannot write {path.name}: {exc.strerror or exc}"
        ) from exc
    return path


def _read_text_chunks(png: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        body = png[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IEND":
            break
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            flag, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            out[key.decode("latin-1")] = (zlib.decompress(value) if flag else value).decode("utf-8")
    return out


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` dict :func:`save_image` embedded in a PNG, after a JSON round trip.
    Text chunks written by others (and ``Software``) are ignored; Pillow's ``Image.text`` shows all."""
    png = Path(path).read_bytes()
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError(f"{Path(path).name} is not a PNG file")
    chunks = _read_text_chunks(png)
    result: dict[str, Any] = {}
    for key in ("prompt", "model"):
        if KEY_PREFIX + key in chunks:
            result[key] = chunks[KEY_PREFIX + key]
    if KEY_PREFIX + "params" in chunks:
        result.update(json.loads(chunks[KEY_PREFIX + "params"]))
    return result
