"""Request encoding for both protocols: URL, headers, body shape, and where the key may appear."""

from __future__ import annotations

import base64
import json
import os
import tracemalloc

import pytest

from bananaline.protocols import ReferencePart, WireCall, get_protocol

KEY = "sk-bananaline-secret-key-0123456789"
PROMPT = '画一只"猫"\n in a hat — 帽子'


def call(**overrides) -> WireCall:
    fields = {
        "base_url": "https://api.apiyi.com/",
        "api_key": KEY,
        "model": "gemini-3-pro-image-preview",
        "prompt": PROMPT,
        "references": (
            ReferencePart(b"\x89PNG first", "image/png"),
            ReferencePart(b"\xff\xd8 second", "image/jpeg"),
        ),
        "aspect_ratio": "16:9",
        "image_size": "4K",
    }
    fields.update(overrides)
    return WireCall(**fields)


def assert_key_only_in(request, header: str) -> None:
    assert KEY not in request.url
    assert KEY.encode() not in request.body
    for name, value in request.headers.items():
        if name != header:
            assert KEY not in value, name
    assert KEY not in repr(request)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        (
            "https://api.apiyi.com/",
            "https://api.apiyi.com/v1beta/models/gemini-3-pro-image-preview:generateContent",
        ),
        (
            "https://api.apiyi.com",
            "https://api.apiyi.com/v1beta/models/gemini-3-pro-image-preview:generateContent",
        ),
        (
            "https://generativelanguage.googleapis.com/v1beta/",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-3-pro-image-preview:generateContent",
        ),
        (
            "http://127.0.0.1:8081/relay",
            "http://127.0.0.1:8081/relay/v1beta/models/gemini-3-pro-image-preview:generateContent",
        ),
    ],
)
def test_gemini_url(base_url, expected):
    assert get_protocol("gemini").encode(call(base_url=base_url)).url == expected


def test_gemini_bearer_auth_and_body():
    request = get_protocol("gemini").encode(call())
    assert request.method == "POST"
    assert request.headers == {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    assert_key_only_in(request, "Authorization")
    body = json.loads(request.body)
    assert body["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "4K"},
    }
    (content,) = body["contents"]
    assert content["role"] == "user"
    text, first, second = content["parts"]
    assert text == {"text": PROMPT}
    assert first["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(first["inlineData"]["data"]) == b"\x89PNG first"
    assert (second["inlineData"]["mimeType"], base64.b64decode(second["inlineData"]["data"])) == (
        "image/jpeg",
        b"\xff\xd8 second",
    )


def test_gemini_google_auth_uses_api_key_header():
    request = get_protocol("gemini").encode(call(google_auth=True))
    assert request.headers == {"Content-Type": "application/json", "x-goog-api-key": KEY}
    assert_key_only_in(request, "x-goog-api-key")


@pytest.mark.parametrize(
    ("model", "ratio", "size", "expected"),
    [
        ("gemini-2.5-flash-image", "3:2", "1K", {"aspectRatio": "3:2"}),
        ("gemini-2.5-flash-image-preview", None, "1K", None),
        ("gemini-3.1-flash-image-preview", None, "512", {"imageSize": "512"}),
        ("gemini-3-pro-image-preview", None, None, None),
        ("some-relay-new-model", "1:1", "2K", {"aspectRatio": "1:1", "imageSize": "2K"}),
    ],
)
def test_gemini_image_config_omits_what_does_not_apply(model, ratio, size, expected):
    body = json.loads(
        get_protocol("gemini").encode(call(model=model, aspect_ratio=ratio, image_size=size)).body
    )
    assert body["generationConfig"].get("imageConfig") == expected


def test_gemini_text_to_image_has_only_the_text_part():
    body = json.loads(get_protocol("gemini").encode(call(references=())).body)
    assert body["contents"][0]["parts"] == [{"text": PROMPT}]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.apiyi.com", "https://api.apiyi.com/v1/chat/completions"),
        ("https://api.apiyi.com/v1/", "https://api.apiyi.com/v1/chat/completions"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        ),
        ("http://127.0.0.1:9/x/v1/chat/completions", "http://127.0.0.1:9/x/v1/chat/completions"),
    ],
)
def test_openai_url(base_url, expected):
    assert get_protocol("openai").encode(call(base_url=base_url)).url == expected


@pytest.mark.parametrize("google_auth", [False, True])
def test_openai_always_uses_bearer_and_body_shape(google_auth):
    request = get_protocol("openai").encode(call(google_auth=google_auth))
    assert request.headers == {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    assert_key_only_in(request, "Authorization")
    body = json.loads(request.body)
    assert body["model"] == "gemini-3-pro-image-preview"
    assert body["modalities"] == ["image", "text"]
    assert body["stream"] is False
    assert body["image_config"] == {"aspect_ratio": "16:9", "image_size": "4K"}
    (message,) = body["messages"]
    assert message["role"] == "user"
    text, first, second = message["content"]
    assert text == {"type": "text", "text": PROMPT}
    assert first["type"] == "image_url" and second["type"] == "image_url"
    head, payload = first["image_url"]["url"].split(",", 1)
    assert head == "data:image/png;base64" and base64.b64decode(payload) == b"\x89PNG first"
    assert second["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_openai_omits_empty_image_config_and_keeps_parts_list():
    body = json.loads(
        get_protocol("openai").encode(call(references=(), aspect_ratio=None, image_size=None)).body
    )
    assert "image_config" not in body
    assert body["messages"][0]["content"] == [{"type": "text", "text": PROMPT}]
    body = json.loads(get_protocol("openai").encode(call(model="gemini-2.5-flash-image")).body)
    assert body["image_config"] == {"aspect_ratio": "16:9"}


@pytest.mark.parametrize("name", ["gemini", "openai"])
def test_encoding_many_references_costs_little_more_than_the_body(name):
    references = tuple(ReferencePart(os.urandom(1_000_000), "image/png") for _ in range(14))
    protocol = get_protocol(name)
    tracemalloc.start()
    try:
        body = protocol.encode(call(references=references)).body
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ratio = peak / len(body)
    print(f"\n{name} encode: body {len(body) / 1e6:.1f} MB, traced peak {peak / 1e6:.1f} MB ({ratio:.2f}x)")
    assert len(body) > 18_000_000
    assert peak < 1.5 * len(body)


def test_unknown_protocol_lists_valid_names():
    with pytest.raises(ValueError, match="gemini, openai"):
        get_protocol("grpc")
