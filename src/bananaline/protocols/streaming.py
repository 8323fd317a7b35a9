"""Stream helpers shared by both protocols: JSON events, base64 and data URIs without copies.

A 4K answer is 20-40 MB of JSON, nearly all of it one base64 string. These helpers keep the
cost of reading it close to "the string once, the image once":

* :func:`json_events` feeds the body to ijson's C parser in reads of :data:`READ_SIZE`.
  Small reads are slow: yajl re-scans a token that spans reads, so a 30 MB string read 64 KiB
  at a time costs ~2 s, read 2 MiB at a time ~0.2 s (measured on 22 MiB of image).
* :func:`decode_base64` decodes a span of a string in :data:`BASE64_CHUNK_CHARS` slices into a
  ``BytesIO`` whose buffer becomes the result without a final copy; the base64 text is never
  copied whole (``b64decode(str)`` would first encode the whole string to bytes). ijson keeps
  its own reference to the string until the next read, so decoding cannot free it early.

* With a :class:`~bananaline.protocols.blobs.BlobExtractor` (both decoders pass one), long
  base64 strings never reach ijson at all: they are decoded as they stream in and the parser
  sees a placeholder. A Gemini answer with a 22.5 MiB image then peaks at 1.07x the image
  (traced), against 2.41x when ijson built the 1.33x str first. The OpenAI decoder also has
  long data URI payloads inside text taken out (markdown ``![..](data:...)``, ``image_url``):
  1.07x, against 2.41x through ijson and :func:`decode_base64` (still the path for short ones).

JSON keys are normalised to camelCase, so ``inline_data`` and ``inlineData`` look the same to
the decoders. Parse failures become ``malformed_response``; httpx errors raised while reading
pass through untouched so the client can call them ``network`` or ``timeout``.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import ijson
import pybase64  # SIMD base64: 60x binascii on a 4K answer, and it is the hot loop

from ..errors import ErrorKind, GenerationError
from .blobs import BlobExtractor

READ_SIZE = 2 * 1024 * 1024
BASE64_CHUNK_CHARS = 1024 * 1024  # a multiple of 4: slices stay aligned to base64 quanta
#: Network chunks are gathered to this size before the blob filter sees them: loopback and busy
#: sockets hand over a few KiB at a time, and the filter costs a few microseconds per call.
FILTER_SIZE = 64 * 1024

Path = tuple[str, ...]


class AsyncByteReader:
    """The ``async read(n)`` file-like ijson wants, over an async iterator of byte chunks.

    Network chunks are coalesced up to ``n`` bytes per read (see :data:`READ_SIZE`). With
    ``blobs``, each chunk goes through that filter first; :attr:`bytes_read` still counts the
    network bytes.
    """

    def __init__(self, chunks: AsyncIterable[bytes], blobs: BlobExtractor | None = None) -> None:
        self._chunks: AsyncIterator[bytes] = aiter(chunks)
        self._blobs = blobs
        self._raw = bytearray()  # network chunks not yet filtered (see FILTER_SIZE)
        self._buffer = bytearray()
        self._exhausted = False
        self.bytes_read = 0

    async def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        while not self._exhausted and (size < 0 or len(self._buffer) < size):
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._exhausted = True
                if self._blobs is not None:
                    self._buffer += self._blobs.feed(bytes(self._raw)) + self._blobs.finish()
                    self._raw.clear()
                break
            self.bytes_read += len(chunk)
            if self._blobs is not None:
                chunk = self._filter(chunk)
                if not chunk:
                    continue
            if not self._buffer and len(chunk) == size:
                return chunk
            self._buffer += chunk
        if size < 0 or len(self._buffer) <= size:
            out = bytes(self._buffer)
            self._buffer.clear()
            return out
        with memoryview(self._buffer) as view:
            out = bytes(view[:size])
        del self._buffer[:size]
        return out

    def _filter(self, chunk: bytes) -> bytes:
        """Chunk through the blob filter, small network chunks gathered to FILTER_SIZE first."""
        assert self._blobs is not None
        if not self._raw and len(chunk) >= FILTER_SIZE:
            return self._blobs.feed(chunk)
        self._raw += chunk
        if len(self._raw) < FILTER_SIZE:
            return b""
        gathered = bytes(self._raw)
        self._raw.clear()
        return self._blobs.feed(gathered)


def malformed(detail: str) -> GenerationError:
    return GenerationError(ErrorKind.MALFORMED_RESPONSE, detail=detail)


@lru_cache(maxsize=4096)
def camel_key(key: str) -> str:
    """``inline_data`` -> ``inlineData``; camelCase keys are returned unchanged."""
    if "_" not in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


@lru_cache(maxsize=2048)
def _path(prefix: str) -> Path:
    if not prefix:
        return ()
    return tuple(camel_key(part) for part in prefix.split("."))


async def json_events(
    chunks: AsyncIterable[bytes], blobs: BlobExtractor | None = None
) -> AsyncGenerator[tuple[Path, str, Any], None]:
    """Yield ``(path, event, value)`` for a JSON body; ``path`` uses camelCase keys, ``item`` for
    array elements. Raises ``malformed_response`` for anything that is not one JSON value.

    With ``blobs``, long base64 strings arrive as placeholders whose bytes ``blobs`` holds."""
    reader = AsyncByteReader(chunks, blobs)
    saw_event = False
    try:
        async for prefix, event, value in ijson.parse_async(reader, buf_size=READ_SIZE, use_float=True):
            saw_event = True
            yield _path(prefix), event, value
    except ijson.IncompleteJSONError as exc:
        if not saw_event and reader.bytes_read == 0:
            raise malformed("empty body") from exc
        reason = "truncated JSON" if "premature EOF" in str(exc) else "not JSON"
        raise malformed(f"{reason} after {reader.bytes_read} bytes") from exc
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise malformed(f"not JSON after {reader.bytes_read} bytes") from exc


_WHITESPACE = re.compile(r"[\s]+")
_URLSAFE = str.maketrans("-_", "+/")


def decode_base64(text: str, start: int = 0, end: int | None = None) -> bytes:
    """Decode ``text[start:end]`` (standard or URL-safe alphabet, padding optional, whitespace
    ignored) without copying the span whole. Raises ``ValueError`` for invalid base64."""
    end = len(text) if end is None else end
    out = io.BytesIO()
    capacity = (max(end - start, 0) // 4 + 1) * 3
    out.seek(capacity - 1)
    out.write(b"\0")  # reserve the buffer once, exactly: no growth by 1/8 steps while filling
    out.seek(0)
    carry = ""
    pos = start
    while pos < end:
        stop = min(pos + BASE64_CHUNK_CHARS, end)
        piece = text[pos:stop]
        pos = stop
        if any(ch in piece for ch in " \n\r\t"):
            piece = _WHITESPACE.sub("", piece)
        if "-" in piece or "_" in piece:
            piece = piece.translate(_URLSAFE)
        if carry:
            piece, carry = carry + piece, ""
        usable = len(piece) - len(piece) % 4
        if usable < len(piece):
            piece, carry = piece[:usable], piece[usable:]
        if piece:
            out.write(pybase64.b64decode(piece, validate=True))
        del piece
    if carry:
        if len(carry) == 1:
            raise ValueError("base64 length is 1 more than a multiple of 4")
        out.write(pybase64.b64decode(carry + "=" * (4 - len(carry)), validate=True))
    out.truncate()
    return out.getvalue()


@dataclass(frozen=True)
class DataUriSpan:
    """Where a ``data:image/...;base64,`` URI's payload lies inside a larger string."""

    mime: str | None
    uri_start: int
    payload_start: int
    end: int


