"""The jobs API over HTTP: JSON rows and uploads in, per-row status, exports, retry, cancel."""

from __future__ import annotations

import csv
import io
import time

import httpx
from python_calamine import CalamineWorkbook

from .helpers import upstream_requests


def wait_complete(http: httpx.Client, batch_id: str, *, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = http.get(f"/v1/batches/{batch_id}").json()
        if body["batch"]["complete"] and not body["running_here"]:
            return body
        assert time.monotonic() < deadline, body["batch"]
        time.sleep(0.1)


def test_json_rows_run_to_per_row_results_and_export(service, sim):
    upstream_key = "upstream-key-for-jobs-json"
    token = service.add_caller(upstream_key=upstream_key, concurrency=3)
    rows = [
        {"prompt": "banana one", "aspect_ratio": "1:1"},
        {"prompt": "banana two", "aspect_ratio": "16:9", "size": "2K"},
        {"prompt": "refused [sim fault=prompt_blocked]"},
        {"prompt": '=HYPERLINK("http://evil","x")'},
    ]
    with service.client(token) as http:
        submitted = http.post("/v1/batches", json={"rows": rows, "name": "json batch"})
        assert submitted.status_code == 202, submitted.text
        batch_id = submitted.json()["batch_id"]
        status = wait_complete(http, batch_id)
        by_prompt = {row["cells"]["prompt"]: row for row in status["rows"]}
        assert by_prompt["banana one"]["status"] == "done"
        image = by_prompt["banana two"]["images"][0]
        assert (image["width"], image["height"]) == (2752, 1536)
        assert image["url"].startswith(service.base_url + "/files/")
        assert http.get(image["url"]).status_code == 200
        assert by_prompt["refused [sim fault=prompt_blocked]"]["error_kind"] == "prompt_blocked"
        listing = http.get("/v1/batches").json()["batches"]
        assert [b["id"] for b in listing] == [batch_id]
        exported = http.get(f"/v1/batches/{batch_id}/export", params={"format": "csv"})
        assert exported.status_code == 200
        table = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
        assert [row["status"] for row in table] == ["done", "done", "failed", "done"]
        assert table[3]["prompt"].startswith("'=")
        assert table[0]["image_url"].startswith(service.base_url + "/files/")
        xlsx = http.get(f"/v1/batches/{batch_id}/export", params={"format": "xlsx"})
        sheet = CalamineWorkbook.from_filelike(io.BytesIO(xlsx.content)).get_sheet_by_index(0).to_python()
        assert len(sheet) == 5 and "status" in sheet[0]
        usage = http.get("/v1/usage").json()
        assert usage["images"] == 3
    assert upstream_requests(sim, upstream_key) == 4


def test_upload_csv_retry_and_cancel(service, sim):
    token = service.add_caller()
    sheet = "提示词,size\nflaky banana [sim fault=http_500 times=2],1K\nsteady banana,1K\n".encode("gb18030")
    with service.client(token) as http:
        submitted = http.post(
            "/v1/batches/upload",
            files={"file": ("sheet.csv", sheet, "text/csv")},
            data={"columns": '{"prompt": "提示词"}'},
        )
        assert submitted.status_code == 202, submitted.text
        batch_id = submitted.json()["batch_id"]
        first = wait_complete(http, batch_id)
        assert sorted(row["status"] for row in first["rows"]) == ["done", "failed"]
        retried = http.post(f"/v1/batches/{batch_id}/retry").json()
        assert retried["changed"] == 1
        second = wait_complete(http, batch_id)
        assert [row["status"] for row in second["rows"]] == ["done", "done"]
        # cancel: a slow batch has queued rows; cancelling leaves none queued
        slow = http.post(
            "/v1/batches", json={"rows": [{"prompt": f"slow {i} [sim latency=0.5]"} for i in range(8)]}
        ).json()["batch_id"]
        cancelled = http.post(f"/v1/batches/{slow}/cancel").json()
        assert cancelled["changed"] >= 1
        final = wait_complete(http, slow)
        assert final["batch"]["jobs_by_status"].get("queued", 0) == 0


def test_bad_uploads_and_rows_are_422(service, sim):
    token = service.add_caller()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with service.client(token) as http:
        not_sheet = http.post("/v1/batches/upload", files={"file": ("cat.png", png, "image/png")})
        fake_xlsx = http.post(
            "/v1/batches/upload", files={"file": ("x.xlsx", b"PK\x03\x04garbage", "application/zip")}
        )
        empty = http.post("/v1/batches/upload", files={"file": ("x.csv", b"", "text/csv")})
        no_prompt_column = http.post("/v1/batches", json={"rows": [{"text": "x"}]})
        no_rows = http.post("/v1/batches", json={"rows": []})
        bad_columns = http.post(
            "/v1/batches/upload",
            files={"file": ("x.csv", b"prompt\nx\n", "text/csv")},
            data={"columns": "{nope"},
        )
        too_big = http.post(
            "/v1/batches/upload",
            files={
                "file": ("big.csv", b"prompt\n" + b"x" * (service.settings.max_upload_bytes + 1), "text/csv")
            },
        )
    for response in (not_sheet, fake_xlsx, empty, no_prompt_column, no_rows, bad_columns):
        assert response.status_code == 422, response.text
    assert too_big.status_code == 413
    assert sim.stats()["requests_total"] == 0


def test_jobs_need_a_token_and_a_budget(service, sim):
    with service.client() as http:
        assert http.post("/v1/batches", json={"rows": [{"prompt": "x"}]}).status_code == 401
        assert http.get("/v1/batches").status_code == 401
    token = service.add_caller(budget_usd=0.3)
    with service.client(token) as http:
        response = http.post("/v1/batches", json={"rows": [{"prompt": f"b{i}"} for i in range(3)]})
    assert response.status_code == 402
    assert response.json()["error"]["kind"] == "budget_exceeded"
    assert sim.stats()["requests_total"] == 0


def test_first_release_paths_still_answer_but_are_not_documented(service, sim):
    """``/v1/jobs`` was the first name of ``/v1/batches``: it still works, hidden from the schema."""
    token = service.add_caller()
    with service.client(token) as http:
        submitted = http.post("/v1/jobs", json={"rows": [{"prompt": "an old client's banana"}]})
        assert submitted.status_code == 202, submitted.text
        batch_id = submitted.json()["batch_id"]
        assert http.get(f"/v1/jobs/{batch_id}").json()["batch"]["id"] == batch_id
        wait_complete(http, batch_id)
        paths = http.get("/openapi.json").json()["paths"]
    assert "/v1/batches" in paths and not any(path.startswith("/v1/jobs") for path in paths)
