"""``bananaline batch`` from the command line: Chinese sheets, keys files that never leak,
formula-injection-safe outputs, dry runs, status, export and retry-failed."""

from __future__ import annotations

import io
import json
import logging

from python_calamine import CalamineWorkbook
from typer.testing import CliRunner

from bananaline.cli import app

from .conftest import png_bytes

ALICE_KEY = "alice-secret-key-7f3a9c"
DEFAULT_KEY = "default-secret-key-55e1b0"
runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, ["batch", *args], catch_exceptions=False)
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _keys_file(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[default]\napi_key = "{DEFAULT_KEY}"\n'
        '[callers."张三"]\napi_key_env = "ZHANG_KEY"\nconcurrency = 2\n'
        '[callers."李四"]\napi_key_env = "LISI_KEY_UNSET"\n',
        encoding="utf-8",
    )
    return path


def test_gb18030_sheet_with_mapped_columns_keys_and_report(fast_sim, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ZHANG_KEY", ALICE_KEY)
    monkeypatch.delenv("LISI_KEY_UNSET", raising=False)
    (tmp_path / "图1.png").write_bytes(png_bytes((250, 10, 10)))
    (tmp_path / "图2.png").write_bytes(png_bytes((10, 250, 10)))
    sheet = (
        "提示词,目标图,原图,调用人\r\n"
        '"把图二的衣服换到图一\n保持光线",图1.png,图2.png,张三\r\n'
        '"=HYPERLINK(""http://evil"",""x"")",,,\r\n'
        '"没有密钥的调用方",,,李四\r\n'
    )
    (tmp_path / "任务.csv").write_bytes(sheet.encode("gb18030"))
    common = [
        "--keys",
        str(_keys_file(tmp_path)),
        "--base-url",
        fast_sim.base_url,
        "--store",
        f"file://{tmp_path / 'store'}",
        "--db",
        f"sqlite:///{tmp_path / 'jobs.db'}",
        "--col",
        "prompt=提示词",
        "--col",
        "refs=目标图,原图",
        "--col",
        "caller=调用人",
    ]

    result, output = _invoke("run", "任务.csv", "--out", "结果.xlsx", "--report", "report.html", *common)
    assert result.exit_code == 1, output  # one row has no key
    assert "no_api_key" in output and "LISI_KEY_UNSET" in output

    workbook = CalamineWorkbook.from_filelike(io.BytesIO((tmp_path / "结果.xlsx").read_bytes()))
    matrix = workbook.get_sheet_by_index(0).to_python()
    header = matrix[0]
    assert header[:4] == ["提示词", "目标图", "原图", "调用人"] and header[-1] == "thumbnail"
    status = header.index("status")
    assert [row[status] for row in matrix[1:]] == ["done", "done", "failed"]
    assert matrix[2][0] == "'" + '=HYPERLINK("http://evil","x")'
    assert matrix[1][0] == "把图二的衣服换到图一\n保持光线"

    # the same command resumes with zero upstream calls and can write CSV too
    calls = fast_sim.stats()["requests_total"]
    result, output = _invoke("run", "任务.csv", "--out", "结果.csv", *common)
    assert fast_sim.stats()["requests_total"] == calls
    csv_text = (tmp_path / "结果.csv").read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK" in csv_text and "\n=" not in csv_text and ",=" not in csv_text

    # keys never reach the database, outputs, report or logs
    everything = [
        (tmp_path / name).read_bytes() for name in ("jobs.db", "结果.xlsx", "结果.csv", "report.html")
    ]
    everything += [p.read_bytes() for p in tmp_path.glob("jobs.db*")]
    everything += [p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()]
    everything.append((output + caplog.text).encode())
    for secret in (ALICE_KEY, DEFAULT_KEY):
        assert not any(secret.encode() in blob for blob in everything)
    assert ALICE_KEY not in caplog.text

    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "没有密钥的调用方" in report and "no_api_key" in report

    # status, export and retry-failed
    batch_id = json.loads(_invoke("status", "--db", f"sqlite:///{tmp_path / 'jobs.db'}", "--json")[0].stdout)[
        0
    ]["id"]
    result, output = _invoke("status", batch_id, "--db", f"sqlite:///{tmp_path / 'jobs.db'}")
    assert "done 2" in output and "failed 1" in output
    monkeypatch.setenv("LISI_KEY_UNSET", "lisi-secret-key-000999")
    result, output = _invoke("retry-failed", batch_id, "--db", f"sqlite:///{tmp_path / 'jobs.db'}")
    assert "requeued 1" in output
    result, output = _invoke("run", "任务.csv", "--out", "结果.jsonl", *common)
    assert result.exit_code == 0, output
    rows = [json.loads(line) for line in (tmp_path / "结果.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["status"] for row in rows] == ["done"] * 3
    result, output = _invoke(
        "export", batch_id, "--out", "again.csv", "--db", f"sqlite:///{tmp_path / 'jobs.db'}"
    )
    assert (
        result.exit_code == 0 and (tmp_path / "again.csv").read_text(encoding="utf-8-sig").count("done") == 3
    )


def test_dry_run_prices_rows_and_flags_bad_ones_without_calling_a_model(fast_sim, tmp_path, monkeypatch):
    monkeypatch.delenv("ZHANG_KEY", raising=False)
    (tmp_path / "ok.png").write_bytes(png_bytes())
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    (tmp_path / "in.jsonl").write_text(
        "\n".join(
            json.dumps(row, ensure_ascii=False)
            for row in [
                {"prompt": "a", "refs": ["ok.png"], "n": 2, "size": "4K"},
                {"prompt": "b", "refs": "fake.png"},
                {"prompt": "c", "aspect_ratio": "7:3"},
                {"prompt": "d", "caller": "张三"},
                {"prompt": "e", "model": "gemini-2.5-flash-image"},
            ]
        ),
        encoding="utf-8",
    )
    result, output = _invoke(
        "run", "in.jsonl", "--dry-run", "--keys", str(_keys_file(tmp_path)), "--base-url", fast_sim.base_url
    )
    assert result.exit_code == 2, output
    assert fast_sim.stats()["requests_total"] == 0
    assert "0.519" in output  # 2 × 0.24 (4K pro) + 0.039 (2.5 flash)
    assert "row 3" in output and "reference_error" in output
    assert "row 4" in output and "invalid_input" in output
    assert "row 5" in output and "no_api_key" in output
