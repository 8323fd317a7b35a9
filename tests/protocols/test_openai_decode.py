"""OpenAI-compatible decoding: the four ways relays return images, and classification."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bananaline.errors import ErrorKind, GenerationError
from bananaline.protocols import get_protocol

openai = get_protocol("openai")


def completion(message: dict[str, Any] | None, *, finish_reason: str | None = "stop", **extra: Any) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if message is not None:
        choice["message"] = {"role": "assistant", **message}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gemini-3-pro-image-preview",
        "choices": [choice],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 1300,
            "total_tokens": 1320,
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
    }
    body.update(extra)
    return body


async def decode(tools: Any, body: Any, fetch: Any = None, **kwargs: Any):
    return await openai.decode(tools.streamed(body, **kwargs), fetch or tools.no_fetch)


async def failure(tools: Any, body: Any, fetch: Any = None) -> GenerationError:
    with pytest.raises(GenerationError) as caught:
        await decode(tools, body, fetch)
    return caught.value


async def test_markdown_data_uri_in_content(tools, png_red):
    content = f"Here is your image:\n\n![image](data:image/png;base64,{tools.b64(png_red)})\n\nEnjoy."
    decoded = await decode(tools, completion({"content": content}), chunk_size=1000)
    assert [image.data for image in decoded.images] == [png_red]
    assert decoded.images[0].declared_mime == "image/png"
    assert decoded.text is not None and "data:" not in decoded.text and "![" not in decoded.text
    assert "Here is your image" in decoded.text and "Enjoy." in decoded.text
    assert decoded.model_version == "gemini-3-pro-image-preview"
    usage = decoded.usage
    assert (usage.prompt_tokens, usage.candidates_tokens, usage.total_tokens, usage.thoughts_tokens) == (
        20,
        1300,
        1320,
        200,
    )


async def test_several_markdown_images_keep_their_order(tools, png_red, png_blue):
    content = (
        f"![a](data:image/png;base64,{tools.b64(png_red)}) and "
        f"![b](data:image/jpeg;base64,{tools.b64(png_blue)})"
    )
    decoded = await decode(tools, completion({"content": content}))
    assert [image.data for image in decoded.images] == [png_red, png_blue]
    assert [image.declared_mime for image in decoded.images] == ["image/png", "image/jpeg"]
    assert decoded.text == "and"


async def test_message_images_with_data_uri_and_url(tools, png_red, png_blue):
    url = "https://files.relay.example/img/42.png"
    message = {
        "content": "",
        "images": [
            {"type": "image_url", "image_url": {"url": f"data:image/webp;base64,{tools.b64(png_red)}"}},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    fetch = tools.fetcher({url: png_blue})
    decoded = await decode(tools, completion(message), fetch)
    assert [image.data for image in decoded.images] == [png_red, png_blue]
    assert [image.declared_mime for image in decoded.images] == ["image/webp", None]
    assert fetch.asked == [url] and decoded.text is None


async def test_content_part_arrays_in_every_tolerated_form(tools, png_red, png_blue):
    third = b"\x89PNG-third-image"
    message = {
        "content": [
            {"type": "text", "text": "Three variants."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{tools.b64(png_red)}"}},
            {"type": "image", "image_url": f"data:image/png;base64,{tools.b64(png_blue)}"},
            {"type": "image", "b64_json": tools.b64(third)},
        ]
    }
    decoded = await decode(tools, completion(message))
    assert [image.data for image in decoded.images] == [png_red, png_blue, third]
    assert decoded.text == "Three variants."


@pytest.mark.parametrize(
    "content",
    [
        "![image](https://cdn.relay.example/a.png)",
        "Done: [download](https://cdn.relay.example/a.png?sig=abc)",
        "  https://cdn.relay.example/a.png  ",
    ],
)
async def test_http_url_in_text_is_fetched(tools, png_red, content):
    url = content.split("(")[-1].rstrip(")") if "(" in content else content.strip()
    fetch = tools.fetcher({url: png_red})
    decoded = await decode(tools, completion({"content": content}), fetch)
    assert [image.data for image in decoded.images] == [png_red]
    assert decoded.images[0].declared_mime is None and fetch.asked == [url]


async def test_same_image_in_markdown_and_images_is_kept_once(tools, png_red):
    data_uri = f"data:image/png;base64,{tools.b64(png_red)}"
    message = {"content": f"![image]({data_uri})", "images": [{"image_url": {"url": data_uri}}]}
    decoded = await decode(tools, completion(message))
    assert [image.data for image in decoded.images] == [png_red]


async def test_a_plain_link_in_a_refusal_is_not_fetched(tools):
    content = "I can't help with that. See [our policy](https://policies.example.com/terms)."
    error = await failure(tools, completion({"content": content}))
    assert (error.kind, error.label) == (ErrorKind.TEXT_RESPONSE, "general")


async def test_no_choices_is_no_candidates(tools):
    body = completion(None)
    del body["choices"]
    assert (await failure(tools, body)).kind is ErrorKind.NO_CANDIDATES
    body["choices"] = []
    assert (await failure(tools, body)).kind is ErrorKind.NO_CANDIDATES


@pytest.mark.parametrize(("reason", "retryable"), [("content_filter", False), ("length", False)])
async def test_finish_reason_other_than_stop(tools, png_red, reason, retryable):
    content = f"![image](data:image/png;base64,{tools.b64(png_red)})"
    error = await failure(tools, completion({"content": content}, finish_reason=reason))
    assert (error.kind, error.detail, error.retryable) == (ErrorKind.FINISH_REASON, reason, retryable)


async def test_null_finish_reason_is_not_a_failure(tools, png_red):
    content = f"![image](data:image/png;base64,{tools.b64(png_red)})"
    decoded = await decode(tools, completion({"content": content}, finish_reason=None))
    assert decoded.images[0].data == png_red and decoded.finish_reason is None


@pytest.mark.parametrize("message", [{"content": None}, {"content": ""}, {"content": []}, None])
async def test_message_without_content_is_no_parts(tools, message):
    assert (await failure(tools, completion(message))).kind is ErrorKind.NO_PARTS


async def test_empty_data_uri_is_inline_data_empty(tools):
    error = await failure(tools, completion({"content": "![image](data:image/png;base64,)"}))
    assert error.kind is ErrorKind.INLINE_DATA_EMPTY and error.retryable


async def test_text_only_gets_a_label(tools):
    error = await failure(tools, completion({"content": "I can't swap the faces of real people."}))
    assert (error.kind, error.label) == (ErrorKind.TEXT_RESPONSE, "face_swap")
    assert error.model_text == "I can't swap the faces of real people."


async def test_zero_completion_tokens(tools, png_red):
    body = completion({"content": "Sorry."})
    body["usage"]["completion_tokens"] = 0
    assert (await failure(tools, body)).kind is ErrorKind.ZERO_CANDIDATES_TOKEN
    body["choices"] = []
    assert (await failure(tools, body)).kind is ErrorKind.ZERO_CANDIDATES_TOKEN
    # Relays that do not count image tokens report 0 beside a good image: that is success.
    good = completion({"content": f"![image](data:image/png;base64,{tools.b64(png_red)})"})
    good["usage"]["completion_tokens"] = 0
    assert (await decode(tools, good)).images[0].data == png_red


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"message": "Rate limit reached", "type": "rate_limit_exceeded", "code": None},
            ErrorKind.RATE_LIMITED,
        ),
        (
            {"message": "余额不足", "type": "insufficient_quota", "code": "insufficient_quota"},
            ErrorKind.QUOTA,
        ),
        (
            {"message": "blocked", "type": "invalid_request_error", "code": "content_policy_violation"},
            ErrorKind.PROMPT_BLOCKED,
        ),
    ],
)
async def test_error_object_in_a_200_body(tools, error, kind):
    assert (await failure(tools, {"error": error})).kind is kind


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"choices": [{"message": {"content": "![image](data:image/png;base64,iVBOR', "truncated JSON"),
        (b"upstream connect error or disconnect/reset before headers", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"choices": {"message": 1}}', "choices is not an array"),
        (b'{"choices": [{"message": {"content": 5}}]}', "neither text nor a list"),
        (
            b'{"choices": [{"message": {"images": [{"image_url": {"url": "ftp://x"}}]}}]}',
            "neither a data URI",
        ),
        (b'{"choices": [{"message": {"content": "data:image/png;base64,QUJD="}}]}', "invalid base64"),
    ],
)
async def test_unreadable_bodies_are_malformed(tools, body, reason):
    error = await failure(tools, body)
    assert error.kind is ErrorKind.MALFORMED_RESPONSE
    assert reason in error.detail


async def test_network_error_while_streaming_propagates(tools):
    raw = json.dumps(completion({"content": "x"})).encode()

    async def broken():
        yield raw[:30]
        raise httpx.ReadError("connection reset by peer")

    with pytest.raises(httpx.ReadError):
        await openai.decode(httpx.Response(200, content=broken()), tools.no_fetch)


async def test_passed_through_block_reason_comes_first(tools):
    body = completion(
        {"content": None}, finish_reason="content_filter", prompt_feedback={"block_reason": "OTHER"}
    )
    body["usage"]["completion_tokens"] = 0
    error = await failure(tools, body)
    assert (error.kind, error.detail, error.retryable) == (ErrorKind.PROMPT_BLOCKED, "OTHER", False)


async def test_url_that_serves_an_empty_body_is_inline_data_empty(tools):
    url = "https://files.relay.example/img/empty.png"
    fetch = tools.fetcher({url: b""})
    error = await failure(tools, completion({"content": f"![image]({url})"}), fetch)
    assert error.kind is ErrorKind.INLINE_DATA_EMPTY and fetch.asked == [url]
