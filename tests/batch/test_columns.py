"""How a sheet row becomes a request: column mapping, reference cells, merged prompts, templates."""

from __future__ import annotations

import pytest

from bananaline.batch.columns import ColumnConfig, RowPlanner, split_merged_prompt, split_refs
from bananaline.errors import ErrorKind

from .conftest import data_uri


def planner(**config) -> RowPlanner:
    return RowPlanner(ColumnConfig(**config), default_model="gemini-3-pro-image-preview")


def test_reference_cells_split_on_newlines_commas_and_spaces_but_keep_data_uris_whole():
    uri = data_uri()
    cell = f"a.png, b.png\nhttps://x.test/y.jpg  {uri}，c.jpg、d.webp"
    assert split_refs(cell) == ["a.png", "b.png", "https://x.test/y.jpg", uri, "c.jpg", "d.webp"]
    assert split_refs("") == [] and split_refs(None) == []


def test_merged_prompt_cell_is_split_into_prompt_and_trailing_url_lines():
    cell = "把图二的衣服换到图一的模特身上\n保持光线一致\nhttps://a.test/1.png\nhttps://a.test/2.png\n"
    prompt, refs = split_merged_prompt(cell)
    assert prompt == "把图二的衣服换到图一的模特身上\n保持光线一致"
    assert refs == ["https://a.test/1.png", "https://a.test/2.png"]
    # a URL inside a sentence is part of the prompt
    assert split_merged_prompt("make it like https://a.test/x.png please") == (
        "make it like https://a.test/x.png please",
        [],
    )


def test_chinese_columns_and_several_reference_columns_are_mapped(tmp_path):
    columns = ColumnConfig().with_mappings(["prompt=提示词", "refs=目标图,原图", "caller=调用人"])
    plan = RowPlanner(columns, default_model="m", base_dir=tmp_path).plan(
        {
            "提示词": "换装\nhttps://a.test/0.png",
            "目标图": "t1.png\nt2.png",
            "原图": "https://a.test/s.png",
            "调用人": " 张三 ",
        }
    )
    assert plan.error is None
    assert plan.prompt == "换装" and plan.caller == "张三" and plan.model == "m"
    assert plan.references == (
        "https://a.test/0.png",
        str(tmp_path / "t1.png"),
        str(tmp_path / "t2.png"),
        "https://a.test/s.png",
    )


def test_template_renders_from_the_row_and_a_missing_column_is_a_row_error():
    rows = planner(template="{{ product }} on {{ background }}, {{ row['风格 名'] }}")
    ok = rows.plan({"product": "a banana", "background": "marble", "风格 名": "studio"})
    assert ok.error is None and ok.prompt == "a banana on marble, studio"
    bad = rows.plan({"product": "a banana", "风格 名": "x"})
    assert bad.error is not None and bad.error.kind is ErrorKind.INVALID_INPUT
    assert "background" in bad.error.message


def test_template_sandbox_refuses_reaching_into_python():
    hostile = planner(template="{{ ().__class__.__mro__[1].__subclasses__() }}")
    plan = hostile.plan({})
    assert plan.error is not None and plan.error.kind is ErrorKind.INVALID_INPUT
    # a hostile *cell* is just text
    cell = planner(template="{{ product }}").plan({"product": "{{ 7*7 }}"})
    assert cell.prompt == "{{ 7*7 }}"


def test_broken_template_is_rejected_for_the_whole_batch():
    with pytest.raises(ValueError, match="template"):
        planner(template="{{ unclosed")


@pytest.mark.parametrize(("cell", "n"), [("", 1), ("2", 2), ("3.0", 3)])
def test_variants(cell, n):
    assert planner().plan({"prompt": "x", "n": cell}).n == n


@pytest.mark.parametrize("cell", ["0", "99", "two", "1.5"])
def test_bad_variants_fail_the_row(cell):
    plan = planner().plan({"prompt": "x", "n": cell})
    assert plan.error is not None and plan.error.detail == "n"


def test_blank_prompt_and_local_refs_when_forbidden_fail_the_row():
    assert planner().plan({"prompt": "  "}).error.detail == "prompt"
    strict = RowPlanner(ColumnConfig(), default_model="m", allow_local_refs=False)
    assert strict.plan({"prompt": "x", "refs": "/etc/passwd"}).error.detail == "reference"
    assert strict.plan({"prompt": "x", "refs": "https://a.test/x.png"}).error is None


def test_column_config_from_toml(tmp_path):
    path = tmp_path / "batch.toml"
    path.write_text(
        'template = "{{ 产品 }}"\n[columns]\nrefs = ["目标图", "原图"]\ncaller = "调用人"\n', encoding="utf-8"
    )
    config = ColumnConfig.from_toml(path)
    assert config.refs == ("目标图", "原图") and config.caller == "调用人" and config.template == "{{ 产品 }}"
