"""Hostile sheets, built by hand (no spreadsheet library writes them): shared by the unit tests of
the readers and the HTTP tests of the service (``from batch.hostile import …``)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterable
from functools import lru_cache

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="xl/workbook.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
    "</Relationships>"
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="worksheets/sheet1.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>'
    "</Relationships>"
)
_SHEET_OPEN = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
)


def inline_cell(ref: str | None, text: str) -> str:
    r = f' r="{ref}"' if ref else ""
    return f'<c{r} t="inlineStr"><is><t>{text}</t></is></c>'


def sheet_xml(rows: Iterable[tuple[int | None, str]], dimension: str | None = None) -> str:
    """``rows``: (row number or None, the row's cells as XML)."""
    head = _SHEET_OPEN + (f'<dimension ref="{dimension}"/>' if dimension else "") + "<sheetData>"
    body = "".join(
        f'<row r="{number}">{cells}</row>' if number else f"<row>{cells}</row>" for number, cells in rows
    )
    return head + body + "</sheetData></worksheet>"


def xlsx(sheet: str, *, extra: dict[str, bytes | str] | None = None) -> bytes:
    """A minimal workbook around one worksheet's XML (deflated, like every writer does)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
        for name, payload in (extra or {}).items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def xfd_xlsx() -> bytes:
    """~1.5 KB: a header cell and one cell at the last column of the last row (XFD1048576)."""
    return xlsx(sheet_xml([(1, inline_cell("A1", "prompt")), (1048576, inline_cell("XFD1048576", "x"))]))


@lru_cache(maxsize=1)
def zip_bomb_xlsx(inflated_bytes: int = 228 * 1024 * 1024) -> bytes:
    """A workbook whose shared strings inflate ~1,000x (~233 KB for 228 MiB of whitespace between
    two tags), written in chunks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet_xml([(1, '<c r="A1" t="s"><v>0</v></c>')]))
        chunk = b" " * (1024 * 1024)
        with archive.open("xl/sharedStrings.xml", "w", force_zip64=True) as target:
            target.write(b"<sst><si><t>x</t></si>")
            written = 0
            while written < inflated_bytes:
                target.write(chunk)
                written += len(chunk)
            target.write(b"</sst>")
    return buffer.getvalue()


def unclosed_tags_xlsx(repeats: int = 90_000) -> bytes:
    """~3.5 KB: a cell's text is just under 1 MiB of ``<dimension `` (below the size from which the
    zip ratio is checked), tags that are never closed: a scan that looks past ``<`` for ``ref=``
    reads the rest of the part again at each one."""
    return xlsx(
        sheet_xml([(1, inline_cell("A1", "prompt")), (2, inline_cell("A2", "<dimension " * repeats))])
    )


def lying_size_xlsx() -> bytes:
    """The worksheet's directory entry says 600 bytes (with the CRC of those 600 bytes), but the
    deflated stream goes on to a cell at XFD1048576: a reader that trusts the stream, not the
    directory, loads it."""
    rows = [(1, inline_cell("A1", "prompt")), (2, inline_cell("A2", "x" * 400))]
    honest = sheet_xml([*rows, (1048576, inline_cell("XFD1048576", "x"))]).encode()
    data = bytearray(xlsx(honest.decode()))
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.getinfo("xl/worksheets/sheet1.xml")
    claimed = 600
    crc = zlib.crc32(honest[:claimed])
    struct.pack_into("<I", data, info.header_offset + 14, crc)  # the local header
    struct.pack_into("<I", data, info.header_offset + 22, claimed)
    blob, name, position = bytes(data), info.filename.encode(), 0
    while True:  # this member's central directory entry
        position = blob.index(b"PK\x01\x02", position)
        name_length = struct.unpack_from("<H", blob, position + 28)[0]
        if blob[position + 46 : position + 46 + name_length] == name:
            break
        position += 4
    struct.pack_into("<I", data, position + 16, crc)
    struct.pack_into("<I", data, position + 24, claimed)
    return bytes(data)


def wide_csv(columns: int = 20_000, rows: int = 13_500) -> bytes:
    """~47 KB: one very wide row (the header, ``columns`` empty names), then ``rows`` one-cell rows
    that a reader padding every row to the header makes ``columns`` cells each."""
    return b"," * (columns - 1) + b"\n" + b"x\n" * rows


def wide_jsonl(keys: int = 4_000, rows: int = 10_600) -> bytes:
    """~72 KB: one object with thousands of keys, then ``rows`` empty objects that a reader padding
    every row to all the keys it has seen makes ``keys`` cells each."""
    wide = json.dumps({f"k{i:04d}": 0 for i in range(keys)}, separators=(",", ":"))
    return (wide + "\n" + "{}\n" * rows).encode()
