"""Sheets in and out: Chinese CSV encodings, XLSX, JSONL, and formula-injection-safe writing."""

from __future__ import annotations

import io
import json

import xlsxwriter
from python_calamine import CalamineWorkbook

from bananaline.batch.sheets import neutralize, read_table, read_table_bytes, write_csv, write_xlsx

from .conftest import png_bytes

HEADER = ["提示词", "目标图", "调用人"]
ROWS = [["一只香蕉在大理石桌上", "a.png, b.png", "张三"], ["换成蓝色背景", "c.png", "李四"]]


def _csv_text() -> str:
    lines = [",".join(HEADER)] + [",".join(f'"{cell}"' for cell in row) for row in ROWS]
    return "\r\n".join(lines) + "\r\n"


def _expected() -> list[dict[str, str]]:
    return [dict(zip(HEADER, row, strict=True)) for row in ROWS]


def test_gb18030_csv_with_chinese_headers(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes(_csv_text().encode("gb18030"))
    table = read_table(path)
    assert table.header == HEADER and table.rows == _expected()


def test_utf8_bom_and_plain_utf8_csv(tmp_path):
    for name, encoding in (("bom.csv", "utf-8-sig"), ("plain.csv", "utf-8")):
        path = tmp_path / name
        path.write_bytes(_csv_text().encode(encoding))
        table = read_table(path)
        assert table.header == HEADER, name
        assert table.rows == _expected(), name


def test_xlsx_input_numbers_and_blank_rows(tmp_path):
    path = tmp_path / "in.xlsx"
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet()
    for col, name in enumerate(["prompt", "n", "prompt"]):
        sheet.write_string(0, col, name)
    sheet.write_string(1, 0, "多行\n提示词")
    sheet.write_number(1, 1, 2)
    sheet.write_string(3, 0, "after a blank row")
    workbook.close()
    table = read_table(path)
    assert table.header == ["prompt", "n", "prompt_2"]
    assert table.rows == [
        {"prompt": "多行\n提示词", "n": "2", "prompt_2": ""},
        {"prompt": "after a blank row", "n": "", "prompt_2": ""},
    ]


def test_jsonl_lists_become_one_reference_per_line():
    data = "\n".join(
        json.dumps(o, ensure_ascii=False)
        for o in (
            {"prompt": "香蕉", "refs": ["a.png", "b.png"], "n": 2},
            {"prompt": "x", "extra": None},
        )
    ).encode()
    table = read_table_bytes(data, "jsonl")
    assert table.header == ["prompt", "refs", "n", "extra"]
    assert table.rows[0] == {"prompt": "香蕉", "refs": "a.png\nb.png", "n": "2", "extra": ""}


def test_neutralize_covers_every_owasp_trigger():
    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert neutralize(cell) == "'" + cell
    assert neutralize("a=1") == "a=1" and neutralize("") == ""


def test_written_csv_and_xlsx_are_inert_and_round_trip():
    hostile = '=HYPERLINK("http://evil","x")'
    header = ["prompt", "-cmd"]
    rows = [{"prompt": hostile, "-cmd": "@SUM(1)"}, {"prompt": "普通", "-cmd": "ok"}]
    text = write_csv(header, rows).decode("utf-8-sig")
    assert "'" + '=HYPERLINK(""http://evil"",""x"")' in text and "\n=" not in text and ",=" not in text
    assert text.startswith("prompt,'-cmd")
    payload = write_xlsx(header, rows, previews=[png_bytes(), None])
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(payload))
    matrix = workbook.get_sheet_by_index(0).to_python()
    assert matrix[0][:2] == ["prompt", "'-cmd"]
    assert matrix[1][:2] == ["'" + hostile, "'@SUM(1)"]
    assert b"<f>" not in _sheet_xml(payload)


def _sheet_xml(payload: bytes) -> bytes:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert any(name.startswith("xl/media/") for name in archive.namelist())
        return archive.read("xl/worksheets/sheet1.xml")
