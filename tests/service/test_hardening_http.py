"""The service's outer ring under hostile input, over real HTTP: big data URIs, forged Host and
X-Forwarded-* headers, /metrics and /docs exposure, token probing on task ids (issue 8)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from .serve_process import ServeProcess, Watch

BIG_DATA_URI_BYTES = 24 * 1024 * 1024
OWN_KEY = "sk-own-upstream-key-0123456789"


def _percent_encoded_body(total_bytes: int) -> bytes:
    """A plugin request whose one reference is a ``data:`` URI of ``%41`` escapes (~total_bytes)."""
    head = b'{"cleantext": "a cat", "fileurls": ["data:image/png,'
    tail = b'"]}'
    return head + b"%41" * ((total_bytes - len(head) - len(tail)) // 3) + tail


@pytest.fixture(scope="module")
def served(simulator, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve-hardening")
    with ServeProcess(root, simulator.base_url, max_upload_bytes=str(40 * 1024 * 1024)) as server:
        yield server


def _post_big(server: ServeProcess, token: str) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as http:
        return http.post(
            "/v1/plugin/generate",
            content=_percent_encoded_body(BIG_DATA_URI_BYTES),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )


def test_big_percent_encoded_data_uri_with_own_key_is_refused_early(served: ServeProcess) -> None:
    """Item 4: a 24 MB data URI from a caller without a service token is a 413 (the lower body
    limit for own-key callers), the server's memory stays flat and /healthz keeps answering."""
    with Watch(served) as watch:
        response = _post_big(served, OWN_KEY)
    print(f"own key: RSS +{watch.rss_growth_mb:.0f} MB, slowest /healthz {watch.slowest_health_s:.3f} s")
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["kind"] == "payload_too_large"
    assert "MAX_UNAUTHENTICATED_BODY_BYTES" in response.json()["error"]["message"]
    assert watch.slowest_health_s < 1.0 and watch.health_failures == 0
    assert watch.rss_growth_mb < 150
    assert httpx.get(served.base_url + "/healthz", trust_env=False).status_code == 200


def test_big_percent_encoded_data_uri_with_token_is_decoded_off_the_loop(served: ServeProcess) -> None:
    """Item 4, token side: the body limit lets it in, so the decode itself must be bounded and off
    the event loop: a clear 4xx (it is not an image), flat memory, /healthz answering."""
    token = served.add_caller("big-data-uri")
    with Watch(served) as watch:
        response = _post_big(served, token)
    print(f"token: RSS +{watch.rss_growth_mb:.0f} MB, slowest /healthz {watch.slowest_health_s:.3f} s")
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["error_kind"] == "reference_error"
    assert watch.slowest_health_s < 1.0 and watch.health_failures == 0
    assert watch.rss_growth_mb < 150


