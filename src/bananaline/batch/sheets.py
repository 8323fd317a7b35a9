"""Spreadsheets in and out: CSV (as Excel writes it, in China too), XLSX and JSONL.

Reading gives a :class:`Table`: the header in order and every row as ``{column: text}``. CSV is
decoded as UTF-8 (with or without BOM) and falls back to GB18030, the superset of GBK that
Chinese Excel writes. Writing neutralises every cell against formula injection (OWASP: a cell
starting with ``= + - @``, tab or CR gets a leading apostrophe) and XLSX cells are always
written as strings, so nothing a prompt says is ever evaluated by a spreadsheet.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .sheet_limits import LOCAL_FILE_LIMITS, UPLOAD_LIMITS, SheetError, SheetLimits, SheetTooLarge

SheetFormat = Literal["csv", "xlsx", "jsonl"]
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
PREVIEW_ROW_HEIGHT_PT = 75.0


@dataclass
class Table:
    header: list[str]
    rows: list[dict[str, str]]


def format_of(path: str | Path) -> SheetFormat:
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ValueError(f"unsupported sheet type {suffix or '(none)'!r}: use .csv, .xlsx or .jsonl")


def read_table(path: str | Path, *, limits: SheetLimits = LOCAL_FILE_LIMITS) -> Table:
    return read_table_bytes(Path(path).read_bytes(), format_of(path), limits=limits)


def read_table_bytes(data: bytes, fmt: SheetFormat, *, limits: SheetLimits = UPLOAD_LIMITS) -> Table:
    """Raises :class:`SheetTooLarge` at the first bound crossed, :class:`SheetError` for bytes
    that are not a sheet."""
    if fmt == "csv":
        return _read_csv(decode_text(data), limits)
    if fmt == "xlsx":
        return _read_xlsx(data, limits)
    return _read_jsonl(decode_text(data), limits)


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM or not) first; anything that is not valid UTF-8 is read as GB18030."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def _unique_header(names: Sequence[Any]) -> list[str]:
    header: list[str] = []
    seen: set[str] = set()
    for position, raw in enumerate(names, start=1):
        name = cell_text(raw).strip() or f"column_{position}"
        candidate, suffix = name, 2
        while candidate in seen:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        seen.add(candidate)
        header.append(candidate)
    return header


class _RowsBuilder:
    """Rows as they stream in, bounded as they come: the first row is the header, blank rows
    are skipped, short rows are padded to the header (and the padded size is what is counted),
    cells past the header are dropped."""

    def __init__(self, limits: SheetLimits) -> None:
        self.limits = limits
        self.header: list[str] | None = None
        self.header_blank = True
        self.rows: list[dict[str, str]] = []

    def add(self, values: Sequence[Any], where: str) -> None:
        limits = self.limits
        if len(values) > limits.max_columns:
            raise SheetTooLarge(
                f"{where} has {len(values):,} columns; at most {limits.max_columns:,} are read"
            )
        cells = [cell_text(value) for value in values]
        for position, cell in enumerate(cells, start=1):
            if len(cell) > limits.max_cell_chars:
                raise SheetTooLarge(
                    f"{where}, column {position}: a cell of {len(cell):,} characters; "
                    f"at most {limits.max_cell_chars:,} are read"
                )
        blank = not any(cell.strip() for cell in cells)
        if self.header is None:
            self.header = _unique_header(cells)
            self.header_blank = blank
            return
        if blank:
            return
        width = len(self.header)
        _check_size(len(self.rows) + 1, width, limits)
        padded = cells[:width] + [""] * (width - len(cells))
        self.rows.append(dict(zip(self.header, padded, strict=True)))

    def table(self) -> Table:
        if self.header is None or (self.header_blank and not self.rows):
            return Table([], [])
        return Table(self.header, self.rows)


def _check_size(rows: int, width: int, limits: SheetLimits) -> None:
    """``rows`` data rows of ``width`` columns once padded: within the row and cell bounds?"""
    if rows > limits.max_rows:
        raise SheetTooLarge(f"the sheet has more than {limits.max_rows:,} rows")
    if rows * width > limits.max_cells:
        raise SheetTooLarge(
            f"{rows:,} rows x {width} columns is more than the {limits.max_cells:,} cells read"
        )


#: One physical line and its ending (``\r\n``, ``\r`` or ``\n``), as ``open(newline="")`` splits.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(text: str) -> Iterator[str]:
    """Lines one at a time, without a second copy of the text (``io.StringIO`` holds four bytes
    per character)."""
    for match in _LINE.finditer(text):
        yield match.group()


def _read_csv(text: str, limits: SheetLimits) -> Table:
    end = text.find("\n")
    first_line = text if end < 0 else text[:end]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    builder = _RowsBuilder(limits)
    reader = csv.reader(_lines(text), delimiter=delimiter)
    try:
        for values in reader:
            builder.add(values, f"line {reader.line_num}")
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise SheetTooLarge(
                f"line {reader.line_num + 1}: a cell of more than {csv.field_size_limit():,} characters"
            ) from None
        raise SheetError(f"line {reader.line_num}: {exc}") from None
    return builder.table()


def _read_xlsx(data: bytes, limits: SheetLimits) -> Table:
    from python_calamine import CalamineWorkbook

    from .xlsx_guard import checked_xlsx

    measured = checked_xlsx(data, limits)
    try:
        workbook = CalamineWorkbook.from_filelike(io.BytesIO(measured))
        try:
            matrix = workbook.get_sheet_by_index(0).to_python(skip_empty_area=False)
        finally:
            workbook.close()
    except BaseException as exc:  # calamine panics raise pyo3's PanicException, a BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise SheetError(f"the workbook cannot be read ({type(exc).__name__}: {exc})") from None
    builder = _RowsBuilder(limits)
    for number, values in enumerate(matrix, start=1):
        builder.add(values, f"row {number}")
    return builder.table()


def _read_jsonl(text: str, limits: SheetLimits) -> Table:
    header: list[str] = []
    known: set[str] = set()
    rows: list[dict[str, str]] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        if len(line) > limits.max_jsonl_line_chars:
            raise SheetTooLarge(
                f"line {number} has {len(line):,} characters; "
                f"at most {limits.max_jsonl_line_chars:,} are read"
            )
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise SheetError(f"line {number} is not JSON: {reason}") from None
        if not isinstance(obj, dict):
            raise SheetError(f"line {number} is not a JSON object")
        if len(obj) > limits.max_columns:
            raise SheetTooLarge(
                f"line {number} has {len(obj):,} keys; at most {limits.max_columns:,} are read"
            )
        row: dict[str, str] = {}
        for key, value in obj.items():
            name = str(key)
            if name not in known:
                if len(header) >= limits.max_columns:
                    raise SheetTooLarge(
                        f"line {number} brings the sheet to more than {limits.max_columns:,} columns"
                    )
                known.add(name)
                header.append(name)
            cell = cell_text(value)
            if len(cell) > limits.max_cell_chars:
                raise SheetTooLarge(
                    f"line {number}, key {name[:80]!r}: a cell of {len(cell):,} characters; "
                    f"at most {limits.max_cell_chars:,} are read"
                )
            row[name] = cell
        _check_size(len(rows) + 1, len(header), limits)
        rows.append(row)
    return Table(header, [{name: row.get(name, "") for name in header} for row in rows])


def cell_text(value: Any) -> str:
    """A cell as text: ``2.0`` -> ``"2"``, lists (JSONL refs) one per line, dates ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list | tuple):
        return "\n".join(cell_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    return str(value)


def neutralize(cell: str) -> str:
    """OWASP CSV-injection defence: prefix a cell a spreadsheet could read as a formula."""
    if cell and cell.startswith(FORMULA_TRIGGERS):
        return "'" + cell
    return cell


def write_table(
    header: list[str],
    rows: Sequence[dict[str, str]],
    fmt: SheetFormat,
    *,
    previews: Sequence[bytes | None] | None = None,
    preview_column: str = "thumbnail",
) -> bytes:
    if fmt == "csv":
        return write_csv(header, rows)
    if fmt == "xlsx":
        return write_xlsx(header, rows, previews=previews, preview_column=preview_column)
    return write_jsonl(header, rows)


def write_csv(header: list[str], rows: Sequence[dict[str, str]]) -> bytes:
    """UTF-8 with BOM so Excel (Chinese locale included) opens it with the right characters."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralize(name) for name in header])
    for row in rows:
        writer.writerow([neutralize(row.get(name, "")) for name in header])
    return buffer.getvalue().encode("utf-8-sig")


def write_jsonl(header: list[str], rows: Sequence[dict[str, str]]) -> bytes:
    """JSON is data, not a spreadsheet: values are written as they are."""
    lines = [json.dumps({name: row.get(name, "") for name in header}, ensure_ascii=False) for row in rows]
    return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")


def write_xlsx(
    header: list[str],
    rows: Sequence[dict[str, str]],
    *,
    previews: Sequence[bytes | None] | None = None,
    preview_column: str = "thumbnail",
) -> bytes:
    """Every cell via ``write_string``; a picture column when previews are given."""
    import xlsxwriter

    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(
        buffer,
        {
            "in_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    sheet = workbook.add_worksheet("results")
    wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
    bold = workbook.add_format({"bold": True})
    columns = list(header)
    picture_col = None
    if previews is not None:
        picture_col = len(columns)
        columns.append(preview_column)
        sheet.set_column(picture_col, picture_col, 22)
    for col, name in enumerate(columns):
        sheet.write_string(0, col, neutralize(name), bold)
    for number, row in enumerate(rows, start=1):
        for col, name in enumerate(header):
            sheet.write_string(number, col, neutralize(row.get(name, "")), wrap)
        preview = previews[number - 1] if previews is not None and number - 1 < len(previews) else None
        if preview and picture_col is not None:
            sheet.set_row(number, PREVIEW_ROW_HEIGHT_PT)
            scale = _preview_scale(preview)
            sheet.insert_image(
                number,
                picture_col,
                f"row{number}.jpg",
                {
                    "image_data": io.BytesIO(preview),
                    "x_scale": scale,
                    "y_scale": scale,
                    "object_position": 1,
                    "x_offset": 2,
                    "y_offset": 2,
                },
            )
    sheet.freeze_panes(1, 0)
    workbook.close()
    return buffer.getvalue()


def _preview_scale(preview: bytes) -> float:
    """Fit the picture inside the row height (pixels = points * 4/3)."""
    from PIL import Image

    with Image.open(io.BytesIO(preview)) as image:
        longest = max(image.size) or 1
    return min(1.0, (PREVIEW_ROW_HEIGHT_PT * 4 / 3 - 4) / longest)
