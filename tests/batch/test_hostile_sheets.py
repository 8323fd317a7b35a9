"""Hostile sheets and templates are bounded while they are read (issue 8, items 1-3), and ordinary
ones read exactly as before."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import jinja2
import psutil
import pytest
import xlsxwriter
from typer.testing import CliRunner

from bananaline.batch.columns import ColumnConfig, RowPlanner
from bananaline.batch.sheet_limits import SheetError, SheetLimits, SheetTooLarge
from bananaline.batch.sheets import read_table_bytes
from bananaline.batch.template import (
    BoundedTemplate,
    TemplateBounds,
    TemplateRejected,
    render_all,
)
from bananaline.batch.xlsx_guard import checked_xlsx
from bananaline.cli import app
from bananaline.errors import ErrorKind

from .conftest import png_bytes
from .hostile import (
    inline_cell,
    lying_size_xlsx,
    sheet_xml,
    unclosed_tags_xlsx,
    wide_csv,
    wide_jsonl,
    xfd_xlsx,
    xlsx,
    zip_bomb_xlsx,
)

FAST = TemplateBounds(row_timeout_s=0.5, batch_timeout_s=2.0)
runner = CliRunner()

# XLSX: measured from the zip directory and the sheet's own XML before calamine loads it ----------


def test_a_cell_at_xfd1048576_is_refused_before_the_spreadsheet_library_sees_it():
    with pytest.raises(SheetTooLarge, match="column 16,384"):
        read_table_bytes(xfd_xlsx(), "xlsx")


def test_a_dimension_past_the_bounds_is_refused_even_with_one_cell():
    data = xlsx(sheet_xml([(1, inline_cell("A1", "prompt"))], dimension="A1:XFD1048576"))
    with pytest.raises(SheetTooLarge, match="dimension A1:XFD1048576"):
        read_table_bytes(data, "xlsx")


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        # no r: positions implied by order, 300 cells in one row
        ([(1, inline_cell(None, "prompt") * 300)], "column 201"),
        # r not first, a prefix, single quotes: not the plain shape, so the exact pass decides
        ([(1, '<c t="inlineStr" r="A1"><is><t>p</t></is></c>'), (2, '<c t="n" r="ZZ2"/>')], "column 702"),
        ([(1, '<x:c r="A1" xmlns:x="urn:x"/>'), (2, '<x:c r="A30000" xmlns:x="urn:x"/>')], "row 30,000"),
        ([(1, "<c r='A1'/>"), (2, "<c r='IV2'/>")], "column 256"),
        # a row far down, its cells without r
        ([(1, inline_cell("A1", "prompt")), (25_000, inline_cell(None, "x"))], "row 25,000"),
    ],
)
def test_cell_positions_are_bounded_whatever_way_they_are_written(cells, match):
    with pytest.raises(SheetTooLarge, match=match):
        read_table_bytes(xlsx(sheet_xml(cells)), "xlsx")


def test_a_second_r_attribute_is_not_a_way_around_the_scan():
    data = xlsx(sheet_xml([(1, '<c r="A1" s="0" r="XFD1048576"><v>1</v></c>')]))
    with pytest.raises(SheetError):
        read_table_bytes(data, "xlsx")


def test_rows_times_columns_is_bounded_before_loading():
    data = xlsx(sheet_xml([(1, inline_cell("A1", "prompt")), (10_002, inline_cell("CV10002", "x"))]))
    with pytest.raises(SheetTooLarge, match="cells are read"):
        read_table_bytes(data, "xlsx")


def test_a_zip_bomb_is_refused_from_the_directory_without_inflating():
    data = zip_bomb_xlsx()
    assert len(data) < 300_000
    started = time.perf_counter()
    with pytest.raises(SheetTooLarge, match="inflates"):
        read_table_bytes(data, "xlsx")
    assert time.perf_counter() - started < 1.0


def test_a_high_ratio_part_under_the_size_cap_is_refused_by_its_ratio():
    styles = " " * (8 * 1024 * 1024)
    data = xlsx(sheet_xml([(1, inline_cell("A1", "prompt"))]), extra={"xl/styles.xml": styles})
    with pytest.raises(SheetTooLarge, match="inflates .*x"):
        read_table_bytes(data, "xlsx")


def test_too_many_members_and_a_dtd_are_refused():
    many = {f"xl/media/image{i}.png": b"x" for i in range(50)}
    with pytest.raises(SheetTooLarge, match="parts"):
        read_table_bytes(xlsx(sheet_xml([]), extra=many), "xlsx", limits=SheetLimits(max_zip_members=20))
    dtd = sheet_xml([(1, inline_cell("A1", "p"))])
    dtd = dtd.replace("<worksheet", '<!DOCTYPE x [<!ENTITY a "b">]><worksheet', 1)
    with pytest.raises(SheetError, match="DTD"):
        read_table_bytes(xlsx(dtd), "xlsx")


def test_a_member_longer_than_its_directory_entry_is_read_only_as_far_as_the_entry_says():
    """zipfile stops at the declared size; calamine reads the re-packed copy, so the cell past it
    (XFD1048576) never reaches the spreadsheet library."""
    try:
        table = read_table_bytes(lying_size_xlsx(), "xlsx")
    except SheetTooLarge as exc:  # the cell past the declared size was read after all
        pytest.fail(f"read past the directory entry: {exc}")
    except SheetError:  # the 600 declared bytes end mid-tag: calamine cannot read them
        return
    assert len(table.header) <= 1 and len(table.rows) <= 1


def test_unclosed_tags_are_scanned_in_linear_time():
    data = unclosed_tags_xlsx()
    assert len(data) < 4_000
    started = time.perf_counter()
    with pytest.raises(SheetError):  # not well-formed: calamine refuses it, once it is measured
        read_table_bytes(data, "xlsx")
    assert time.perf_counter() - started < 2.0  # 94 s while the dimension scan crossed tags


def test_a_part_without_tags_is_scanned_in_linear_time():
    """32 MiB of text in one cell: with each 64 KiB chunk copied onto all the text before it, 10 s
    (random text that deflates under the ratio bound does the same from a 25 MB upload)."""
    data = xlsx(sheet_xml([(1, inline_cell("A1", "prompt")), (2, inline_cell("A2", "x" * (32 << 20)))]))
    started = time.perf_counter()
    checked_xlsx(data, SheetLimits(max_zip_ratio=1e9))
    assert time.perf_counter() - started < 4.0


def test_not_a_workbook():
    for data in (b"PK\x03\x04garbage", b"\xd0\xcf\x11\xe0" + b"\x00" * 100):
        with pytest.raises(SheetError, match="not"):
            read_table_bytes(data, "xlsx")
    with pytest.raises(SheetError, match="workbook.xml"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("content.xml", "<office:document/>")
        read_table_bytes(buffer.getvalue(), "xlsx")


def test_an_ordinary_workbook_with_pictures_and_a_big_second_sheet_reads_as_before(tmp_path):
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True})
    first = workbook.add_worksheet("prompts")
    for col, name in enumerate(["prompt", "n", "日期"]):
        first.write_string(0, col, name)
    first.write_string(1, 0, "多行\n提示词")
    first.write_number(1, 1, 2)
    first.write_string(3, 0, "after a blank row")
    first.insert_image(1, 4, "p.png", {"image_data": io.BytesIO(png_bytes())})
    second = workbook.add_worksheet("other")
    second.write_string(30_000, 300, "far away, but not in the first sheet")
    workbook.close()
    table = read_table_bytes(buffer.getvalue(), "xlsx")
    assert table.header == ["prompt", "n", "日期"]
    assert table.rows == [
        {"prompt": "多行\n提示词", "n": "2", "日期": ""},
        {"prompt": "after a blank row", "n": "", "日期": ""},
    ]


# CSV and JSONL: streamed, and refused at the bound ----------------------------------------------


def _peak_rss_growth_mb(action) -> float:  # type: ignore[no-untyped-def]
    """This process's peak RSS growth while ``action`` runs (sampled every 5 ms)."""
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return (peak - before) / 1e6


