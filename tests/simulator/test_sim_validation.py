"""Requests the real API refuses are refused here too, in each protocol's error shape."""

from __future__ import annotations

import base64

import pytest
from simhelpers import KEY, png_bytes


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_missing_key_is_401(lsim, gemini, openai, protocol):
    call = gemini if protocol == "gemini" else openai
    response = await call("a cat", key=None)
    assert response.status_code == 401
    error = response.json()["error"]
    if protocol == "gemini":
        assert error["status"] == "UNAUTHENTICATED"
    else:
        assert error["code"] == "invalid_api_key"
    assert lsim.stats()["keys"] == {"-": {"requests": 1, "in_flight": 0, "max_in_flight": 1}}


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_valid_keys_restrict_access(lsim, gemini, openai, protocol):
    call = gemini if protocol == "gemini" else openai
    lsim.configure(valid_keys={KEY})
    assert (await call("a cat")).status_code == 200
    refused = await call("a cat", key="wrong-key-999")
    assert refused.status_code == 401
    assert "wrong-key-999" not in refused.text


@pytest.mark.parametrize(
    ("model", "ratio", "size", "needle"),
    [
        ("gemini-2.5-flash-image", "1:8", None, "aspect ratio"),  # extreme ratios are 3.1 only
        ("gemini-2.5-flash-image", None, "2K", "image size"),
        ("gemini-3-pro-image-preview", "7:5", None, "aspect ratio"),
        ("gemini-3-pro-image-preview", None, "512", "image size"),
    ],
)
@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_catalog_violations_are_400(gemini, openai, protocol, model, ratio, size, needle):
    call = gemini if protocol == "gemini" else openai
    response = await call("a cat", model=model, ratio=ratio, size=size)
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"].lower()
    if protocol == "gemini":
        assert error["status"] == "INVALID_ARGUMENT"
    else:
        assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
async def test_too_many_references_is_400(gemini, openai, protocol):
    call = gemini if protocol == "gemini" else openai
    reference = png_bytes(8, 8)
    assert (await call("x", model="gemini-2.5-flash-image", references=[reference] * 3)).status_code == 200
    response = await call("x", model="gemini-2.5-flash-image", references=[reference] * 4)
    assert response.status_code == 400
    assert "at most 3" in response.json()["error"]["message"]


async def test_bad_base64_and_non_images_are_400(lsim, http):
    url = f"{lsim.base_url}/v1beta/models/gemini-3-pro-image-preview:generateContent"
    headers = {"x-goog-api-key": KEY}
    not_base64 = {"inlineData": {"mimeType": "image/png", "data": "@@@not base64@@@"}}
    not_image = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"plain text").decode()}}
    for part in (not_base64, not_image):
        body = {"contents": [{"role": "user", "parts": [{"text": "edit"}, part]}]}
        response = await http.post(url, json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == 400

    chat = f"{lsim.base_url}/v1/chat/completions"
    content = [
        {"type": "text", "text": "edit"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}},
    ]
    body = {"model": "gemini-3-pro-image-preview", "messages": [{"role": "user", "content": content}]}
    response = await http.post(chat, json=body, headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_malformed_bodies_are_400(lsim, http):
    gemini_url = f"{lsim.base_url}/v1beta/models/gemini-3-pro-image-preview:generateContent"
    chat_url = f"{lsim.base_url}/v1/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    assert (await http.post(gemini_url, content=b"{not json", headers=auth)).status_code == 400
    assert (await http.post(gemini_url, json={"contents": []}, headers=auth)).status_code == 400
    assert (await http.post(chat_url, json={"messages": []}, headers=auth)).status_code == 400
    wrong_action = f"{lsim.base_url}/v1beta/models/gemini-3-pro-image-preview:countTokens"
    assert (await http.post(wrong_action, json={}, headers=auth)).status_code == 404
