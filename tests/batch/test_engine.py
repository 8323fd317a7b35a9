"""The engine end to end over the simulator: a 200-row sheet with everything in it, resume,
retry, cancel, owners, exports and the HTML report."""

from __future__ import annotations

import io
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from python_calamine import CalamineWorkbook

from bananaline.batch.engine import BatchEngine, BatchNotFound
from bananaline.batch.keys import CallerKey, KeyRing
from bananaline.batch.report import render_html
from bananaline.batch.sheets import read_table_bytes

from .conftest import data_uri, png_bytes

CALLERS = ("alice", "bob", "", "carol")  # carol has no key
FAULTS = {
    5: "text_watermark_en",
    7: "http_429 times=1 retry_after=0.1",
    9: "finish_SAFETY",
    11: "prompt_blocked",
}


def keyring() -> KeyRing:
    return KeyRing(
        {
            "alice": CallerKey(api_key=SecretStr("alice-key-0001"), concurrency=8),
            "bob": CallerKey(api_key=SecretStr("bob-key-0002"), concurrency=12),
        },
        default=CallerKey(api_key=SecretStr("default-key-0003")),
    )


def make_rows(count: int, ref_dir: Path) -> list[dict[str, str]]:
    ref_dir.mkdir(exist_ok=True)
    for k in range(5):
        (ref_dir / f"r{k}.png").write_bytes(png_bytes((40 * k, 90, 200)))
    uri = data_uri((10, 200, 30))
    rows = []
    for i in range(count):
        fault = FAULTS.get(i % 25)
        prompt = f"row {i}: a banana on a desk" + (f" [sim fault={fault}]" if fault else "")
        if i % 3 == 0:
            refs = uri
        elif i % 6 == 1:
            refs = f"refs/r{i % 5}.png, refs/r{(i + 1) % 5}.png"
        elif i % 3 == 1:
            refs = f"refs/r{i % 5}.png"
        else:
            refs = ""
        rows.append(
            {
                "prompt": prompt,
                "refs": refs,
                "caller": CALLERS[i % 4],
                "model": "",
                "aspect_ratio": "7:3" if i == 14 else "1:1",
                "size": "1K",
                "n": "abc" if i == 18 else ("2" if i % 10 == 0 else ""),
            }
        )
    return rows


def expected(i: int) -> tuple[str, str | None]:
    if i == 18:
        return "failed", "invalid_input"
    if CALLERS[i % 4] == "carol":
        return "failed", "no_api_key"
    if i == 14:
        return "failed", "invalid_input"
    return {
        5: ("failed", "text_response"),
        9: ("failed", "finish_reason"),
        11: ("failed", "prompt_blocked"),
    }.get(i % 25, ("done", None))