def test_a_very_wide_csv_row_is_refused_by_the_column_cap_not_padded():
    data = wide_csv()
    assert len(data) < 48_000
    with pytest.raises(SheetTooLarge, match="line 1 has 20,000 columns"):
        read_table_bytes(data, "csv")
    late = b"prompt\n" + b"x\n" * 3_000 + b"," * 40_000 + b"\n"
    with pytest.raises(SheetTooLarge, match="line 3002 has 40,001 columns"):
        read_table_bytes(late, "csv")


def test_csv_rows_padded_cells_and_cell_size_are_capped_while_reading():
    with pytest.raises(SheetTooLarge, match="more than 20,000 rows"):
        read_table_bytes(b"prompt\n" + b"x\n" * 20_001, "csv")
    header = b",".join(b"c%d" % i for i in range(200)) + b"\n"
    with pytest.raises(SheetTooLarge, match="cells read"):
        read_table_bytes(header + b"x\n" * 6_000, "csv")
    with pytest.raises(SheetTooLarge, match="characters"):
        read_table_bytes(b"prompt\n" + b"x" * 200_000 + b"\n", "csv")
    with pytest.raises(SheetTooLarge, match="characters"):
        read_table_bytes(b"prompt\n" + b"x" * 2_000 + b"\n", "csv", limits=SheetLimits(max_cell_chars=1_000))


