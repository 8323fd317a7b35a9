"""An XLSX measured before the spreadsheet library sees it.

calamine (Rust) allocates the full rectangle of a sheet and aborts the whole process when it
cannot: one cell at ``XFD1048576`` asks for ~512 GiB, and an abort is not an exception any
handler could catch. So :func:`checked_xlsx` reads the zip with :mod:`zipfile` first:

1. the central directory only: member count, each XML member's declared size, its
   compression ratio, and their total, so a zip bomb is refused before one byte is inflated;
2. the XML members are inflated once, streaming, through :mod:`zipfile` (which stops at the
   declared size and checks the CRC) into a fresh, uncompressed zip. calamine reads that copy,
   so what it loads is exactly what was measured; pictures, VBA and the workbook's other
   worksheets are left out of it (only the first sheet is read);
3. while it is copied, the first worksheet is scanned with expat: its ``<dimension ref>`` and
   every cell's position (``r="…"``, or the position implied by order), stopping at the first
   one past the bounds; shared strings are counted. A DTD is refused (no XLSX has one).

Everything raises :class:`SheetTooLarge` or :class:`SheetError`.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from collections.abc import Callable
from typing import IO
from xml.parsers import expat

from .sheet_limits import RATIO_CHECK_FROM_BYTES, SheetError, SheetLimits, SheetTooLarge

_WORKBOOK = "xl/workbook.xml"
_WORKBOOK_RELS = "xl/_rels/workbook.xml.rels"
_SHARED_STRINGS = "xl/sharedStrings.xml"
_CHUNK_BYTES = 64 * 1024
_StartHandler = Callable[[str, dict[str, str]], None]
_CELL_REF = re.compile(r"^\$?([A-Za-z]{1,3})\$?([0-9]{1,7})$")
_PREFIX = rb"<(?:[A-Za-z_][\w.-]*:)?"
#: A cell's start tag as every spreadsheet writer writes it: no prefix, ``r`` first, in double
#: quotes, upper case, then attributes without a prefix, a second ``r`` or ``<>`` in their values.
#: When every cell tag of a sheet is plain, their ``r`` bound the sheet; otherwise the exact pass.
_PLAIN_CELL = re.compile(rb'<c r="([A-Z]{1,3})([0-9]{1,7})"(?: (?!r=)[A-Za-z_][\w.-]*="[^"<>]*")*\s*/?>')
#: Every way a cell's start tag can begin (``<c`` or ``<prefix:c``, then a space, ``>`` or ``/``):
#: counted with ``bytes.count``; text that happens to look like one only costs the exact pass.
_CELL_TAG_STARTS = tuple(
    opening + b"c" + after for opening in (b"<", b":") for after in (b" ", b"\t", b"\n", b"\r", b">", b"/")
)
#: Within one tag (``[^<>]``): a lazy scan that could cross ``<`` would be quadratic on a sheet of
#: ``<dimension <dimension …`` (a 3.5 KB upload took 94 s).
_DIMENSION_REF = re.compile(_PREFIX + rb"dimension\s[^<>]*?\bref\s*=\s*[\"']([^\"']*)[\"']")
_SI_TAG = re.compile(_PREFIX + rb"si[\s/>]")
_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)")


def checked_xlsx(data: bytes, limits: SheetLimits) -> bytes:
    """The workbook's XML parts, measured and re-packed (stored, not deflated) for calamine."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise SheetError("not an XLSX workbook (not a zip archive)") from None
    try:
        with archive:
            members = _xml_members(archive, limits)
            if _WORKBOOK not in members:
                raise SheetError("not an XLSX workbook (no xl/workbook.xml)")
            first_sheet = _first_sheet_path(archive, members)
            if first_sheet not in members:
                raise SheetError(f"the workbook's first sheet ({first_sheet}) is missing")
            return _copy(archive, members, first_sheet, limits)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, RuntimeError) as exc:
        raise SheetError(f"not a readable XLSX workbook ({exc})") from None


def _xml_members(archive: zipfile.ZipFile, limits: SheetLimits) -> dict[str, zipfile.ZipInfo]:
    """The XML parts by name, after the directory checks (nothing is inflated here)."""
    infos = archive.infolist()
    if len(infos) > limits.max_zip_members:
        raise SheetTooLarge(f"the XLSX has {len(infos):,} parts; at most {limits.max_zip_members:,} are read")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if info.is_dir() or not name.lower().endswith((".xml", ".rels")):
            continue
        if name in members:
            raise SheetError(f"the XLSX holds {name} twice")
        if info.flag_bits & 0x1:
            raise SheetError("the XLSX is encrypted")
        size, packed = info.file_size, max(info.compress_size, 1)
        if size > limits.max_xlsx_xml_bytes:
            raise SheetTooLarge(
                f"{name} inflates to {size:,} bytes; at most {limits.max_xlsx_xml_bytes:,} are read"
            )
        if size > RATIO_CHECK_FROM_BYTES and size > limits.max_zip_ratio * packed:
            raise SheetTooLarge(
                f"{name} inflates {size / packed:,.0f}x (a zip bomb?); at most {limits.max_zip_ratio:,.0f}x"
            )
        total += size
        if total > limits.max_xlsx_xml_bytes:
            raise SheetTooLarge(f"the XLSX's XML inflates to more than {limits.max_xlsx_xml_bytes:,} bytes")
        members[name] = info
    return members


