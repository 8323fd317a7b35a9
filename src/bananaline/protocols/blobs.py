"""Take long base64 strings out of a JSON byte stream before the parser sees them.

A 4K answer is ~27 MB of JSON, nearly all one base64 string. Handed to ijson whole, that string
becomes one Python ``str`` (1.33x the image) that lives until it has been decoded: with the
image, 2.4x the image per answer. :class:`BlobExtractor` sits between the network chunks and
the parser instead. It follows JSON string boundaries (``bytes.find`` and one compiled regex,
so it runs at C speed, never a Python loop per byte) and holds each string back until it either
closes (short strings reach the parser unchanged) or passes :data:`BLOB_THRESHOLD` bytes. A
string that long whose bytes so far are all base64 alphabet becomes a *blob*: its base64 is
decoded as it arrives, into a buffer that ends up as the image without a final copy, and the
parser is handed a short placeholder string instead. Peak: the image plus one network chunk.

The placeholder starts with ``\\u0000`` (no base64 and no model text has a NUL) and carries a
random per-extractor nonce, so a body cannot forge one. Decoders turn a placeholder back into
bytes with :meth:`BlobExtractor.take` at the fields that hold images, and into the (re-encoded)
text with :meth:`BlobExtractor.as_text` anywhere else, so other fields read as before.

Inside a blob, the JSON escapes serialisers use on base64 are undone (``\\/`` becomes ``/``,
``\\n``, ``\\r``, ``\\t`` are dropped, as line-wrapped base64 decodes today); any other escape
or a character outside the alphabet makes the blob invalid. An invalid blob is not an error
until a decoder takes it (:meth:`~BlobExtractor.take` raises ``ValueError``), so a bad image in a
part the decoder ignores (a thought) costs nothing, as before.

With ``data_uris=True`` (the OpenAI decoder: relays put the image in markdown text as
``![image](data:image/png;base64,...)``), a long string that is not base64 is scanned for
``data:image/<subtype>;base64,`` prefixes (``\\/`` for the slash allowed). A base64 run after one
(alphabet characters and ``\\/``, as :func:`~bananaline.protocols.streaming.find_data_uris`
reads it) of at least the threshold becomes a blob for the run only: the parser sees the text,
the prefix, an *inline* placeholder (the same, closed by a second ``\\u0000``) and the text from
the first character after the run on. Shorter runs, and short strings, pass through unchanged.
:meth:`BlobExtractor.inline_end` finds an inline placeholder in the parsed text;
:meth:`BlobExtractor.expand` turns a text's inline placeholders back into base64.
"""

from __future__ import annotations

import functools
import io
import re
import secrets
from dataclasses import dataclass, field

import pybase64

BLOB_THRESHOLD = 64 * 1024

_QUOTE = 0x22
_BACKSLASH = 0x5C
#: The body of a JSON string from a backslash on: stops at the closing quote, at the end of the
#: data, or before a lone backslash that ends the data (its escaped character comes next read).
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-"
#: Base64 (standard or URL-safe, ``=`` padding) with the escapes a serialiser may put in it.
#: Unrolled (runs, then escape + run): a repeated alternation costs ~20x more per byte in ``re``.
_BASE64_JSON = re.compile(rb"[A-Za-z0-9+/=_-]*(?:\\[/nrt][A-Za-z0-9+/=_-]*)*")
_BAD_ESCAPE = re.compile(rb"\\(?![/nrt])")
_ESCAPE = re.compile(rb"\\(?:(/)|[nrt])")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
#: A data URI's header inside JSON string bytes; the payload starts at the match's end.
_URI_PREFIX = re.compile(rb"data:image(?:/|\\/)[A-Za-z0-9.+-]{1,64};base64,")


def _prefix_of(tokens: list[bytes]) -> re.Pattern[bytes]:
    """A pattern for any non-empty start of ``tokens`` in sequence, ending at the data's end."""
    nested = functools.reduce(lambda inner, head: head + b"(?:" + inner + b")?", reversed(tokens))
    return re.compile(nested + rb"\Z")


