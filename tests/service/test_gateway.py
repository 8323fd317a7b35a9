"""The gateway with the official SDKs, unchanged, pointed at the service with a service token."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from .helpers import image_size, png_data_uri, upstream_requests


def _genai(service, token: str) -> genai.Client:
    return genai.Client(
        api_key=token,
        http_options=types.HttpOptions(base_url=service.base_url, timeout=60_000),
    )


def _openai(service, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=service.base_url + "/v1",
        api_key=token,
        max_retries=0,
        http_client=httpx.Client(trust_env=False, timeout=60),
    )


def test_google_genai_sdk_generates_through_the_gateway(service, sim):
    upstream_key = "upstream-key-genai-sdk-test"
    token = service.add_caller(upstream_key=upstream_key)
    client = _genai(service, token)
    response = client.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents="a banana wearing sunglasses",
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="16:9")
        ),
    )
    images = [part.inline_data for part in response.candidates[0].content.parts if part.inline_data]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert image_size(images[0].data) == (1376, 768)
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata.total_token_count
    assert upstream_requests(sim, upstream_key) == 1


def test_google_genai_sdk_edit_with_inline_reference(service, sim):
    token = service.add_caller()
    client = _genai(service, token)
    reference = base64.b64decode(png_data_uri().split(",", 1)[1])
    response = client.models.generate_content(
        model="gemini-3.1-flash-image-preview",
        contents=[types.Part.from_bytes(data=reference, mime_type="image/png"), "make it blue"],
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="1:1", image_size="512"),
        ),
    )
    part = next(p for p in response.candidates[0].content.parts if p.inline_data)
    assert image_size(part.inline_data.data) == (512, 512)


def test_google_genai_sdk_sees_google_shaped_errors(service, sim):
    client = _genai(service, "bl_this-token-does-not-exist-000")
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-3-pro-image-preview", contents="x")
    assert caught.value.code == 401
    token = service.add_caller()
    client = _genai(service, token)
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.generate_content(
            model="gemini-3-pro-image-preview",
            contents="bad ratio",
            config=types.GenerateContentConfig(image_config=types.ImageConfig(aspect_ratio="7:3")),
        )
    assert refused.value.code == 422
    assert "invalid_input" in refused.value.message
    assert sim.stats()["requests_total"] == 0


def test_gemini_rest_shapes_snake_case_and_error_details(service, sim):
    token = service.add_caller()
    headers = {"x-goog-api-key": token}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=60, trust_env=False) as http:
        ok = http.post(
            "/v1beta/models/gemini-3-pro-image-preview:generateContent",
            json={
                "contents": [{"role": "user", "parts": [{"text": "snake case banana"}]}],
                "generation_config": {"image_config": {"aspect_ratio": "9:16", "image_size": "2K"}},
            },
        )
        assert ok.status_code == 200, ok.text
        part = ok.json()["candidates"][0]["content"]["parts"][-1]
        assert image_size(base64.b64decode(part["inlineData"]["data"])) == (1536, 2752)
        assert ok.headers["x-bananaline-image-url"].startswith(service.base_url + "/files/")
        refused = http.post(
            "/v1beta/models/gemini-3-pro-image-preview:generateContent",
            json={"contents": [{"parts": [{"text": "no [sim fault=text_nsfw_zh]"}]}]},
        )
        limited = http.post(
            "/v1beta/models/gemini-3-pro-image-preview:generateContent",
            json={"contents": [{"parts": [{"text": "busy [sim fault=http_429 times=5]"}]}]},
        )
        streamed = http.post(
            "/v1beta/models/gemini-3-pro-image-preview:streamGenerateContent?alt=sse",
            json={"contents": [{"parts": [{"text": "streamed banana"}]}]},
        )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "text_response"
    assert limited.status_code == 429
    assert limited.json()["error"]["details"][0]["reason"] == "rate_limited"
    assert streamed.status_code == 200 and streamed.text.startswith("data: {")


def test_openai_sdk_chat_completions(service, sim):
    upstream_key = "upstream-key-openai-chat"
    token = service.add_caller(upstream_key=upstream_key)
    client = _openai(service, token)
    completion = client.chat.completions.create(
        model="gemini-3-pro-image-preview",
        messages=[{"role": "user", "content": "a banana spaceship"}],
        extra_body={"image_config": {"aspect_ratio": "16:9"}},
    )
    content = completion.choices[0].message.content
    markdown = content.split("\n\n")[-1]
    assert markdown.startswith("![image](data:image/png;base64,") and markdown.endswith(")")
    data = base64.b64decode(markdown.split("base64,", 1)[1][:-1])
    assert image_size(data) == (1376, 768)
    images = completion.choices[0].message.model_extra["images"]
    assert images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert completion.usage.total_tokens > 0
    assert upstream_requests(sim, upstream_key) == 1


def test_openai_sdk_chat_with_image_reference(service, sim):
    token = service.add_caller()
    client = _openai(service, token)
    completion = client.chat.completions.create(
        model="gemini-3-pro-image-preview",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "put this on a beach"},
                    {"type": "image_url", "image_url": {"url": png_data_uri()}},
                ],
            }
        ],
    )
    assert "data:image/png;base64," in completion.choices[0].message.content


def test_openai_sdk_images_generate_b64_and_url(service, sim):
    token = service.add_caller()
    client = _openai(service, token)
    as_b64 = client.images.generate(
        model="gemini-3-pro-image-preview",
        prompt="a banana poster",
        size="1792x1024",
        response_format="b64_json",
    )
    assert image_size(base64.b64decode(as_b64.data[0].b64_json)) == (1376, 768)
    as_url = client.images.generate(
        model="gemini-2.5-flash-image", prompt="a banana icon", size="1024x1024", n=2
    )
    assert len(as_url.data) == 2
    for datum in as_url.data:
        fetched = httpx.get(datum.url, trust_env=False)
        assert fetched.status_code == 200 and image_size(fetched.content) == (1024, 1024)


def test_openai_sdk_sees_openai_shaped_errors(service, sim):
    token = service.add_caller()
    client = _openai(service, token)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(
            model="gemini-3-pro-image-preview",
            messages=[{"role": "user", "content": "remove it [sim fault=text_watermark_en]"}],
        )
    assert refused.value.code == "text_response"
    assert "watermark" in refused.value.message
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="gemini-3-pro-image-preview", prompt="x", size="huge")
    assert bad_size.value.code == "invalid_input"
    stranger = _openai(service, "bl_unknown-token-000000000000")
    with pytest.raises(openai.AuthenticationError):
        stranger.images.generate(prompt="x")
    broke_client = _openai(service, service.add_caller(budget_usd=0.0))
    with pytest.raises(openai.APIStatusError) as broke:
        broke_client.images.generate(model="gemini-3-pro-image-preview", prompt="x")
    assert broke.value.status_code == 402 and broke.value.code == "budget_exceeded"
