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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


def read_table(path: str | Path) -> Table:
    return read_table_bytes(Path(path).read_bytes(), format_of(path))


def read_table_bytes(data: bytes, fmt: SheetFormat) -> Table:
    if fmt == "csv":
        return _read_csv(decode_text(data))
    if fmt == "xlsx":
        return _read_xlsx(data)
    return _read_jsonl(decode_text(data))


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


def _rows_from_matrix(matrix: list[list[Any]]) -> Table:
    while matrix and not any(cell_text(c).strip() for c in matrix[-1]):
        matrix.pop()
    if not matrix:
        return Table([], [])
    header = _unique_header(matrix[0])
    rows = []
    for values in matrix[1:]:
        if not any(cell_text(c).strip() for c in values):
            continue
        cells = [cell_text(c) for c in values] + [""] * (len(header) - len(values))
        rows.append(dict(zip(header, cells, strict=False)))
    return Table(header, rows)


def _read_csv(text: str) -> Table:
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    return _rows_from_matrix(list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)))


def _read_xlsx(data: bytes) -> Table:
    from python_calamine import CalamineWorkbook

    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    try:
        matrix = workbook.get_sheet_by_index(0).to_python(skip_empty_area=False)
    finally:
        workbook.close()
    return _rows_from_matrix([list(row) for row in matrix])


def _read_jsonl(text: str) -> Table:
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} is not JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            raise ValueError(f"line {number} is not a JSON object")
        for key in obj:
            if str(key) not in header:
                header.append(str(key))
        rows.append({str(k): cell_text(v) for k, v in obj.items()})
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
