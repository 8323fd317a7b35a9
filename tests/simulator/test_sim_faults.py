"""Every fault, on both protocols, over real HTTP; ``times=N`` clearing; queued faults."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import httpx
import pytest
from PIL import Image, UnidentifiedImageError
from simhelpers import KEY

from bananaline.simulator import FAULTS, REFUSALS

RATIO, SIZE = "16:9", "2K"
EXPECTED = (2752, 1536)  # gemini-3-pro-image-preview at 16:9 2K
RESPONSE_FAULTS = [name for name in FAULTS if name not in ("hang", "reset_mid_body")]


def _gemini_image(document: dict) -> tuple[str, bytes] | None:
    parts = document["candidates"][0]["content"]["parts"]
    found = [p["inlineData"] for p in parts if "inlineData" in p and not p.get("thought")]
    if not found:
        return None
    return found[0]["mimeType"], base64.b64decode(found[0]["data"])


def _openai_image(document: dict) -> tuple[str, bytes] | None:
    content = document["choices"][0]["message"]["content"] or ""
    match = re.search(r"!\[image\]\(data:([^;]+);base64,([^)]*)\)", content)
    if not match:
        return None
    return match.group(1), base64.b64decode(match.group(2))


def _text(protocol: str, document: dict) -> str | None:
    if protocol == "openai":
        return document["choices"][0]["message"]["content"]
    parts = document["candidates"][0]["content"]["parts"]
    texts = [p["text"] for p in parts if "text" in p and not p.get("thought")]
    return "".join(texts) or None


def _check(protocol: str, fault: str, response: httpx.Response) -> None:
    """What each fault must look like on the wire."""
    if fault.startswith("http_"):
        status = int(fault[5:])
        assert response.status_code == status
        error = response.json()["error"]
        assert error["message"]
        if protocol == "gemini":
            assert error["code"] == status and error["status"].isupper()
        else:
            assert error["type"] and error["code"]
        if status in (429, 503):
            assert response.headers["retry-after"] == "1"
            if protocol == "gemini":
                assert error["details"][0]["retryDelay"] == "1s"
        return
    assert response.status_code == 200
    if fault == "truncated_json":
        assert len(response.content) == int(response.headers["content-length"])
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
        return
    if fault == "not_json":
        assert response.headers["content-type"].startswith("text/html")
        assert response.text.lstrip().startswith("<!DOCTYPE html>")
        return
    document = response.json()
    image_of = _gemini_image if protocol == "gemini" else _openai_image
    if fault == "prompt_blocked":
        if protocol == "gemini":
            assert "candidates" not in document
            assert document["promptFeedback"]["blockReason"] == "SAFETY"
        else:
            assert document["prompt_feedback"]["block_reason"] == "SAFETY"
            assert document["choices"][0]["finish_reason"] == "content_filter"
            assert document["choices"][0]["message"]["content"] is None
    elif fault == "no_candidates":
        assert (document["candidates"] if protocol == "gemini" else document["choices"]) == []
    elif fault.startswith("finish_"):
        reason = fault[len("finish_") :]
        if protocol == "gemini":
            assert document["candidates"][0]["finishReason"] == reason
            assert "content" not in document["candidates"][0]
        else:
            choice = document["choices"][0]
            assert choice["native_finish_reason"] == reason
            expected = {"MAX_TOKENS": "length", "OTHER": "other", "NO_IMAGE": "no_image"}.get(reason)
            if expected is None:
                expected = (
                    "content_filter" if reason != "IMAGE_OTHER" and reason != "WEIRD_NEW" else reason.lower()
                )
            assert choice["finish_reason"] == expected
            assert choice["message"]["content"] is None
    elif fault == "zero_candidates_token":
        if protocol == "gemini":
            assert document["usageMetadata"]["candidatesTokenCount"] == 0
        else:
            assert document["usage"]["completion_tokens"] == 0
        assert _text(protocol, document) and image_of(document) is None
    elif fault == "no_parts":
        if protocol == "gemini":
            assert document["candidates"][0]["content"]["parts"] == []
            assert document["candidates"][0]["finishReason"] == "STOP"
        else:
            assert document["choices"][0]["message"]["content"] == ""
    elif fault == "inline_data_empty":
        assert image_of(document) == ("image/png", b"")
    elif fault.startswith("text_"):
        label, lang = fault[len("text_") :].rsplit("_", 1)
        assert _text(protocol, document) == REFUSALS[(label, lang)]
        assert image_of(document) is None
        if lang == "zh":
            assert re.search(r"[\u4e00-\u9fff]", _text(protocol, document))
    elif fault == "invalid_image":
        mime, data = image_of(document)
        assert mime == "image/png" and data
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(data))
    else:
        mime, data = image_of(document)
        image = Image.open(io.BytesIO(data))
        if fault == "jpeg_as_png":
            assert mime == "image/png" and data[:3] == b"\xff\xd8\xff" and image.format == "JPEG"
            assert image.size == EXPECTED
        elif fault == "wrong_size":
            assert image.size == (1376, 768)
        elif fault == "wrong_aspect":
            assert image.size == (2048, 2048)
        elif fault == "black_image":
            assert image.size == EXPECTED
            assert image.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
        else:
            raise AssertionError(f"no expectation written for {fault}")


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
@pytest.mark.parametrize("fault", RESPONSE_FAULTS)
async def test_each_fault_on_each_protocol(lsim, gemini, openai, protocol, fault):
    call = gemini if protocol == "gemini" else openai
    response = await call(f"a castle [sim fault={fault}]", ratio=RATIO, size=SIZE)
    _check(protocol, fault, response)
    assert lsim.stats()["by_fault"] == {fault: 1}


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_reset_mid_body_breaks_the_connection(gemini, openai, protocol):
    call = gemini if protocol == "gemini" else openai
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await call("a bridge [sim fault=reset_mid_body]", ratio=RATIO, size=SIZE)


async def test_hang_times_out_and_the_server_lets_go(lsim, gemini):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await gemini("a clock [sim fault=hang]", timeout_s=0.3)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while lsim.stats()["in_flight"] and time.monotonic() < deadline:
        await _tick()
    assert lsim.stats()["in_flight"] == 0  # the disconnect ended the hanging request


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.02)


def test_unknown_uppercase_finish_reason_and_any_http_code_work(light_simulator):
    lsim = light_simulator
    lsim.reset()
    url = f"{lsim.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
    for prompt, check in (
        (
            "x [sim fault=finish_BRAND_NEW]",
            lambda r: r.json()["candidates"][0]["finishReason"] == "BRAND_NEW",
        ),
        ("x [sim fault=http_504]", lambda r: r.status_code == 504),
    ):
        response = httpx.post(
            url, json={"contents": [{"parts": [{"text": prompt}]}]}, headers={"x-goog-api-key": KEY}
        )
        assert check(response), response.text


async def test_retry_after_is_configurable(gemini, openai):
    response = await gemini("slow down [sim fault=http_429 retry_after=2.5]")
    assert response.headers["retry-after"] == "2.5"
    assert response.json()["error"]["details"][0]["retryDelay"] == "2.5s"
    response = await openai("slow down [sim fault=http_503 retry_after=7]")
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_times_n_fails_the_first_n_then_clears_per_key(lsim, gemini, openai, protocol):
    call = gemini if protocol == "gemini" else openai
    prompt = "a ship [sim fault=http_503 times=2 retry_after=0]"
    statuses = [(await call(prompt)).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert (await call(prompt, key="another-key-123")).status_code == 503  # counted per key
    assert (await call(prompt.replace("ship", "boat"))).status_code == 503  # and per prompt
    lsim.reset()
    assert (await call(prompt)).status_code == 503  # reset forgets the counts


async def test_directive_latency_overrides(gemini):
    started = time.monotonic()
    response = await gemini("a snail [sim latency=0.3]")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_queued_faults_match_count_and_protocol(lsim, gemini, openai):
    lsim.add_fault("http_500", times=2, match="tiger")
    lsim.add_fault("finish_SAFETY", times=1, protocol="openai")
    assert (await gemini("a lion")).status_code == 200  # no match
    assert (await gemini("a tiger")).status_code == 500
    first = await openai("a bear")  # the tiger fault does not match; the openai one does
    assert first.json()["choices"][0]["native_finish_reason"] == "SAFETY"
    assert (await openai("a tiger")).status_code == 500
    assert (await openai("a tiger")).status_code == 200  # both queued faults are used up
    assert lsim.stats()["queued_faults"] == []


async def test_control_api_over_http(lsim, http, gemini):
    base = lsim.base_url
    added = await http.post(
        f"{base}/_sim/faults", json={"fault": "http_429", "times": None, "match": "zebra"}
    )
    assert added.status_code == 200 and added.json()["fault"] == "http_429"
    listed = (await http.get(f"{base}/_sim/faults")).json()["faults"]
    assert [f["match"] for f in listed] == ["zebra"]
    for _ in range(3):
        assert (await gemini("a zebra")).status_code == 429  # times null: until cleared
    assert (await http.delete(f"{base}/_sim/faults")).status_code == 200
    assert (await gemini("a zebra")).status_code == 200
    bad = await http.post(f"{base}/_sim/faults", json={"fault": "no_such_fault"})
    assert bad.status_code == 400

    assert (await http.post(f"{base}/_sim/config", json={"latency_s": 0.25})).json()["latency_s"] == 0.25
    started = time.monotonic()
    await gemini("a sloth")
    assert time.monotonic() - started >= 0.25
    assert (await http.post(f"{base}/_sim/config", json={"nonsense": 1})).status_code == 400
    await http.post(f"{base}/_sim/config", json={"latency_s": 0})

    stats = (await http.get(f"{base}/_sim/stats")).json()
    assert stats["requests_total"] == 5 and stats["by_fault"] == {"http_429": 3}
    assert (await http.post(f"{base}/_sim/reset")).json() == {"ok": True}
    assert (await http.get(f"{base}/_sim/stats")).json()["requests_total"] == 0


async def test_unknown_fault_in_a_directive_is_a_400(gemini):
    response = await gemini("a cat [sim fault=http_4299]")
    assert response.status_code == 400
    assert "unknown simulator fault" in response.json()["error"]["message"]
