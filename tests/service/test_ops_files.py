"""Operations endpoints, the /files server and usage accounting, over HTTP."""

from __future__ import annotations

import json
import time

import pytest

from bananaline.service.app import create_app

from .conftest import service_settings


def _make_image(http, prompt: str = "ops banana") -> dict:
    response = http.post("/v1/plugin/generate", json={"cleantext": prompt, "aspect_ratio": "1:1"})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_readiness(service):
    with service.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "store": "ok"}


def test_metrics_cover_requests_latency_errors_images_cost_and_in_flight(service, sim):
    token = service.add_caller("metrics-caller")
    with service.client(token) as http:
        _make_image(http)
        http.post("/v1/plugin/generate", json={"cleantext": "no [sim fault=prompt_blocked]"})
        text = http.get("/metrics").text
    assert 'bananaline_http_requests_total{method="POST",route="/v1/plugin/generate",status="200"}' in text
    assert (
        'bananaline_generation_duration_seconds_bucket{image_size="default",le="0.5",model="gemini-3-pro-image-preview"}'
        in text
    )
    assert 'bananaline_generation_errors_total{kind="prompt_blocked"}' in text
    assert 'bananaline_images_total{caller="metrics-caller"} 1.0' in text
    assert 'bananaline_cost_usd_total{caller="metrics-caller"} 0.134' in text
    assert 'bananaline_jobs_in_flight{kind="task"} 0.0' in text


def test_request_id_is_echoed_generated_and_logged(service, sim, captured_log):
    token = service.add_caller()
    with service.client(token) as http:
        headers = {"X-Request-ID": "req-abc.123"}
        echoed = http.post("/v1/plugin/generate", json={"cleantext": "logged banana"}, headers=headers)
        generated = http.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert echoed.headers["x-request-id"] == "req-abc.123"
    assert len(generated.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in captured_log.read_text().splitlines() if "req-abc.123" in line]
    events = {line["event"] for line in lines}
    assert {"http_request", "generation"} <= events
    access = next(line for line in lines if line["event"] == "http_request")
    assert access["route"] == "/v1/plugin/generate" and access["status"] == 200


def test_usage_is_per_caller_and_time_ranged(service, sim):
    token = service.add_caller()
    before = time.time()
    with service.client(token) as http:
        _make_image(http, "usage one")
        _make_image(http, "usage two")
        http.post("/v1/plugin/generate", json={"cleantext": "usage refused [sim fault=finish_SAFETY]"})
        everything = http.get("/v1/usage").json()
        ranged = http.get("/v1/usage", params={"since": before - 3600, "until": time.time() + 1}).json()
        future = http.get("/v1/usage", params={"since": "2999-01-01"}).json()
        bad = http.get("/v1/usage", params={"since": "last tuesday"})
    assert everything["requests"] == 3 and everything["succeeded"] == 2 and everything["images"] == 2
    assert everything["cost_usd"] == pytest.approx(0.268)
    assert everything["errors"] == {"finish_reason": 1}
    assert ranged["requests"] == 3
    assert future["requests"] == 0
    assert bad.status_code == 422
    with service.client() as http:
        assert http.get("/v1/usage").status_code == 401


def test_files_listing_and_path_traversal(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        made = _make_image(http, "file listing banana")
        listing = http.get("/v1/files").json()
        assert [item["url"] for item in listing["files"]] == [made["url"]]
        assert listing["files"][0]["width"] == 1024 and listing["files"][0]["mime"] == "image/png"
        key = made["url"].split("/files/", 1)[1]
        assert http.get(f"/files/{key}").status_code == 200
        metadata_key = key.rsplit(".", 1)[0] + ".json"
        for probe in (
            f"/files/{metadata_key}",
            "/files/../service.db",
            "/files/%2e%2e/service.db",
            "/files/..%2fservice.db",
            "/files/2026/../../service.db",
            "/files//etc/passwd",
            "/files/index/" + key.rsplit("/", 1)[1][:2],
            "/files/",
            "/files/nope.png",
        ):
            response = http.get(probe)
            assert response.status_code == 404, (probe, response.status_code)
        thumb = key.rsplit(".", 1)[0] + ".thumb.webp"
        assert http.get(f"/files/{thumb}").headers["content-type"] == "image/webp"
    with service.client() as http:
        assert http.get("/v1/files").status_code == 401


def test_openapi_imports_cleanly(service, tmp_path):
    with service.client() as http:
        served = http.get("/openapi.json").json()
    assert served["openapi"] == "3.0.3"
    operations = [op for path in served["paths"].values() for op in path.values()]
    ids = [op.get("operationId") for op in operations]
    assert all(ids) and len(ids) == len(set(ids))
    body = served["components"]["schemas"]["PluginRequest"]
    assert set(body["properties"]) == {
        "cleantext",
        "fileurls",
        "aspect_ratio",
        "resolution",
        "apikey",
        "model",
        "wait_s",
    }
    for name, prop in body["properties"].items():
        assert prop.get("type") in {"string", "array", "number"}, name
        assert any("\u4e00" <= ch <= "\u9fff" for ch in prop["description"]), name
        assert any(ch.isascii() and ch.isalpha() for ch in prop["description"]), name
    response = served["components"]["schemas"]["PluginResponse"]
    assert {"analysis", "url", "error", "error_kind", "warnings", "task_id", "status"} <= set(
        response["properties"]
    )
    assert '"type": "null"' not in str(served).replace("'", '"')
    # servers come from the public base URL setting
    settings = service_settings(
        tmp_path, "http://127.0.0.1:9", public_base_url="https://img.example.com/banana"
    )
    schema = create_app(settings).openapi()
    assert schema["servers"][0]["url"] == "https://img.example.com/banana"