#: The tail of a span that may be the start of a :data:`_URI_PREFIX` (held back for the next).
_URI_PARTIAL = _prefix_of(
    [
        *(bytes([char]) for char in b"data:image"),
        rb"(?:\\\Z|(?:/|\\/)[A-Za-z0-9.+-]{0,64})",
        *(bytes([char]) for char in b";base64"),
    ]
)
_URI_PREFIX_MAX = 96
#: A data URI's payload run in JSON string bytes (what find_data_uris reads, plus ``\/``).
_URI_RUN = re.compile(rb"[A-Za-z0-9+/=_-]*(?:\\/[A-Za-z0-9+/=_-]*)*")
_WINDOW = 1024 * 1024  # base64 chars decoded per call: a multiple of 4

_OUTSIDE, _BUFFERING, _PASSING, _BLOB = range(4)


@dataclass
class _Blob:
    """One base64 string being decoded: the buffer, the unaligned tail, or why it is invalid."""

    out: io.BytesIO | None = field(default_factory=io.BytesIO)
    carry: bytes = b""
    data: bytes | None = None
    error: str | None = None

    def feed(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        """Decode ``data[start:end]``, read straight from ``data`` in aligned windows: a huge
        chunk is not copied first. Escapes and the URL-safe alphabet cost one copy of the span."""
        if self.out is None:
            return
        end = len(data) if end is None else end
        find = data.find
        if find(b"\\", start, end) >= 0 or find(b"-", start, end) >= 0 or find(b"_", start, end) >= 0:
            piece = data[start:end]
            if b"\\" in piece:
                if _BAD_ESCAPE.search(piece):
                    self.fail("an escape other than \\/, \\n, \\r, \\t")
                    return
                piece = _ESCAPE.sub(rb"\1", piece)
            data, start, end = piece.translate(_URLSAFE), 0, len(piece)
        if self.carry:
            taken = min(4 - len(self.carry), end - start)
            head, start = self.carry + data[start : start + taken], start + taken
            self.carry = b""
            if len(head) < 4:
                self.carry = head
                return
            self._write(head)
        aligned = end - (end - start) % 4
        self.carry = data[aligned:end]
        with memoryview(data) as view:
            for pos in range(start, aligned, _WINDOW):
                self._write(view[pos : min(pos + _WINDOW, aligned)])

    def _write(self, quanta: bytes | memoryview) -> None:
        if self.out is None:
            return
        try:
            self.out.write(pybase64.b64decode(quanta, validate=True))
        except ValueError as exc:
            self.fail(str(exc))

    def close(self) -> None:
        if self.out is None:
            return
        if self.carry:
            if len(self.carry) == 1:
                self.fail("base64 length is 1 more than a multiple of 4")
                return
            self._write(self.carry + b"=" * (4 - len(self.carry)))
            if self.out is None:
                return
        self.data = self.out.getvalue()  # the buffer itself (shrunk in place), not a copy
        self.out = None

    def fail(self, reason: str) -> None:
        self.error = reason
        self.out = None  # the bytes decoded so far are of no use: free them now
        self.carry = b""


class BlobExtractor:
    """A byte-stream filter for one JSON body: :meth:`feed` each chunk, :meth:`finish` at the end,
    and pass what they return to the JSON parser. Long base64 strings come out as placeholders."""

    def __init__(self, threshold: int = BLOB_THRESHOLD, *, data_uris: bool = False) -> None:
        self.threshold = threshold
        self.data_uris = data_uris
        self._prefix = f"\0bananaline-blob:{secrets.token_hex(8)}:"
        self._state = _OUTSIDE
        self._held = bytearray()  # a string's bytes, held back until it closes or is long enough
        self._carry = b""  # a backslash that ended the last chunk: its escaped byte is next
        self._blob: _Blob | None = None
        self._blobs: dict[int, _Blob] = {}
        self._count = 0
        # Inside a long non-base64 string (data_uris only): the data URI run being read (None in
        # plain text), its blob once it is long enough, and bytes kept for the next span (a
        # possible prefix start, or a backslash whose escaped byte comes next).
        self._run: bytearray | None = None
        self._run_blob: _Blob | None = None
        self._pending = b""

    # --- the stream side ---------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` the parser may see now (possibly none)."""
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            if self._state == _OUTSIDE:
                quote = data.find(b'"', pos)
                if quote < 0:
                    out.append(data[pos:] if pos else data)
                    break
                out.append(data[pos : quote + 1])
                self._state = _BUFFERING
                pos = quote + 1
                continue
            end, closed = self._string_end(data, pos)
            if self._state == _BUFFERING:
                room = self.threshold - len(self._held)
                if end - pos > room:  # long enough to decide: hold exactly the threshold
                    cut = pos + room
                    if cut > pos and data[cut - 1] == _BACKSLASH:  # keep an escape whole
                        cut += 1
                    self._held += data[pos:cut]
                    out.append(self._release_held())
                    pos = cut
                    continue
                self._held += data[pos:end]
                if closed:
                    self._held.append(_QUOTE)
                    out.append(bytes(self._held))
                    self._held.clear()
                    self._state = _OUTSIDE
                elif len(self._held) >= self.threshold:
                    out.append(self._release_held())
            elif self._state == _PASSING:
                if not self.data_uris:
                    out.append(data[pos : end + closed])
                else:
                    self._scan(data, pos, end, out)
                    if closed:
                        self._end_text(out)
                        out.append(b'"')
                if closed:
                    self._state = _OUTSIDE
            else:
                assert self._blob is not None
                self._blob.feed(data, pos, end)
                if closed:
                    self._blob.close()
                    self._blob = None
                    out.append(b'"')
                    self._state = _OUTSIDE
            pos = end + closed
            if self._carry:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """What is still held back at the end of the body (an unclosed string: the parser then
        reports the body as truncated, as it would have without this filter)."""
        tail = [bytes(self._held)]
        self._held.clear()
        for blob in (self._blob, self._run_blob):
            if blob is not None:
                blob.fail("the string never closed")
        self._blob = None
        self._end_text(tail)
        tail.append(self._carry)
        self._carry = b""
        return b"".join(tail)

    def _string_end(self, data: bytes, pos: int) -> tuple[int, int]:
        """Where the string being read stops in ``data``, and 1 if that is its closing quote.
        A backslash that ends the data is kept for the next chunk (what it escapes is there)."""
        self._carry = b""
        quote = data.find(b'"', pos)
        limit = len(data) if quote < 0 else quote
        backslash = data.find(b"\\", pos, limit)
        if backslash < 0:
            return limit, int(quote >= 0)
        match = _STRING_BODY.match(data, backslash)
        assert match is not None  # the pattern matches the empty string
        end = match.end()
        if end < len(data) and data[end] == _QUOTE:
            return end, 1
        if end < len(data):  # a lone backslash, last in the data
            self._carry = data[end:]
        return end, 0

    def _release_held(self) -> bytes:
        """The held string is long: make it a blob if it is base64, else let it through."""
        held = self._held
        others = held.translate(None, _ALPHABET)  # 3x faster than the regex on plain base64
        if not others or (not others.strip(b"\\") and _BASE64_JSON.fullmatch(held)):
            blob, released = self._new_blob(inline=False)
            self._blob = blob
            blob.feed(bytes(held))
            self._state = _BLOB
        else:
            self._state = _PASSING
            released = bytes(held)
            if self.data_uris:
                parts: list[bytes] = []
                self._scan(released, 0, len(released), parts)
                released = b"".join(parts)
        self._held = bytearray()
        return released

    def _new_blob(self, *, inline: bool) -> tuple[_Blob, bytes]:
        """A registered blob and the placeholder (as JSON string bytes) that names it."""
        index = self._count
        self._count += 1
        blob = self._blobs[index] = _Blob()
        placeholder = "\\u0000" + self._prefix[1:] + str(index) + ("\\u0000" if inline else "")
        return blob, placeholder.encode("ascii")

    # --- data URIs inside text (data_uris only) --------------------------------------------------

    def _scan(self, data: bytes, pos: int, end: int, out: list[bytes]) -> None:
        """Pass on the string text ``data[pos:end]``, data URI runs past the threshold as blobs."""
        if self._pending:
            data, pos, end = self._pending + data[pos:end], 0, len(self._pending) + end - pos
            self._pending = b""
        while pos < end:
            if self._run is not None:
                pos = self._scan_run(data, pos, end, out)
                continue
            match = _URI_PREFIX.search(data, pos, end)
            if match is None:
                partial = _URI_PARTIAL.search(data, max(pos, end - _URI_PREFIX_MAX), end)
                stop = end if partial is None else partial.start()
                out.append(data[pos:stop])
                self._pending = data[stop:end]
                return
            out.append(data[pos : match.end()])
            pos = match.end()
            self._run = bytearray()

    def _scan_run(self, data: bytes, pos: int, end: int, out: list[bytes]) -> int:
        """Read a data URI run from ``pos``: held while short, a blob once long. Where it ends."""
        assert self._run is not None
        match = _URI_RUN.match(data, pos, end)
        assert match is not None  # the pattern matches the empty string
        stop = match.end()
        open_escape = stop == end - 1 and data[stop] == _BACKSLASH  # maybe \/: decided next span
        if self._run_blob is None and len(self._run) + stop - pos >= self.threshold:
            self._run_blob, placeholder = self._new_blob(inline=True)
            self._run_blob.feed(bytes(self._run))
            self._run = bytearray()
            out.append(placeholder)
        if self._run_blob is not None:
            self._run_blob.feed(data, pos, stop)
        else:
            self._run += data[pos:stop]
        if stop == end or open_escape:
            self._pending = data[stop:end]
            return end
        self._end_run(out)
        return stop

    def _end_run(self, out: list[bytes]) -> None:
        if self._run_blob is not None:
            self._run_blob.close()
            self._run_blob = None
        elif self._run is not None:
            out.append(bytes(self._run))  # a short run: the text as it came
        self._run = None

    def _end_text(self, out: list[bytes]) -> None:
        """The string closes (or the body ends): what the scan still holds goes out."""
        self._end_run(out)
        out.append(self._pending)
        self._pending = b""

    # --- the decoder side --------------------------------------------------------------------

    def is_placeholder(self, value: object) -> bool:
        return isinstance(value, str) and value.startswith(self._prefix)

    def _pop(self, value: str) -> _Blob | None:
        if not value.startswith(self._prefix):
            return None
        digits = value[len(self._prefix) :]
        if digits.endswith("\0"):  # an inline placeholder, as inline_end cuts it out of text
            digits = digits[:-1]
        try:
            return self._blobs.pop(int(digits))
        except (KeyError, ValueError):
            return None

    def inline_end(self, text: str, pos: int) -> int | None:
        """Where the inline placeholder at ``text[pos]`` ends (``text[pos:end]`` is what
        :meth:`take` accepts), or ``None`` if there is none at ``pos``."""
        if not text.startswith(self._prefix, pos):
            return None
        close = text.find("\0", pos + len(self._prefix))
        digits = text[pos + len(self._prefix) : close]
        return close + 1 if close >= 0 and digits.isdigit() and digits.isascii() else None

    def discard_inline(self, text: str) -> None:
        """Forget the bytes of every inline placeholder in ``text`` (text the decoder drops)."""
        pos = 0
        while (found := text.find(self._prefix, pos)) >= 0:
            end = self.inline_end(text, found)
            pos = found + 1 if end is None else end
            if end is not None:
                self.discard(text[found:end])

    def expand(self, text: str) -> str:
        """``text`` with every inline placeholder back as base64 text (an invalid blob raises
        ``ValueError``), for text read where no image is expected."""
        if self._prefix not in text:
            return text
        pieces: list[str] = []
        pos = 0
        while (found := text.find(self._prefix, pos)) >= 0:
            end = self.inline_end(text, found)
            if end is None:
                pieces.append(text[pos : found + 1])
                pos = found + 1
                continue
            pieces += (text[pos:found], self.as_text(text[found:end]))
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    def take(self, value: str) -> bytes | None:
        """The decoded bytes for a placeholder (the extractor forgets them), ``None`` for any other
        string. Raises ``ValueError`` if the blob was not valid base64."""
        blob = self._pop(value)
        if blob is None:
            if self.is_placeholder(value):
                raise ValueError("unknown or already taken blob")
            return None
        if blob.data is None:
            raise ValueError(f"invalid base64: {blob.error or 'incomplete'}")
        return blob.data

    def discard(self, value: str) -> None:
        """Forget a placeholder's bytes (an image the decoder does not keep)."""
        self._pop(value)

    def as_text(self, value: str) -> str:
        """A placeholder as base64 text again (for fields read as text); other strings unchanged.
        The alphabet comes back standard and padded; an invalid blob raises ``ValueError``."""
        data = self.take(value)
        return value if data is None else pybase64.b64encode(data).decode("ascii")

    @property
    def pending(self) -> int:
        """Blobs decoded and not yet taken or discarded."""
        return len(self._blobs)