def test_the_padded_cells_bound_holds_memory_down():
    header = b",".join(b"c%d" % i for i in range(200)) + b"\n"
    data = header + b"x\n" * 23_000
    growth = _peak_rss_growth_mb(lambda: pytest.raises(SheetTooLarge, read_table_bytes, data, "csv"))
    assert growth < 100


def test_jsonl_keys_columns_lines_and_cells_are_capped_while_reading():
    assert len(wide_jsonl()) < 73_000
    with pytest.raises(SheetTooLarge, match="4,000 keys"):
        read_table_bytes(wide_jsonl(), "jsonl")
    many_lines = "\n".join(json.dumps({f"k{i}": 1}) for i in range(300)).encode()
    with pytest.raises(SheetTooLarge, match="more than 200 columns"):
        read_table_bytes(many_lines, "jsonl")
    with pytest.raises(SheetTooLarge, match="line 1 has"):
        read_table_bytes(json.dumps({"prompt": "x" * 2_000_000}).encode(), "jsonl")
    with pytest.raises(SheetTooLarge, match="key 'prompt'"):
        read_table_bytes(json.dumps({"prompt": "x" * 200_000}).encode(), "jsonl")
    with pytest.raises(SheetError, match="not JSON"):
        read_table_bytes(b"[" * 100_000, "jsonl")


def test_ordinary_csv_and_jsonl_read_as_before():
    gbk = "提示词\t调用人\r\n一只香蕉\t张三\r\n".encode("gb18030")
    table = read_table_bytes(gbk, "csv")
    assert table.header == ["提示词", "调用人"] and table.rows == [{"提示词": "一只香蕉", "调用人": "张三"}]
    quoted = '\ufeffprompt,refs\r\n"two\nlines",a.png\r,\r\nlast,\r'.encode()
    table = read_table_bytes(quoted, "csv")
    assert table.rows == [{"prompt": "two\nlines", "refs": "a.png"}, {"prompt": "last", "refs": ""}]
    assert read_table_bytes(b"", "csv").header == []
    lines = '{"prompt": "a\u2028b", "n": 2}\n\n{"refs": ["x.png", "y.png"]}\n'.encode()
    table = read_table_bytes(lines, "jsonl")
    assert table.header == ["prompt", "n", "refs"]
    assert table.rows == [
        {"prompt": "a\u2028b", "n": "2", "refs": ""},
        {"prompt": "", "n": "", "refs": "x.png\ny.png"},
    ]
    old_mac = b'{"prompt": "a"}\r{"prompt": "b"}\r'  # lines end as CSV lines may: \r\n, \r or \n
    assert read_table_bytes(old_mac, "jsonl").rows == [{"prompt": "a"}, {"prompt": "b"}]


# templates: bounded in a child process --------------------------------------------------------


def _children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children() if child.is_running()]


def test_string_multiplication_is_refused_before_it_allocates():
    started = time.perf_counter()
    with pytest.raises(TemplateRejected, match="50,000,000") as caught:
        render_all("{{ 'x' * 50000000 }}", [{"product": str(i)} for i in range(4)], FAST)
    assert time.perf_counter() - started < 5
    assert caught.value.kind is ErrorKind.INVALID_INPUT


def test_a_nested_loop_is_stopped_by_the_wall_clock_and_the_child_killed():
    loop = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
    before = {child.pid for child in _children()}
    started = time.perf_counter()
    with pytest.raises(TemplateRejected, match="0.5 s for one row"):
        render_all(loop, [{}], FAST)
    assert time.perf_counter() - started < 5
    assert {child.pid for child in _children()} - before == set()


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{% for a in range(99999) %}{{ product }}{% endfor %}", "longer than 32,000"),
        ("{{ range(99999)|join('xxxxxxxxxx') }}", "longer than"),
        ("{{ 'x'|center(999999999) }}", "memory"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}", "recurses"),
        ("{{ 7 ** 99999999 }}", "exponent"),
    ],
)
def test_output_memory_and_recursion_are_bounded(source, match):
    with pytest.raises(TemplateRejected, match=match):
        render_all(source, [{"product": "banana"}], FAST)