_DATA_PREFIX = "data:"
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=_-]*")


def parse_data_uri_header(text: str, start: int = 0) -> tuple[str | None, int] | None:
    """For a ``data:<mime>;base64,`` at ``start``: the declared mime and the payload start."""
    if text[start : start + 5].lower() != _DATA_PREFIX:
        return None
    comma = text.find(",", start, start + 256)
    if comma < 0:
        return None
    params = text[start + 5 : comma].split(";")
    if not any(param.strip().lower() == "base64" for param in params[1:]):
        return None
    mime = params[0].strip().lower() or None
    return mime, comma + 1


def find_data_uris(text: str) -> list[DataUriSpan]:
    """Every base64 image data URI inside free text (e.g. markdown ``![x](data:...)``).

    A linear scan: ``str.find`` for the prefix and one non-backtracking character-class match
    for the payload, so a 30 MB message costs tens of milliseconds.
    """
    spans: list[DataUriSpan] = []
    pos = 0
    while True:
        found = text.find("data:image/", pos)
        if found < 0:
            return spans
        header = parse_data_uri_header(text, found)
        if header is None:
            pos = found + 5
            continue
        mime, payload_start = header
        match = _BASE64_RUN.match(text, payload_start)
        end = match.end() if match else payload_start
        spans.append(DataUriSpan(mime, found, payload_start, end))
        pos = max(end, payload_start)