async def test_two_hundred_rows_finish_with_the_right_outcome_and_a_rerun_calls_nothing(
    fast_sim, settings_for, tmp_path
):
    settings = settings_for(fast_sim)
    engine = BatchEngine(settings, keyring=keyring())
    rows = make_rows(200, tmp_path / "refs")
    batch_id = engine.create_batch(rows, base_dir=tmp_path, name="two-hundred")
    assert engine.create_batch(rows, base_dir=tmp_path) == batch_id  # idempotent by content

    snapshots = []
    started = time.perf_counter()
    summary = await engine.run(batch_id, concurrency=32, on_progress=snapshots.append)
    elapsed_s = time.perf_counter() - started
    print(f"\n200 rows ({summary.images_total} images) in {elapsed_s:.2f}s = {200 / elapsed_s:.1f} rows/s")

    status = engine.status(batch_id)
    assert len(status.rows) == 200 and all(row.terminal for row in status.rows)
    for row in status.rows:
        want_status, want_kind = expected(row.row_index)
        assert (row.status, row.error_kind) == (want_status, want_kind), row
        if want_status == "done":
            n = 2 if row.row_index % 10 == 0 else 1
            assert len(row.images) == n and row.cost_usd == pytest.approx(0.134 * n)
            assert all(Path(urlsplit(image.url).path).is_file() for image in row.images)
            assert row.images[0].thumbnail_url
        else:
            assert not row.images and row.error
    retried = [
        row for row in status.rows if row.row_index % 25 == 7 and CALLERS[row.row_index % 4] != "carol"
    ]
    assert retried and all(row.attempts == 2 for row in retried)
    assert status.rows[5].error_kind == "text_response"
    assert "watermark" in (status.rows[5].error or "")
    assert status.rows[9].error_detail == "SAFETY"

    stats = fast_sim.stats()
    keys_seen = {kid for kid, entry in stats["keys"].items() if entry["requests"]}
    assert len(keys_seen) == 3  # alice, bob, default; carol never reached the upstream
    assert snapshots[-1].finished == snapshots[-1].total == sum(2 if i % 10 == 0 else 1 for i in range(200))
    assert summary.rows_by_status == {
        "done": sum(1 for i in range(200) if expected(i)[0] == "done"),
        "failed": sum(1 for i in range(200) if expected(i)[0] == "failed"),
    }
    assert summary.errors_by_kind["no_api_key"].count == 50
    assert set(summary.cost_by_caller) == {"alice", "bob", "(default)"}
    assert summary.latency_p50_s is not None and summary.latency_p95_s >= summary.latency_p50_s

    before = stats["requests_total"]
    again = await engine.run(batch_id, concurrency=32)
    assert fast_sim.stats()["requests_total"] == before
    assert again.run_jobs_finished == 0 and again.rows_by_status == summary.rows_by_status

    out = read_table_bytes(engine.export(batch_id, "csv"), "csv")
    assert [r["prompt"] for r in out.rows] == [r["prompt"] for r in rows]
    assert out.header[:7] == list(rows[0]) and out.header[7:] == [
        "status",
        "image_url",
        "thumbnail_url",
        "error_kind",
        "error",
        "warnings",
        "attempts",
        "latency_s",
        "cost_usd",
    ]
    assert len(out.rows[0]["image_url"].splitlines()) == 2
    assert out.rows[3]["status"] == "failed" and out.rows[3]["error_kind"] == "no_api_key"
    engine.close()


async def test_retry_failed_cancel_and_owner_isolation(fast_sim, settings_for):
    settings = settings_for(fast_sim)
    ring = KeyRing({"alice": CallerKey(api_key=SecretStr("alice-key-0001"))})
    engine = BatchEngine(settings, keyring=ring)
    rows = [{"prompt": f"p{i}", "caller": "bob" if i < 2 else "alice"} for i in range(6)]
    mine = engine.create_batch(rows, owner="team-a")
    theirs = engine.create_batch(rows, owner="team-b")
    assert mine != theirs
    assert [b.id for b in engine.list_batches(owner="team-a")] == [mine]
    with pytest.raises(BatchNotFound):
        engine.status(mine, owner="team-b")

    first = await engine.run(mine)
    assert first.rows_by_status == {"done": 4, "failed": 2}
    calls = fast_sim.stats()["requests_total"]
    ring.entries["bob"] = CallerKey(api_key=SecretStr("bob-key-0002"))
    assert engine.retry_failed(mine, owner="team-a") == 2
    second = await engine.run(mine)
    assert second.rows_by_status == {"done": 6}
    assert fast_sim.stats()["requests_total"] == calls + 2

    assert engine.cancel(theirs) == 6
    cancelled = await engine.run(theirs)
    assert cancelled.rows_by_status == {"cancelled": 6} and cancelled.run_jobs_finished == 0
    engine.close()


async def test_xlsx_export_embeds_thumbnails_and_the_report_escapes_hostile_text(fast_sim, settings_for):
    settings = settings_for(fast_sim, api_key="k-default-0001")
    engine = BatchEngine(settings)
    hostile = "<script>alert(1)</script> banana"
    rows = [{"prompt": hostile}, {"prompt": "<img src=x onerror=alert(2)> [sim fault=finish_SAFETY]"}]
    batch_id = engine.create_batch(rows)
    summary = await engine.run(batch_id)
    payload = engine.export(batch_id, "xlsx")
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(payload))
    matrix = workbook.get_sheet_by_index(0).to_python()
    assert matrix[0][0] == "prompt" and matrix[0][-1] == "thumbnail" and matrix[1][1] == "done"
    import zipfile

    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert len([n for n in archive.namelist() if n.startswith("xl/media/")]) == 1

    html = render_html(summary, engine.status(batch_id, with_previews=True).rows)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "data:image/jpeg;base64," in html and "finish_reason" in html
    engine.close()