def test_the_batch_output_and_time_are_bounded():
    rows = [{"product": f"p{i}"} for i in range(50)]
    with pytest.raises(TemplateRejected, match="more than 1,000 characters"):
        render_all("{{ product }}" + "x" * 100, rows, TemplateBounds(max_batch_chars=1_000))
    slow = "{% for a in range(300) %}{% for b in range(300) %}{% endfor %}{% endfor %}{{ product }}"
    with pytest.raises(TemplateRejected, match="for this batch"):
        many = [{"product": f"p{i}"} for i in range(2_000)]  # distinct: equal rows render once
        render_all(slow, many, TemplateBounds(row_timeout_s=1.0, batch_timeout_s=0.3))


def test_the_row_timeout_is_per_row_however_many_rows_are_in_flight():
    """Rows of ~7 ms with 1 KB of cells: while more rows waited, the child held its answers until
    its 4 KB buffer filled (~220 rows, 1.5 s), which a 0.3 s row timeout took for one slow row."""
    rows = [{"product": f"p{i}", "notes": "y" * 1000} for i in range(300)]
    loop = "{% for a in range(50000) %}{% endfor %}{{ product }}"
    ahead = render_all(loop, rows, TemplateBounds(row_timeout_s=0.3, batch_timeout_s=30))
    last = ahead.outcome(rows[-1])
    assert last is not None and last.prompt() == "p299"


def test_row_errors_stay_row_errors_and_bounds_refuse_the_batch():
    failing = RowPlanner(ColumnConfig(template="{{ product }} {{ 1 / 0 }}"), default_model="m")
    plan = failing.plan({"product": "a"})
    assert plan.error is not None and "ZeroDivisionError" in plan.error.message
    hostile = RowPlanner(ColumnConfig(template="{{ 'x' * 99999999 }}"), default_model="m")
    with pytest.raises(TemplateRejected):
        hostile.plan({"product": "a"})
    with pytest.raises(ValueError, match="unknown filter"):
        BoundedTemplate("{{ x|no_such_filter }}")
    with pytest.raises(ValueError, match="nested too deeply"):
        BoundedTemplate("{{ " + "(" * 5_000 + "1" + ")" * 5_000 + " }}")


def test_a_stopped_renderer_stays_stopped_and_never_touches_its_closed_pipes():
    template = BoundedTemplate("{{ product }}{{ 'x' * 99999999 if product == 'b' else '' }}", FAST)
    assert template.render({"product": "a"}) == "a"
    for _ in range(3):
        with pytest.raises(TemplateRejected, match="99,999,999"):
            template.render({"product": "b"})
    template.close()
    assert template.render({"product": "a"}) == "a"  # a new child after close()
    template.close()


def test_the_parent_never_compiles_so_constants_are_not_folded_here(monkeypatch):
    """Compiling folds constant expressions (computes them); only the bounded child compiles."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the template was compiled in the parent")

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)
    BoundedTemplate("{{ 'x' * 500000000 }}{{ '%0999999999d' % 1 }}{{ 'x'|center(999999999) }}")


def test_prompts_rendered_ahead_are_used_by_the_planner_without_another_child():
    rows = [{"product": f"banana {i}", "background": "marble"} for i in range(2_000)]
    planner = RowPlanner(ColumnConfig(template="{{ product }} on {{ background }}"), default_model="m")
    started = time.perf_counter()
    planner.prerender(rows)
    elapsed = time.perf_counter() - started
    before = {child.pid for child in _children()}
    plans = [planner.plan(cells) for cells in rows]
    assert [plan.prompt for plan in plans[:2]] == ["banana 0 on marble", "banana 1 on marble"]
    assert {child.pid for child in _children()} - before == set()
    assert elapsed < 15


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_cli_exits_2_for_a_template_over_a_bound_or_a_sheet_over_a_bound(tmp_path, sim, dry_run):
    (tmp_path / "rows.csv").write_text("product\nbanana\n", encoding="utf-8")
    (tmp_path / "wide.csv").write_bytes(wide_csv())
    common = ["--base-url", sim.base_url, "--db", f"sqlite:///{tmp_path / 'jobs.db'}"]
    common += ["--store", f"file://{tmp_path / 'store'}", *(["--dry-run"] if dry_run else [])]
    template = runner.invoke(
        app, ["batch", "run", str(tmp_path / "rows.csv"), "--template", "{{ 'x' * 50000000 }}", *common]
    )
    assert template.exit_code == 2, template.output
    assert "50,000,000" in template.output
    sheet = runner.invoke(app, ["batch", "run", str(tmp_path / "wide.csv"), *common])
    assert sheet.exit_code == 2 and "20,000 columns" in sheet.output, sheet.output
    assert sim.stats()["requests_total"] == 0