def _first_sheet_path(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> str:
    """The part calamine loads as sheet 0: the first ``<sheet>`` of the workbook, through its rels."""
    sheet_ids: list[str] = []

    def on_sheet(name: str, attrs: dict[str, str]) -> None:
        if not sheet_ids and _local(name) == "sheet":
            sheet_ids.extend(value for key, value in attrs.items() if ":" in key and _local(key) == "id")

    _parse(archive, members[_WORKBOOK], on_sheet)
    if not sheet_ids:
        raise SheetError("the workbook has no sheet")
    targets: dict[str, str] = {}

    def on_relationship(name: str, attrs: dict[str, str]) -> None:
        if _local(name) == "Relationship" and "Id" in attrs and "Target" in attrs:
            targets.setdefault(attrs["Id"], attrs["Target"])

    if _WORKBOOK_RELS not in members:
        raise SheetError("not an XLSX workbook (no xl/_rels/workbook.xml.rels)")
    _parse(archive, members[_WORKBOOK_RELS], on_relationship)
    target = targets.get(sheet_ids[0])
    if target is None:
        raise SheetError("the workbook's first sheet has no part")
    return _part_path(target)


def _part_path(target: str) -> str:
    path = target.lstrip("/") if target.startswith("/") else posixpath.join("xl", target)
    return posixpath.normpath(path)


def _copy(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], first_sheet: str, limits: SheetLimits
) -> bytes:
    """Inflate each XML part once (bounded), scanning the first sheet and the shared strings."""
    worksheets = {name for name in members if re.match(r"(?i)xl/worksheets/[^/]+\.xml$", name)}
    output = io.BytesIO()
    budget = limits.max_xlsx_xml_bytes
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as copy:
        for name, info in members.items():
            if name in worksheets and name != first_sheet:
                continue
            scanner: _TagScanner | None = None
            if name == first_sheet:
                scanner = _SheetScanner(limits, name)
            elif name == _SHARED_STRINGS:
                scanner = _SharedStringsScanner(limits, name)
            with archive.open(info) as source, copy.open(name, "w") as target:
                while chunk := source.read(_CHUNK_BYTES):
                    budget -= len(chunk)
                    if budget < 0:
                        raise SheetTooLarge(
                            f"the XLSX's XML inflates to more than {limits.max_xlsx_xml_bytes:,} bytes"
                        )
                    if scanner is not None:
                        scanner.feed(chunk)
                    target.write(chunk)
            if scanner is not None:
                scanner.feed(b"", final=True)
            if isinstance(scanner, _SheetScanner) and scanner.exact_pass_needed:
                _parse(archive, info, _OrderedSheetScanner(limits).start)
    return output.getvalue()


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def _refuse_dtd(*_: object) -> None:
    raise SheetError("the XLSX contains a DTD")


def _new_parser() -> expat.XMLParserType:
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    return parser


def _parse(archive: zipfile.ZipFile, info: zipfile.ZipInfo, on_start: _StartHandler) -> None:
    parser = _new_parser()
    parser.StartElementHandler = on_start
    with archive.open(info) as source:
        _feed_all(parser, source, info.filename)


def _feed_all(parser: expat.XMLParserType, source: IO[bytes], name: str) -> None:
    try:
        while chunk := source.read(_CHUNK_BYTES):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise SheetError(f"{name} is not well-formed XML ({exc})") from None


