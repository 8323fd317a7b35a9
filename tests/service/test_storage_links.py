"""Where the service's images go and which links callers get, through ``delivery.store_result``:

* a ``file://`` store is served by the app: image and thumbnail links are ``/files/…`` URLs;
* a remote store (S3, here moto on loopback) hands out its own (presigned) URLs;
* a store that refuses the upload leaves the image in the spool: the caller gets a ``storage``
  failure and never a path on the server's disk.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
from pydantic import SecretStr

from .conftest import RunningService, service_settings
from .helpers import image_size

ACCESS_KEY_ID = "AKIDSERVICESTORETEST"
SECRET_ACCESS_KEY = "service-store-secret-5d1e"


def _s3_service(tmp_path: Path, simulator: Any, store_url: str) -> RunningService:
    settings = service_settings(
        tmp_path,
        simulator.base_url,
        store_url=store_url,
        s3_access_key_id=SecretStr(ACCESS_KEY_ID),
        s3_secret_access_key=SecretStr(SECRET_ACCESS_KEY),
        store_upload_attempts=1,
        store_backoff_initial_s=0.01,
    )
    return RunningService(settings).start()


def test_file_store_links_image_and_thumbnail_under_files(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        body = {"cleantext": "a linked banana", "aspect_ratio": "16:9"}
        answer = http.post("/v1/plugin/generate", json=body)
        assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text
        (record,) = http.get("/v1/files").json()["files"]
        assert record["url"] == answer.json()["url"]
        assert record["url"].startswith(service.base_url + "/files/")
        assert record["thumbnail_url"].startswith(service.base_url + "/files/")
        image, thumbnail = http.get(record["url"]), http.get(record["thumbnail_url"])
    assert image.status_code == thumbnail.status_code == 200
    assert image_size(image.content) == (1376, 768)
    assert max(image_size(thumbnail.content)) <= service.settings.thumbnail_px


def test_s3_store_answers_the_stores_own_urls(sim, simulator, tmp_path, moto_endpoint):
    bucket = f"service-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    running = _s3_service(tmp_path, simulator, f"s3://{bucket}/images?endpoint={moto_endpoint}")
    try:
        with running.client(running.add_caller()) as http:
            answer = http.post("/v1/plugin/generate", json={"cleantext": "a banana in a bucket"}).json()
            (record,) = http.get("/v1/files").json()["files"]
    finally:
        running.stop()
    assert answer["status"] == "done", answer
    assert answer["url"].startswith(f"{moto_endpoint}/{bucket}/images/")
    assert record["url"] == answer["url"] and record["thumbnail_url"].startswith(moto_endpoint)
    fetched = httpx.get(answer["url"], trust_env=False)
    assert fetched.status_code == 200 and image_size(fetched.content) == (1024, 1024)


def test_a_refused_upload_is_a_storage_failure_without_server_paths(sim, simulator, tmp_path, moto_endpoint):
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint={moto_endpoint}"
    running = _s3_service(tmp_path, simulator, missing_bucket)
    try:
        with running.client(running.add_caller()) as http:
            response = http.post("/v1/plugin/generate", json={"cleantext": "a banana with nowhere to go"})
            (record,) = http.get("/v1/files").json()["files"]
    finally:
        running.stop()
    answer = response.json()
    assert answer["status"] == "failed" and answer["error_kind"] == "storage"
    assert answer["url"] == "" and answer["urls"] == []
    assert "stored_locally" in answer["warnings"]
    assert record["url"] is None and record["thumbnail_url"] is None
    spool = str(running.settings.spool_dir)
    assert spool not in response.text and str(tmp_path) not in response.text
    assert any((running.settings.spool_dir).rglob("*.png"))  # the image is kept, to be flushed later
