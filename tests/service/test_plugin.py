"""The workflow plugin endpoint over real HTTP: success, sync-then-poll, auth, limits, bad input."""

from __future__ import annotations

import time

import pytest

from .helpers import image_size, png_data_uri, poll_task, upstream_requests

PLUGIN_KEYS = {"analysis", "url", "urls", "error", "error_kind", "warnings", "task_id", "status"}


def _body(prompt: str, **extra: object) -> dict[str, object]:
    return {"cleantext": prompt, "fileurls": [], "aspect_ratio": "16:9", "resolution": "1K", **extra}


def test_text_to_image_returns_a_served_url_and_the_task_agrees(service, sim):
    upstream_key = "upstream-key-for-routing-check-1"
    token = service.add_caller(upstream_key=upstream_key)
    with service.client(token) as http:
        response = http.post("/v1/plugin/generate", json=_body("a banana on a marble desk"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == PLUGIN_KEYS
        assert body["analysis"] == "图片生成成功"
        assert body["status"] == "done" and body["error"] == "" and body["error_kind"] == ""
        assert body["url"].startswith(service.base_url + "/files/")
        image = http.get(body["url"])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image_size(image.content) == (1376, 768)
        polled = http.get(f"/v1/tasks/{body['task_id']}").json()
        assert polled == body
    assert upstream_requests(sim, upstream_key) == 1


def test_long_generation_answers_running_then_the_task_finishes(short_wait_service, sim):
    token = short_wait_service.add_caller()
    with short_wait_service.client(token) as http:
        started = time.monotonic()
        response = http.post("/v1/plugin/generate", json=_body("a slow banana [sim latency=1.5]"))
        answered_after_s = time.monotonic() - started
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "running"
        assert body["analysis"].startswith("图片生成中") and "get_task" in body["analysis"]
        assert body["task_id"].startswith("task_") and body["url"] == ""
        assert answered_after_s < 1.4
        final = poll_task(http, body["task_id"])
        assert final["status"] == "done"
        assert final["analysis"] == "图片生成成功"
        assert final["task_id"] == body["task_id"]
        assert http.get(final["url"]).status_code == 200
        assert time.monotonic() - started >= 1.5


def test_own_apikey_without_a_token_is_used_for_that_call(service, sim):
    own_key = "my-own-upstream-key-7f3a9c"
    with service.client() as http:
        response = http.post("/v1/plugin/generate", json=_body("own key banana", apikey=own_key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["analysis"] == "图片生成成功"
        # an anonymous task is readable by its (unguessable) id alone
        assert http.get(f"/v1/tasks/{body['task_id']}").json()["status"] == "done"
    assert upstream_requests(sim, own_key) == 1


def test_no_token_and_no_apikey_is_401_and_nothing_goes_upstream(service, sim):
    with service.client() as http:
        response = http.post("/v1/plugin/generate", json=_body("who am I"))
        bad_token = http.post(
            "/v1/plugin/generate",
            json=_body("who am I"),
            headers={"Authorization": "Bearer bl_not-a-real-token-1234"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["analysis"] == "图片生成失败" and body["error_kind"] == "unauthorized"
    assert bad_token.status_code == 401
    assert sim.stats()["requests_total"] == 0


def test_refusal_is_a_classified_failure_not_an_http_error(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        response = http.post("/v1/plugin/generate", json=_body("anything [sim fault=prompt_blocked]"))
    assert response.status_code == 200
    body = response.json()
    assert body["analysis"] == "图片生成失败"
    assert body["error_kind"] == "prompt_blocked"
    assert "拦截" in body["error"] and body["url"] == ""
    assert body["status"] == "failed"


def test_references_as_data_uri_and_as_our_own_file_url(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        first = http.post("/v1/plugin/generate", json=_body("edit this", fileurls=[png_data_uri()])).json()
        assert first["analysis"] == "图片生成成功", first
        # chaining: the URL we handed out is read back from the store, not fetched over loopback
        second = http.post("/v1/plugin/generate", json=_body("edit again", fileurls=[first["url"]])).json()
        assert second["analysis"] == "图片生成成功", second
        # a single string of URLs (as some workflow nodes send) is split
        third = http.post(
            "/v1/plugin/generate", json=_body("two refs", fileurls=f"{first['url']}\n{second['url']}")
        ).json()
        assert third["analysis"] == "图片生成成功", third


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"cleantext": "x", "aspect_ratio": "7:3"}, "invalid_input"),
        ({"cleantext": "x", "resolution": "2K", "model": "gemini-2.5-flash-image"}, "invalid_input"),
        ({"cleantext": "x", "resolution": "8K"}, "invalid_input"),
        ({"cleantext": "x", "model": "gemini-2.5-flash-image", "fileurls": ["data:,"] * 4}, "invalid_input"),
        ({"cleantext": "x", "fileurls": [f"d{i}" for i in range(15)]}, "invalid_input"),
        ({"fileurls": []}, "invalid_input"),
        ({"cleantext": "   "}, "invalid_input"),
        ({"cleantext": "x", "fileurls": ["/etc/passwd"]}, "reference_error"),
        ({"cleantext": "x", "fileurls": ["file:///etc/passwd"]}, "reference_error"),
        ({"cleantext": "x", "fileurls": ["http://169.254.169.254/latest/meta-data/"]}, "reference_error"),
        ({"cleantext": "x", "fileurls": ["http://10.1.2.3/cat.png"]}, "reference_error"),
        ({"cleantext": "x", "fileurls": ["data:image/png;base64,bm90IGFuIGltYWdl"]}, "reference_error"),
    ],
)
def test_bad_input_is_a_clear_4xx_before_any_upstream_call(service, sim, payload, kind):
    token = service.add_caller()
    with service.client(token) as http:
        response = http.post("/v1/plugin/generate", json=payload)
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["error_kind"] == kind, body
    assert body["analysis"] == "图片生成失败" and body["error"]
    assert sim.stats()["requests_total"] == 0


def test_ssrf_to_loopback_is_refused(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        response = http.post(
            "/v1/plugin/generate", json=_body("x", fileurls=[f"{sim.base_url}/anything.png"])
        )
    assert response.status_code == 422
    assert response.json()["error_kind"] == "reference_error"
    assert "blocked_address" in response.json()["error"]
    assert sim.stats()["requests_total"] == 0


def test_malformed_json_and_wrong_types_are_422(service, sim):
    token = service.add_caller()
    with service.client(token) as http:
        broken = http.post(
            "/v1/plugin/generate", content=b'{"cleantext": "x",', headers={"content-type": "application/json"}
        )
        wrong = http.post("/v1/plugin/generate", json={"cleantext": ["a"], "fileurls": 5})
        not_object = http.post("/v1/plugin/generate", json=[1, 2])
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["error"]
    assert wrong.status_code == 422
    assert not_object.status_code == 422


def test_oversized_body_is_413(service, sim):
    token = service.add_caller()
    huge = "a" * (service.settings.max_upload_bytes + 10)
    with service.client(token) as http:
        response = http.post("/v1/plugin/generate", json={"cleantext": huge})
    assert response.status_code == 413


def test_budget_is_enforced_before_the_upstream_call(service, sim):
    upstream_key = "upstream-key-with-small-budget"
    token = service.add_caller(upstream_key=upstream_key, budget_usd=0.2)
    with service.client(token) as http:
        first = http.post("/v1/plugin/generate", json=_body("budget 1"))
        second = http.post("/v1/plugin/generate", json=_body("budget 2"))
        own_key = http.post("/v1/plugin/generate", json=_body("budget 3", apikey="callers-own-key-pays-this"))
    assert first.status_code == 200 and first.json()["analysis"] == "图片生成成功"
    assert second.status_code == 402
    assert second.json()["error_kind"] == "budget_exceeded"
    assert "预算" in second.json()["error"]
    assert upstream_requests(sim, upstream_key) == 1
    # the caller's own key is not the team's money: no budget applies
    assert own_key.status_code == 200 and own_key.json()["analysis"] == "图片生成成功"


def test_requests_per_minute_limit(service, sim):
    token = service.add_caller(rpm=1)
    with service.client(token) as http:
        first = http.post("/v1/plugin/generate", json=_body("rpm 1"))
        second = http.post("/v1/plugin/generate", json=_body("rpm 2"))
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error_kind"] == "rate_limited"
    assert 1 <= int(second.headers["retry-after"]) <= 60


def test_unknown_task_is_404(service):
    token = service.add_caller()
    with service.client(token) as http:
        response = http.get("/v1/tasks/task_doesnotexist")
    assert response.status_code == 404
    assert response.json()["error_kind"] == "not_found"
