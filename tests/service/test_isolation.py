"""Callers never see each other's things, and no secret is ever written in plain text."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

from .test_batches_api import wait_complete


def test_caller_b_cannot_read_anything_of_caller_a(service, sim):
    token_a, token_b = service.add_caller(), service.add_caller()
    with service.client(token_a) as a:
        task = a.post("/v1/plugin/generate", json={"cleantext": "a's private banana"}).json()
        assert task["analysis"] == "图片生成成功"
        batch_id = a.post("/v1/batches", json={"rows": [{"prompt": "a's batch banana"}]}).json()["batch_id"]
        wait_complete(a, batch_id)
        assert a.get(f"/v1/tasks/{task['task_id']}").status_code == 200
        assert a.get(f"/v1/batches/{batch_id}").status_code == 200
        assert len(a.get("/v1/files").json()["files"]) == 1
        assert a.get("/v1/usage").json()["requests"] == 2
    with service.client(token_b) as b:
        stolen_task = b.get(f"/v1/tasks/{task['task_id']}")
        unknown_task = b.get("/v1/tasks/task_unknownunknownunknown0")
        assert stolen_task.status_code == unknown_task.status_code == 404
        assert stolen_task.json() == unknown_task.json()
        stolen_batch = b.get(f"/v1/batches/{batch_id}")
        unknown_batch = b.get("/v1/batches/0123456789abcdef01234567")
        assert stolen_batch.status_code == unknown_batch.status_code == 404
        assert stolen_batch.json() == unknown_batch.json()
        for path in (
            f"/v1/batches/{batch_id}/export",
            f"/v1/batches/{batch_id}/retry",
            f"/v1/batches/{batch_id}/cancel",
        ):
            response = b.get(path) if path.endswith("export") else b.post(path)
            assert response.status_code == 404, path
        assert b.get("/v1/batches").json()["batches"] == []
        assert b.get("/v1/files").json()["files"] == []
        usage = b.get("/v1/usage").json()
        assert usage["requests"] == 0 and usage["by_model"] == []
    with service.client() as anonymous:
        assert anonymous.get(f"/v1/tasks/{task['task_id']}").status_code == 404


def test_secrets_never_appear_in_logs_responses_or_the_database(service, sim, captured_log):
    service_log = captured_log
    upstream_key = "UPSTREAM-SECRET-" + str(time.time_ns())
    own_key = "OWN-APIKEY-SECRET-" + str(time.time_ns())
    token = service.add_caller(upstream_key=upstream_key)
    responses: list[bytes] = []
    with service.client(token) as http:
        for response in (
            http.post("/v1/plugin/generate", json={"cleantext": "secret check"}),
            http.post("/v1/plugin/generate", json={"cleantext": "secret check 2", "apikey": own_key}),
            http.post("/v1/plugin/generate", json={"cleantext": "auth fail [sim fault=http_401]"}),
            http.post(
                "/v1/plugin/generate", json={"cleantext": "own fail [sim fault=http_403]", "apikey": own_key}
            ),
            http.post(
                "/v1/chat/completions", json={"model": "x!", "messages": [{"role": "user", "content": "x"}]}
            ),
            http.post(
                "/v1beta/models/gemini-3-pro-image-preview:generateContent",
                json={"contents": [{"parts": [{"text": "gemini secret check"}]}]},
            ),
            http.get("/v1/usage"),
            http.get("/v1/files"),
            http.get("/metrics"),
        ):
            responses.append(response.content)
            responses.append(str(response.headers).encode())
        with service.client() as anonymous:
            responses.append(anonymous.get("/v1/usage", params={"key": own_key}).content)
    assert b"generation" in service_log.read_bytes()  # the log really was captured
    db_path = service.settings.db_url.removeprefix("sqlite:///")
    haystacks = {
        "log": service_log.read_bytes(),
        "responses": b"\n".join(responses),
        "db": b"".join(
            Path(path).read_bytes() for path in (db_path, db_path + "-wal") if Path(path).exists()
        ),
    }
    for secret in (token, upstream_key, own_key, token.removeprefix("bl_")):
        for where, data in haystacks.items():
            assert secret.encode() not in data, f"{secret[:6]}… found in {where}"
    # the upstream key is stored, but only as a Fernet ciphertext; the token only as its digest
    with sqlite3.connect(db_path) as conn:
        ciphertexts = [row[0] for row in conn.execute("SELECT upstream_key_enc FROM service_callers")]
        digests = {row[0] for row in conn.execute("SELECT token_hash FROM service_tokens")}
    assert ciphertexts and all(text.startswith("gAAAA") for text in ciphertexts)
    assert hashlib.sha256(token.encode()).hexdigest() in digests