class _TagScanner:
    """Start tags counted in the inflated bytes as they stream, with C-speed regexes: the bytes
    are cut before the last ``<`` of each chunk, so no tag is ever split between two segments
    (bytes without a ``<`` are appended to a buffer, not copied again per chunk: a part without
    tags stays linear). Only ASCII-compatible XML is accepted (every spreadsheet writer uses UTF-8)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.carry = bytearray()
        self.started = False

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        if not self.started and chunk:
            self.started = True
            if b"\x00" in chunk[:4] or chunk.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"<":
                raise SheetError(f"{self.part} is not UTF-8 XML")
        searched = len(self.carry)
        self.carry += chunk
        cut = len(self.carry) if final else self.carry.rfind(b"<", searched)
        if cut < 0:
            return
        segment = bytes(self.carry[:cut])
        del self.carry[:cut]
        if _DTD.search(segment):
            raise SheetError(f"{self.part} declares a DTD")
        self.segment(segment)

    def segment(self, segment: bytes) -> None:
        raise NotImplementedError


class _SheetScanner(_TagScanner):
    """Every cell's position, as calamine will place it, checked against the bounds (and the
    ``<dimension ref>``). A cell tag that is not plain (no ``r``, whose position is implied by
    the cells before it, or unusual attributes) sets :attr:`exact_pass_needed`: the part is
    then parsed again, in order, by :class:`_OrderedSheetScanner`."""

    def __init__(self, limits: SheetLimits, part: str) -> None:
        super().__init__(part)
        self.bounds = _Bounds(limits)
        self.exact_pass_needed = False

    def segment(self, segment: bytes) -> None:
        if b"dimension" in segment:
            for ref in _DIMENSION_REF.findall(segment):
                text = ref.decode("ascii", "replace")
                self.bounds.check(*_cell_position(text.rpartition(":")[2]), f"dimension {text}")
        tags = sum(segment.count(start) for start in _CELL_TAG_STARTS)
        if not tags:
            return
        self.bounds.count(tags)
        refs = _PLAIN_CELL.findall(segment)
        if len(refs) != tags:
            self.exact_pass_needed = True
        if not refs:
            return
        widest = max(_column_number(letters) for letters in {letters for letters, _ in refs})
        deepest = max(int(digits) for digits in {digits for _, digits in refs})
        self.bounds.check(widest, deepest, "a cell")


class _SharedStringsScanner(_TagScanner):
    """calamine keeps every shared string; more than one per cell is never needed."""

    def __init__(self, limits: SheetLimits, part: str) -> None:
        super().__init__(part)
        self.limit = limits.max_cells + limits.max_columns
        self.count = 0

    def segment(self, segment: bytes) -> None:
        self.count += len(_SI_TAG.findall(segment))
        if self.count > self.limit:
            raise SheetTooLarge(f"the workbook has more than {self.limit:,} shared strings")


class _Bounds:
    def __init__(self, limits: SheetLimits) -> None:
        self.limits = limits
        self.cells = 0
        self.widest = 0
        self.deepest = 0

    def count(self, cells: int) -> None:
        self.cells += cells
        if self.cells > self.limits.max_cells + self.limits.max_columns:
            raise SheetTooLarge(f"the sheet has more than {self.limits.max_cells:,} cells")

    def check(self, column: int, row: int, where: str) -> None:
        limits = self.limits
        if column > limits.max_columns:
            raise SheetTooLarge(
                f"the sheet reaches column {column:,} ({where}); "
                f"at most {limits.max_columns:,} columns are read"
            )
        if row > limits.max_rows + 1:  # the header row on top
            raise SheetTooLarge(
                f"the sheet reaches row {row:,} ({where}); at most {limits.max_rows:,} rows are read"
            )
        self.widest = max(self.widest, column)
        self.deepest = max(self.deepest, row)
        if (self.deepest - 1) * self.widest > limits.max_cells:
            raise SheetTooLarge(
                f"the sheet spans {self.deepest:,} rows x {self.widest} columns ({where}); "
                f"at most {limits.max_cells:,} cells are read"
            )


class _OrderedSheetScanner:
    """The slow, exact pass (expat, element by element; it refuses duplicate attributes)."""

    def __init__(self, limits: SheetLimits) -> None:
        self.bounds = _Bounds(limits)
        self.row = 0
        self.column = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "c":
            refs = [value for key, value in attrs.items() if _local(key) == "r"]
            if refs:
                for ref in refs:
                    self.column, row = _cell_position(ref)
                    self.bounds.check(self.column, row, ref)
            else:
                self.column, row = self.column + 1, max(self.row, 1)
                self.bounds.check(self.column, row, f"cell {self.column} of row {row}")
            self.bounds.count(1)
        elif local == "row":
            number = attrs.get("r")
            self.row = _number(number, "row") if number else self.row + 1
            self.column = 0


def _cell_position(ref: str) -> tuple[int, int]:
    """``"AB12"`` -> ``(28, 12)`` (column, row; both from 1)."""
    match = _CELL_REF.match(ref)
    if match is None:
        raise SheetError(f"bad cell reference {ref[:40]!r} in the sheet")
    return _column_number(match.group(1).encode("ascii")), int(match.group(2))


def _column_number(letters: bytes) -> int:
    column = 0
    for letter in letters.upper():
        column = column * 26 + (letter - ord("A") + 1)
    return column


def _number(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 7:
        raise SheetError(f"bad {what} number {text[:40]!r} in the sheet")
    return int(text)
