"""Gemini native decoding: shapes, key styles, thought parts, and the classification order."""

from __future__ import annotations

import copy
import gzip
import json
from typing import Any

import httpx
import pytest

from bananaline.errors import ErrorKind, GenerationError
from bananaline.protocols import get_protocol

gemini = get_protocol("gemini")


def answer(tools: Any, png: bytes, *, text: str = "Here you go.") -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "planning the scene", "thought": True},
                        {
                            "inlineData": {"mimeType": "image/png", "data": tools.b64(b"interim")},
                            "thought": True,
                        },
                        {"text": text},
                        {
                            "inlineData": {"mimeType": "image/png", "data": tools.b64(png)},
                            "thoughtSignature": "c2ln",
                        },
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 12,
            "candidatesTokenCount": 1290,
            "totalTokenCount": 1302,
            "thoughtsTokenCount": 170,
        },
        "modelVersion": "gemini-3-pro-image-preview",
    }


def snake(value: Any) -> Any:
    """Re-serialise camelCase keys as snake_case, as some relays do."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            snake_key = "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)
            out[snake_key] = snake(item)
        return out
    if isinstance(value, list):
        return [snake(item) for item in value]
    return value


async def decode(tools: Any, body: Any, **kwargs: Any):
    return await gemini.decode(tools.streamed(body, **kwargs), tools.no_fetch)


async def failure(tools: Any, body: Any, **kwargs: Any) -> GenerationError:
    with pytest.raises(GenerationError) as caught:
        await decode(tools, body, **kwargs)
    return caught.value


@pytest.mark.parametrize("style", ["camel", "snake"])
async def test_success_keeps_only_non_thought_parts(tools, png_red, style):
    body = answer(tools, png_red)
    body = snake(body) if style == "snake" else body
    if style == "snake":
        assert "inline_data" in json.dumps(body) and "inlineData" not in json.dumps(body)
    decoded = await decode(tools, body, chunk_size=7)
    assert [image.data for image in decoded.images] == [png_red]
    assert decoded.images[0].declared_mime == "image/png"
    assert decoded.text == "Here you go."
    assert decoded.finish_reason == "STOP"
    assert decoded.model_version == "gemini-3-pro-image-preview"
    usage = decoded.usage
    assert (usage.prompt_tokens, usage.candidates_tokens, usage.total_tokens, usage.thoughts_tokens) == (
        12,
        1290,
        1302,
        170,
    )


async def test_thought_flag_before_data_and_several_images(tools, png_red, png_blue):
    body = answer(tools, png_red)
    parts = body["candidates"][0]["content"]["parts"]
    parts.insert(0, {"thought": True, "inlineData": {"mimeType": "image/png", "data": tools.b64(png_blue)}})
    parts.append({"inlineData": {"mimeType": "image/jpeg", "data": tools.b64(png_blue)}})
    decoded = await decode(tools, body)
    assert [image.data for image in decoded.images] == [png_red, png_blue]
    assert [image.declared_mime for image in decoded.images] == ["image/png", "image/jpeg"]


async def test_gzip_encoded_body_is_decoded(tools, png_red):
    raw = json.dumps(answer(tools, png_red)).encode()
    decoded = await decode(tools, gzip.compress(raw), headers={"content-encoding": "gzip"})
    assert decoded.images[0].data == png_red


async def test_top_level_array_is_read_as_stream_chunks(tools, png_red):
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "Drawing"}]}}]},
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"inlineData": {"mimeType": "image/png", "data": tools.b64(png_red)}}]
                    }
                }
            ]
        },
        {
            "candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
            "usageMetadata": {"candidatesTokenCount": 9},
        },
    ]
    decoded = await decode(tools, chunks)
    assert decoded.images[0].data == png_red and decoded.text == "Drawing"
    assert decoded.usage.candidates_tokens == 9


def _everything_wrong(tools: Any) -> dict[str, Any]:
    """A body that breaks every rule at once; fixing one rule at a time walks down the order."""
    return {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"candidatesTokenCount": 0},
        "candidates": [],
    }


async def test_classification_order_is_stable(tools, png_red):
    body = _everything_wrong(tools)
    error = await failure(tools, body)
    assert (error.kind, error.detail) == (ErrorKind.PROMPT_BLOCKED, "PROHIBITED_CONTENT")
    assert error.retryable is False

    del body["promptFeedback"]
    assert (await failure(tools, body)).kind is ErrorKind.ZERO_CANDIDATES_TOKEN

    body["usageMetadata"]["candidatesTokenCount"] = 5
    error = await failure(tools, body)
    assert error.kind is ErrorKind.NO_CANDIDATES and error.retryable

    body["candidates"] = [{"finishReason": "IMAGE_SAFETY", "content": {"parts": [{"text": "no"}]}}]
    error = await failure(tools, body)
    assert (error.kind, error.detail, error.retryable) == (ErrorKind.FINISH_REASON, "IMAGE_SAFETY", False)

    body["candidates"][0]["finishReason"] = "STOP"
    body["candidates"][0]["content"]["parts"] = [{"text": "thinking", "thought": True}]
    error = await failure(tools, body)
    assert error.kind is ErrorKind.NO_PARTS and error.retryable

    body["candidates"][0]["content"]["parts"].append({"inlineData": {"mimeType": "image/png", "data": ""}})
    error = await failure(tools, body)
    assert error.kind is ErrorKind.INLINE_DATA_EMPTY and error.retryable

    body["candidates"][0]["content"]["parts"][-1] = {"text": "I can't remove the watermark from this photo."}
    error = await failure(tools, body)
    assert (error.kind, error.label) == (ErrorKind.TEXT_RESPONSE, "watermark")
    assert "watermark" in error.detail and not error.retryable
    assert error.model_text == "I can't remove the watermark from this photo."

    body["candidates"][0]["content"]["parts"].append({"inlineData": {"data": tools.b64(png_red)}})
    decoded = await decode(tools, body)
    assert decoded.images[0].data == png_red and decoded.images[0].declared_mime is None


async def test_missing_candidates_key_is_no_candidates(tools):
    assert (await failure(tools, {"modelVersion": "x"})).kind is ErrorKind.NO_CANDIDATES
    assert (await failure(tools, {})).kind is ErrorKind.NO_CANDIDATES


@pytest.mark.parametrize(
    ("reason", "retryable"), [("BRAND_NEW_REASON_2027", False), ("IMAGE_OTHER", True), ("NO_IMAGE", True)]
)
async def test_any_finish_reason_other_than_stop_is_reported_verbatim(tools, png_red, reason, retryable):
    body = answer(tools, png_red)
    body["candidates"][0]["finishReason"] = reason
    error = await failure(tools, body)
    assert (error.kind, error.detail, error.retryable) == (ErrorKind.FINISH_REASON, reason, retryable)


async def test_empty_inline_data_next_to_a_real_image_is_success(tools, png_red):
    body = answer(tools, png_red)
    body["candidates"][0]["content"]["parts"].insert(
        0, {"inline_data": {"mime_type": "image/png", "data": ""}}
    )
    decoded = await decode(tools, body)
    assert [image.data for image in decoded.images] == [png_red]


async def test_text_only_answer_in_chinese_gets_a_label(tools):
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "抱歉，我无法生成包含色情内容的图片。"}]},
                "finish_reason": "STOP",
            }
        ]
    }
    error = await failure(tools, body)
    assert (error.kind, error.label) == (ErrorKind.TEXT_RESPONSE, "nsfw")


async def test_file_data_url_is_fetched(tools, png_red):
    url = "https://cdn.relay.example/out/1.png"
    body = {"candidates": [{"content": {"parts": [{"fileData": {"fileUri": url, "mimeType": "image/png"}}]}}]}
    fetch = tools.fetcher({url: png_red})
    decoded = await gemini.decode(tools.streamed(body), fetch)
    assert decoded.images[0].data == png_red and fetch.asked == [url]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down"}, ErrorKind.RATE_LIMITED),
        ({"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}, ErrorKind.UPSTREAM_ERROR),
        ({"code": 401, "message": "bad key"}, ErrorKind.AUTH),
    ],
)
async def test_error_object_in_a_200_body(tools, error, kind):
    failure_ = await failure(tools, {"error": error})
    assert failure_.kind is kind and error["message"] in failure_.detail


async def test_null_error_member_is_not_an_error(tools, png_red):
    body = answer(tools, png_red)
    body["error"] = None
    assert (await decode(tools, body)).images[0].data == png_red


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": "iVBORw0KGgo', "truncated JSON"),
        (b"<html><body>502 Bad Gateway</body></html>", "not JSON"),
        (b"", "empty body"),
        (b'{"candidates": []} trailing', "not JSON"),
        (b'"just a string"', "expected a JSON object"),
        (b"[1, 2]", "expected an array of JSON objects"),
        (b'{"candidates": "none"}', "candidates is not an array"),
        (b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": 7}}]}}]}', "not a string"),
        (b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": "a$b?"}}]}}]}', "invalid base64"),
    ],
)
async def test_unreadable_bodies_are_malformed(tools, body, reason):
    error = await failure(tools, body, chunk_size=16)
    assert error.kind is ErrorKind.MALFORMED_RESPONSE
    assert reason in error.detail


async def test_network_error_while_streaming_propagates(tools, png_red):
    raw = json.dumps(answer(tools, png_red)).encode()

    async def broken():
        yield raw[:40]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    with pytest.raises(httpx.RemoteProtocolError):
        await gemini.decode(httpx.Response(200, content=broken()), tools.no_fetch)


async def test_decoding_does_not_mutate_shared_fixture(tools, png_red):
    body = answer(tools, png_red)
    before = copy.deepcopy(body)
    await decode(tools, body)
    assert body == before
