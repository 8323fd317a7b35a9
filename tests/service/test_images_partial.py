"""OpenAI ``images.generate`` with ``n > 1`` when only some generations fail.

The images that were made were paid for: the caller gets them (and the usage counts them); the
failure alone is answered only when nothing was made.
"""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from bananaline import catalog

from .helpers import image_size

MODEL = "gemini-2.5-flash-image"
PRICE_USD = float(catalog.MODELS[MODEL].price_usd["1K"])


def _openai(service, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=service.base_url + "/v1",
        api_key=token,
        max_retries=0,
        http_client=httpx.Client(trust_env=False, timeout=60),
    )


def test_n3_with_one_refusal_answers_the_two_images_made_and_counts_them(service, sim):
    token = service.add_caller()
    sim.add_fault("finish_SAFETY", times=1, match="partial banana")  # not retryable: one call fails
    raw = _openai(service, token).images.with_raw_response.generate(
        model=MODEL, prompt="a partial banana", n=3, response_format="b64_json"
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-bananaline-images-failed"] == "1"
    assert raw.headers["x-bananaline-error-kind"] == "finish_reason"
    images = raw.parse().data
    assert len(images) == 2
    assert all(image_size(base64.b64decode(datum.b64_json)) == (1024, 1024) for datum in images)
    assert sim.stats()["queued_faults"] == []  # the fault really was consumed by one of the three calls
    with service.client(token) as http:
        usage = http.get("/v1/usage").json()
    assert usage["requests"] == 3 and usage["succeeded"] == 2 and usage["images"] == 2
    assert usage["cost_usd"] == pytest.approx(2 * PRICE_USD)
    assert usage["errors"] == {"finish_reason": 1}


def test_n2_url_answers_served_urls_for_what_was_made(service, sim):
    token = service.add_caller()
    sim.add_fault("http_400", times=1, match="url banana")
    with service.client(token) as http:
        body = {"model": MODEL, "prompt": "a url banana", "n": 2}
        response = http.post("/v1/images/generations", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["x-bananaline-error-kind"] == "bad_request"
        (datum,) = response.json()["data"]
        assert datum["url"].startswith(service.base_url + "/files/")
        assert http.get(datum["url"]).status_code == 200
        files = http.get("/v1/files").json()["files"]
    assert [file["url"] for file in files] == [datum["url"]]


def test_when_every_image_fails_the_failure_is_answered(service, sim):
    token = service.add_caller()
    sim.add_fault("finish_SAFETY", times=2, match="doomed banana")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        _openai(service, token).images.generate(model=MODEL, prompt="a doomed banana", n=2)
    assert refused.value.code == "finish_reason"
    with service.client(token) as http:
        usage = http.get("/v1/usage").json()
    assert usage["requests"] == 2 and usage["images"] == 0 and usage["cost_usd"] == 0