def test_small_data_uri_with_own_key_still_gets_through_the_body_limit(served: ServeProcess) -> None:
    with httpx.Client(base_url=served.base_url, timeout=60, trust_env=False) as http:
        response = http.post(
            "/v1/plugin/generate",
            content=_percent_encoded_body(64 * 1024),
            headers={"Authorization": f"Bearer {OWN_KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 422, response.text[:300]
    assert response.json()["error_kind"] == "reference_error"


def test_chunked_body_over_the_own_key_limit_is_cut_while_reading(served: ServeProcess) -> None:
    """No Content-Length to trust: the limit is counted as the body streams in."""

    def chunks():
        for _ in range(24):
            yield b"x" * (1024 * 1024)

    with Watch(served) as watch, httpx.Client(base_url=served.base_url, timeout=60, trust_env=False) as http:
        response = http.post(
            "/v1/plugin/generate",
            content=chunks(),
            headers={"x-goog-api-key": "own-upstream-key-0123456789", "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert watch.rss_growth_mb < 150


@pytest.fixture(scope="module")
def locked_down(simulator, tmp_path_factory: pytest.TempPathFactory):
    """A server that trusts no loopback proxy (``serve --forwarded-allow-ips``), allows one Host and
    guards /metrics with a token."""
    root = tmp_path_factory.mktemp("serve-locked")
    with ServeProcess(
        root,
        simulator.base_url,
        args=["--forwarded-allow-ips", "10.0.0.0/8, 192.168.7.7"],
        allowed_hosts='["img.local:8080"]',
        metrics_token=METRICS_TOKEN,
    ) as server:
        yield server


METRICS_TOKEN = "metrics-token-7f3a9c1e5b"


def _generate(server: ServeProcess, token: str, **headers: str) -> tuple[str, list[str]]:
    """One image: the link answered, and the links stored for this caller (``/v1/files``)."""
    with httpx.Client(base_url=server.base_url, timeout=60, trust_env=False) as http:
        answer = http.post(
            "/v1/plugin/generate",
            json={"cleantext": "a linked banana", "aspect_ratio": "1:1"},
            headers={"Authorization": f"Bearer {token}", **headers},
        )
        assert answer.status_code == 200 and answer.json()["status"] == "done", answer.text
        files = http.get("/v1/files", headers={"Authorization": f"Bearer {token}"}).json()["files"]
    return answer.json()["url"], [record["url"] for record in files]


def test_a_forged_host_header_never_chooses_the_links(served: ServeProcess, sim) -> None:
    token = served.add_caller("forged-host")
    url, stored = _generate(served, token, Host="evil.example")
    assert url.startswith(served.base_url + "/files/"), url
    assert stored == [url]


def test_a_trusted_proxy_chooses_scheme_host_and_prefix(served: ServeProcess, sim) -> None:
    token = served.add_caller("behind-proxy")
    url, stored = _generate(
        served,
        token,
        **{
            "X-Forwarded-Host": "img.example.com",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Prefix": "/banana",
        },
    )
    assert url.startswith("https://img.example.com/banana/files/"), url
    assert stored == [url]


def test_untrusted_peers_forwarded_headers_are_ignored_and_allowed_hosts_honoured(
    locked_down: ServeProcess, sim
) -> None:
    token = locked_down.add_caller("untrusted-proxy")
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "Host": "evil.example"}
    url, _ = _generate(locked_down, token, **forged)
    assert url.startswith(locked_down.base_url + "/files/"), url
    url, _ = _generate(locked_down, token, Host="img.local:8080")
    assert url.startswith("http://img.local:8080/files/"), url


def test_docs_are_not_served_and_openapi_is(served: ServeProcess) -> None:
    with httpx.Client(base_url=served.base_url, timeout=10, trust_env=False) as http:
        assert http.get("/docs").status_code == 404
        assert b"cdn" not in http.get("/docs").content.lower()
        assert http.get("/openapi.json").json()["info"]["title"] == "bananaline"


def test_metrics_without_a_token_answer_loopback_only(served: ServeProcess) -> None:
    with httpx.Client(base_url=served.base_url, timeout=10, trust_env=False) as http:
        local = http.get("/metrics")
        relayed = http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert local.status_code == 200 and "bananaline_http_requests_total" in local.text
    assert relayed.status_code == 403, relayed.text
    assert "bananaline_" not in relayed.text and "BANANALINE_METRICS_TOKEN" in relayed.text


def test_metrics_with_a_token_need_it(locked_down: ServeProcess) -> None:
    with httpx.Client(base_url=locked_down.base_url, timeout=10, trust_env=False) as http:
        missing = http.get("/metrics")
        wrong = http.get("/metrics", headers={"Authorization": "Bearer not-the-metrics-token"})
        right = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert missing.status_code == wrong.status_code == 401
    assert "bananaline_" not in missing.text + wrong.text
    assert right.status_code == 200 and "bananaline_http_requests_total" in right.text


def test_sqlite_files_of_the_service_are_owner_only(served: ServeProcess) -> None:
    database = served.root / "service.db"
    with httpx.Client(base_url=served.base_url, timeout=10, trust_env=False) as http:
        assert http.get("/readyz").status_code == 200  # a pooled connection keeps -wal/-shm open
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        assert path.exists(), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))


def test_an_unknown_token_is_401_whether_the_task_exists_or_not(served: ServeProcess, sim) -> None:
    owner = served.add_caller("task-owner")
    with httpx.Client(base_url=served.base_url, timeout=60, trust_env=False) as http:
        owned = http.post(
            "/v1/plugin/generate", json={"cleantext": "owned"}, headers={"Authorization": f"Bearer {owner}"}
        ).json()["task_id"]
        unowned = http.post(
            "/v1/plugin/generate", json={"cleantext": "unowned"}, headers={"x-goog-api-key": OWN_KEY}
        ).json()["task_id"]
        bogus = {"Authorization": "Bearer bl_" + "x" * 43}
        answers = {
            task_id: http.get(f"/v1/tasks/{task_id}", headers=bogus)
            for task_id in (owned, unowned, "task_doesnotexist000000000", "nope")
        }
        assert http.get(f"/v1/tasks/{owned}", headers={"Authorization": f"Bearer {owner}"}).status_code == 200
    for task_id, response in answers.items():
        assert response.status_code == 401, (task_id, response.status_code, response.text)
        assert response.json()["error_kind"] == "unauthorized"


def test_own_keys_sent_over_http_do_not_pile_up_in_the_redaction_registry(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item e over HTTP: 120 requests with distinct own keys leave at most ``capacity`` of them
    registered, and the configured upstream key is still redacted afterwards."""
    from pydantic import SecretStr

    from bananaline import errors

    from .conftest import RunningService, service_settings

    configured = "configured-operator-key-61f0d2a9"
    monkeypatch.setattr(errors._secrets, "capacity", 50)
    settings = service_settings(tmp_path, simulator.base_url, api_key=SecretStr(configured))
    service = RunningService(settings).start()
    try:
        before = errors.registered_secret_count()
        with service.client() as http:
            for number in range(120):
                own_key = f"own-key-over-http-{number:04d}-{number * 31:05d}"
                answer = http.post(
                    "/v1/plugin/generate",
                    json={"cleantext": "x", "fileurls": ["data:image/png;base64,AAAA"], "apikey": own_key},
                )
                assert answer.json()["error_kind"] == "reference_error", answer.text
        assert errors.redact(f"own-key-over-http-0119-{119 * 31:05d}") == "***"  # registered, recent
    finally:
        service.stop()
    assert errors.registered_secret_count() - before <= 50
    assert errors.redact(f"key was {configured}") == "key was ***"
