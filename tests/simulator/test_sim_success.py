"""Successful answers on both protocols: exact pixel sizes, shapes, references, SDK compatibility."""

from __future__ import annotations

import base64
import re

import httpx
import pytest
from simhelpers import KEY, decode_image, gemini_image_part, png_bytes

from bananaline.catalog import MODELS

CASES = [
    ("gemini-2.5-flash-image", None, None),
    ("gemini-2.5-flash-image", "21:9", "1K"),
    ("gemini-3-pro-image-preview", "16:9", "2K"),
    ("gemini-3-pro-image-preview", "3:4", "4K"),
    ("gemini-3.1-flash-image-preview", "1:4", "512"),
    ("gemini-3.1-flash-image-preview", "8:1", "1K"),
]


@pytest.mark.parametrize(("model", "ratio", "size"), CASES)
async def test_gemini_image_has_exact_catalog_size(gemini, model, ratio, size):
    response = await gemini("a banana on a table", model=model, ratio=ratio, size=size)
    assert response.status_code == 200, response.text
    document = response.json()
    spec = MODELS[model]
    expected = spec.expected_pixels(ratio or "1:1", size or spec.default_size)
    part = gemini_image_part(document)
    assert part["inlineData"]["mimeType"] == "image/png"
    image = decode_image(part["inlineData"]["data"])
    assert image.format == "PNG"
    assert image.size == expected
    candidate = document["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert document["modelVersion"] == model
    assert document["responseId"]
    usage = document["usageMetadata"]
    assert usage["candidatesTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
    )
    thoughts = [part for part in candidate["content"]["parts"] if part.get("thought")]
    if "gemini-3" in model:
        assert [("text" in p, "inlineData" in p) for p in thoughts] == [(True, False), (False, True)]
        assert part["thoughtSignature"]
        assert usage["thoughtsTokenCount"] > 0
    else:
        assert thoughts == []
        assert "thoughtSignature" not in part


@pytest.mark.parametrize("how", ["bearer", "goog_header", "query"])
async def test_gemini_accepts_key_in_every_place(lsim, http, how):
    url = f"{lsim.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
    headers = {"bearer": {"authorization": f"Bearer {KEY}"}, "goog_header": {"x-goog-api-key": KEY}}.get(
        how, {}
    )
    params = {"key": KEY} if how == "query" else {}
    body = {"contents": [{"parts": [{"text": "a pear"}]}]}
    response = await http.post(url, json=body, headers=headers, params=params)
    assert response.status_code == 200


def _openai_image_refs(message: dict) -> list[str]:
    content = message["content"]
    if message.get("images"):
        return [entry["image_url"]["url"] for entry in message["images"]]
    if isinstance(content, list):
        return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    return re.findall(r"!\[image\]\(([^)]+)\)", content)


@pytest.mark.parametrize("style", ["markdown", "images", "parts", "url"])
async def test_openai_styles_carry_an_image_of_the_right_size(openai, http, style):
    response = await openai(f"a red kite [sim style={style}]", ratio="16:9", size="2K")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["object"] == "chat.completion"
    choice = document["choices"][0]
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    refs = _openai_image_refs(message)
    assert len(refs) == 1
    if style == "url":
        assert refs[0].startswith("http://127.0.0.1:")
        fetched = await http.get(refs[0])
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "image/png"
        data = fetched.content
    else:
        prefix = "data:image/png;base64,"
        assert refs[0].startswith(prefix)
        data = base64.b64decode(refs[0][len(prefix) :])
    assert decode_image(base64.b64encode(data).decode()).size == (2752, 1536)
    usage = document["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_openai_default_style_follows_config(lsim, openai):
    lsim.configure(default_openai_style="images")
    document = (await openai("a plain request")).json()
    assert document["choices"][0]["message"]["images"]


async def test_reference_image_sets_the_aspect_when_none_is_given(gemini, openai):
    reference = png_bytes(600, 400)  # 3:2
    response = await gemini("make it blue", references=[reference], snake_request=True)
    assert response.status_code == 200, response.text
    image = decode_image(gemini_image_part(response.json())["inlineData"]["data"])
    assert image.size == MODELS["gemini-3-pro-image-preview"].expected_pixels("3:2", "1K")
    usage = response.json()["usageMetadata"]
    assert {d["modality"] for d in usage["promptTokensDetails"]} == {"TEXT", "IMAGE"}

    explicit = await gemini("make it blue", references=[reference], ratio="9:16")
    assert decode_image(gemini_image_part(explicit.json())["inlineData"]["data"]).size == (768, 1376)

    via_openai = await openai("make it blue [sim style=images]", references=[png_bytes(400, 600)])
    url = via_openai.json()["choices"][0]["message"]["images"][0]["image_url"]["url"]
    assert decode_image(url.split(",", 1)[1]).size == (848, 1264)  # 2:3


async def test_snake_case_answer(gemini):
    response = await gemini("a fox [sim case=snake]", model="gemini-3-pro-image-preview")
    document = response.json()
    assert "usage_metadata" in document and "usageMetadata" not in document
    candidate = document["candidates"][0]
    assert candidate["finish_reason"] == "STOP"
    assert document["usage_metadata"]["candidates_token_count"] > 0
    part = [p for p in candidate["content"]["parts"] if "inline_data" in p and not p.get("thought")][0]
    assert part["inline_data"]["mime_type"] == "image/png"
    assert "thought_signature" in part
    assert decode_image(part["inline_data"]["data"]).size == (1024, 1024)
    assert "inlineData" not in response.text


async def test_unknown_model_behaves_like_a_generic_1k_model(gemini):
    response = await gemini("a lamp", model="nano-banana-next", ratio="4:3", size="4K")
    assert response.status_code == 200
    assert decode_image(gemini_image_part(response.json())["inlineData"]["data"]).size == (1200, 896)


async def test_jpeg_format_and_cached_payloads_are_stable(lsim, gemini):
    lsim.configure(image_format="jpeg")
    first = gemini_image_part((await gemini("the same prompt")).json())
    second = gemini_image_part((await gemini("the same prompt")).json())
    assert first["inlineData"]["mimeType"] == "image/jpeg"
    assert decode_image(first["inlineData"]["data"]).format == "JPEG"
    assert first["inlineData"]["data"] == second["inlineData"]["data"]


async def test_text_only_modality_returns_text(lsim, http):
    url = f"{lsim.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
    body = {
        "contents": [{"parts": [{"text": "describe"}]}],
        "generationConfig": {"responseModalities": ["TEXT"]},
    }
    document = (await http.post(url, json=body, headers={"x-goog-api-key": KEY})).json()
    parts = document["candidates"][0]["content"]["parts"]
    assert all("inlineData" not in part for part in parts) and parts[0]["text"]


async def test_google_genai_sdk_reads_the_answer(lsim):
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=lsim.base_url))
    response = await client.aio.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents="a lighthouse at dusk",
        config=types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="4:5", image_size="2K"),
        ),
    )
    images = [p for p in response.candidates[0].content.parts if p.inline_data is not None and not p.thought]
    assert len(images) == 1
    assert decode_image(base64.b64encode(images[0].inline_data.data).decode()).size == (1856, 2304)
    assert response.usage_metadata.candidates_token_count == 1120
    assert lsim.stats()["keys"]  # the SDK's key header was accepted and counted


async def test_openai_sdk_reads_the_answer(lsim):
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{lsim.base_url}/v1", api_key=KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gemini-2.5-flash-image",
            messages=[{"role": "user", "content": "a teapot"}],
            extra_body={"image_config": {"aspect_ratio": "3:2"}},
        )
    content = completion.choices[0].message.content
    data_uri = re.search(r"\((data:image/png;base64,[^)]+)\)", content).group(1)
    assert decode_image(data_uri.split(",", 1)[1]).size == (1248, 832)


async def test_files_route_404_for_unknown_id(lsim, http):
    response = await http.get(f"{lsim.base_url}/files/nope.png")
    assert response.status_code == 404


def test_sync_context_manager_stops_cleanly():
    from bananaline.simulator import SimulatorConfig, SimulatorServer

    with SimulatorServer(SimulatorConfig(realistic=False)) as server:
        base_url = server.base_url
        assert httpx.get(f"{base_url}/_sim/health").json() == {"ok": True}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_sim/health", timeout=2.0)
