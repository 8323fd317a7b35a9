"""The blob filter: JSON string tracking across any chunking, base64 decoded on the fly, and the
decoders reading images from it (or text, exactly as before, when a string is not base64)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import httpx
import pytest

from bananaline.errors import ErrorKind, GenerationError
from bananaline.protocols import get_protocol
from bananaline.protocols.blobs import BLOB_THRESHOLD, BlobExtractor
from bananaline.protocols.streaming import READ_SIZE, AsyncByteReader

gemini = get_protocol("gemini")
openai = get_protocol("openai")

IMAGE = random.Random(7).randbytes(150_001)  # base64 ~200 KB: a blob; length % 3 == 1: padded
B64 = base64.b64encode(IMAGE)


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run(chunks: list[bytes], threshold: int = BLOB_THRESHOLD) -> tuple[Any, BlobExtractor]:
    """Filter ``chunks``, parse what the parser would see, and put the blobs' bytes back in."""
    blobs = BlobExtractor(threshold)
    seen = b"".join(blobs.feed(chunk) for chunk in chunks) + blobs.finish()
    assert len(seen) < sum(map(len, chunks))  # something was taken out

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            return {restore(key): restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [restore(item) for item in value]
        if isinstance(value, str) and blobs.is_placeholder(value):
            return blobs.take(value)
        return value

    return restore(json.loads(seen)), blobs


# Escaped quotes and backslashes before, around and after the blob, in keys and values.
HEAD = b'{"a\\"k":"he said \\"hi\\" \\\\","b":"\\\\","c":["\\"",{"d\\\\":"\\\\\\""}],"data":"'
TAIL = b'","e":"x\\"y\\\\","f":"after"}'
BODY = HEAD + B64 + TAIL
EXPECTED = {
    'a"k': 'he said "hi" \\',
    "b": "\\",
    "c": ['"', {"d\\": '\\"'}],
    "data": IMAGE,
    "e": 'x"y\\',
    "f": "after",
}


@pytest.mark.parametrize("size", [1, 3, 4, 7, 64 * 1024 - 1, READ_SIZE])
def test_escapes_around_a_blob_at_any_chunk_size(size):
    parsed, blobs = run(pieces(BODY, size))
    assert parsed == EXPECTED and blobs.pending == 0


def test_blob_split_at_every_boundary_near_its_start_threshold_and_end():
    start, end = len(HEAD), len(HEAD) + len(B64)
    near = [*range(start - 12, start + 12), *range(start + BLOB_THRESHOLD - 6, start + BLOB_THRESHOLD + 6)]
    near += range(end - 12, end + 12)
    for cut in near:
        parsed, _ = run([BODY[:cut], BODY[cut:]])
        assert parsed == EXPECTED, cut


@pytest.mark.parametrize("length", [150_000, 150_001, 150_002])  # no padding, "==", "="
@pytest.mark.parametrize("style", ["standard", "urlsafe", "unpadded", "escaped-slash", "wrapped"])
def test_alphabets_padding_and_escapes_inside_a_blob(length, style):
    raw = random.Random(length).randbytes(length)
    if style == "wrapped":  # MIME line breaks, JSON-escaped as \n
        text = json.dumps(base64.encodebytes(raw).decode())[1:-1].encode()
    else:
        text = (base64.urlsafe_b64encode if style == "urlsafe" else base64.b64encode)(raw)
        text = text.rstrip(b"=") if style == "unpadded" else text
        text = text.replace(b"/", b"\\/") if style == "escaped-slash" else text
    assert b"-" in text or style != "urlsafe"
    for size in (3, 4096):
        parsed, _ = run(pieces(b'{"data":"' + text + b'"}', size))
        assert parsed == {"data": raw}


@pytest.mark.parametrize("escape", [b"\\/", b"\\n"])
def test_threshold_falling_inside_an_escape(escape):
    """The filter decides after exactly ``threshold`` bytes of a string; an escape there is kept
    whole, so the string still becomes a blob and decodes right."""
    for before in range(58, 68):  # the escape's backslash lands at or around byte 64
        plain = escape[1:] if escape == b"\\/" else b""
        text = b"A" * before + escape + b"B" * (300 - before - len(plain))
        raw = base64.b64decode(b"A" * before + plain + b"B" * (300 - before - len(plain)), validate=True)
        for size in (1, 5, 1000):
            blobs = BlobExtractor(64)
            seen = b"".join(blobs.feed(chunk) for chunk in pieces(b'{"d":"' + text + b'"}', size))
            value = json.loads(seen + blobs.finish())["d"]
            assert blobs.take(value) == raw, (before, size)


def test_invalid_base64_in_the_middle_is_known_only_when_taken():
    bad = B64[:100_000] + b"*" + B64[100_001:]
    blobs = BlobExtractor()
    seen = b"".join(blobs.feed(chunk) for chunk in pieces(b'{"data":"' + bad + b'"}', 4096)) + blobs.finish()
    value = json.loads(seen)["data"]
    assert blobs.is_placeholder(value) and len(seen) < 100
    with pytest.raises(ValueError, match="invalid base64"):
        blobs.take(value)


@pytest.mark.parametrize("ascii_only", [False, True])
def test_long_chinese_text_passes_through_unchanged(ascii_only):
    alphabet = "抱歉我无法生成包含内容的图片。请换一个描述"
    text = "".join(random.Random(3).choice(alphabet) for _ in range(70_000))
    body = json.dumps({"text": text, "n": 1}, ensure_ascii=ascii_only).encode()
    assert len(body) > 200_000
    for size in (7, 65536):
        blobs = BlobExtractor()
        seen = b"".join(blobs.feed(chunk) for chunk in pieces(body, size)) + blobs.finish()
        assert seen == body and blobs.pending == 0


def test_data_uri_string_passes_through_unchanged():
    body = b'{"url":"data:image/png;base64,' + B64 + b'"}'
    blobs = BlobExtractor()
    assert b"".join(blobs.feed(chunk) for chunk in pieces(body, 1000)) + blobs.finish() == body


def test_truncated_blob_is_left_unclosed_for_the_parser():
    blobs = BlobExtractor()
    seen = blobs.feed(b'{"data":"' + B64[:100_000]) + blobs.finish()
    assert seen.startswith(b'{"data":"\\u0000') and not seen.endswith(b'"')


# --- through the decoders ----------------------------------------------------------------------


def _part(data: str, **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": data}, **extra}


def _gemini_body(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}


async def test_gemini_keeps_the_image_and_drops_thought_blobs(tools):
    thought = base64.b64encode(random.Random(9).randbytes(120_000)).decode()
    body = _gemini_body(
        [
            {"thought": True, **_part(thought)},  # flag first
            _part(thought, thought=True),  # flag after the data
            {"text": "done", "thoughtSignature": "c2ln" * 40_000},
            _part(B64.decode()),
        ]
    )
    for size in (1000, READ_SIZE):
        decoded = await gemini.decode(tools.streamed(body, chunk_size=size), tools.no_fetch)
        assert [hashlib.sha256(image.data).digest() for image in decoded.images] == [
            hashlib.sha256(IMAGE).digest()
        ]
        assert decoded.text == "done"


async def test_gemini_snake_case_urlsafe_blob(tools):
    data = base64.urlsafe_b64encode(IMAGE).decode().rstrip("=")
    part = {"inline_data": {"mime_type": "image/png", "data": data}}
    body = {"candidates": [{"content": {"parts": [part]}}]}
    decoded = await gemini.decode(tools.streamed(body, chunk_size=3001), tools.no_fetch)
    assert decoded.images[0].data == IMAGE and decoded.images[0].declared_mime == "image/png"


async def test_gemini_invalid_blob_is_malformed_unless_it_is_a_thought(tools):
    bad = B64[:100_000].decode() + "!" + B64[100_001:].decode()
    with pytest.raises(GenerationError) as caught:
        await gemini.decode(tools.streamed(_gemini_body([_part(bad)])), tools.no_fetch)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE
    assert caught.value.detail == "invalid base64 in inlineData.data"
    body = _gemini_body([{"thought": True, **_part(bad)}, _part(B64.decode())])  # never decoded
    assert (await gemini.decode(tools.streamed(body), tools.no_fetch)).images[0].data == IMAGE


async def test_gemini_long_base64_text_reads_as_text(tools):
    text = B64.decode()
    body = {"candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}]}
    with pytest.raises(GenerationError) as caught:
        await gemini.decode(tools.streamed(body), tools.no_fetch)
    assert caught.value.kind is ErrorKind.TEXT_RESPONSE and caught.value.model_text == text


async def test_gemini_forged_placeholder_is_just_invalid_base64(tools):
    body = _gemini_body([_part("\u0000bananaline-blob:0000000000000000:0")])
    with pytest.raises(GenerationError) as caught:
        await gemini.decode(tools.streamed(body), tools.no_fetch)
    assert caught.value.detail == "invalid base64 in inlineData.data"


INSIDE_THE_BLOB = len(b'{"candidates":[{"content":{"parts":[{"inlineData":{"data":"') + 90_000


@pytest.mark.parametrize("cut", [INSIDE_THE_BLOB, 70])
async def test_gemini_truncated_body_stays_truncated_json(tools, cut):
    body = json.dumps(_gemini_body([_part(B64.decode())]), separators=(",", ":")).encode()[:cut]
    with pytest.raises(GenerationError) as caught:
        await gemini.decode(tools.streamed(body, chunk_size=4096), tools.no_fetch)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE and "truncated JSON" in caught.value.detail


async def test_gemini_network_error_inside_a_blob_propagates(tools):
    body = json.dumps(_gemini_body([_part(B64.decode())])).encode()

    async def broken():
        yield body[:120_000]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    with pytest.raises(httpx.RemoteProtocolError):
        await gemini.decode(httpx.Response(200, content=broken()), tools.no_fetch)


async def test_openai_b64_json_blob_and_data_uris(tools):
    other = random.Random(11).randbytes(90_000)
    body = {
        "choices": [
            {
                "message": {
                    "content": f"Here ![a](data:image/png;base64,{base64.b64encode(other).decode()})",
                    "images": [{"type": "image_url", "b64_json": B64.decode()}],
                },
                "finish_reason": "stop",
            }
        ]
    }
    decoded = await openai.decode(tools.streamed(body, chunk_size=777), tools.no_fetch)
    assert [image.data for image in decoded.images] == [other, IMAGE] and decoded.text == "Here"
    uri = "data:image/png;base64," + B64.decode()
    body["choices"][0]["message"]["images"] = [{"image_url": {"url": uri}}]
    decoded = await openai.decode(tools.streamed(body, chunk_size=777), tools.no_fetch)
    assert [image.data for image in decoded.images] == [other, IMAGE]
    assert decoded.images[1].declared_mime == "image/png"


async def test_openai_invalid_b64_json_blob_is_malformed(tools):
    bad = B64[:100_000].decode() + "." + B64[100_001:].decode()
    body = {"choices": [{"message": {"content": [{"type": "image", "b64_json": bad}]}}]}
    with pytest.raises(GenerationError) as caught:
        await openai.decode(tools.streamed(body), tools.no_fetch)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE
    assert caught.value.detail == "invalid base64 in an image"


async def test_reader_filters_gathered_chunks_and_counts_network_bytes():
    async def chunks():
        for piece in pieces(BODY, 1000):
            yield piece

    blobs = BlobExtractor()
    reader = AsyncByteReader(chunks(), blobs)
    seen = b""
    while piece := await reader.read(4096):
        seen += piece
    assert reader.bytes_read == len(BODY) and len(seen) < 400
    value = json.loads(seen)["data"]
    assert blobs.take(value) == IMAGE and blobs.pending == 0


# --- data URIs inside text (the OpenAI markdown shape) -------------------------------------------


def run_text(chunks: list[bytes], threshold: int = BLOB_THRESHOLD) -> tuple[bytes, Any, BlobExtractor]:
    """Filter ``chunks`` with data URI runs taken out: what the parser sees, that parsed with the
    inline placeholders expanded back to base64 text, and the extractor."""
    blobs = BlobExtractor(threshold, data_uris=True)
    seen = b"".join(blobs.feed(chunk) for chunk in chunks) + blobs.finish()

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            return {restore(key): restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [restore(item) for item in value]
        return blobs.expand(value) if isinstance(value, str) else value

    return seen, restore(json.loads(seen)), blobs


MD_HEAD = (
    b'{"id":"x","choices":[{"message":{"content":"Here you go \\"now\\"\\n\\n![image](data:image/png;base64,'
)
MD_TAIL = b') and \\u00e9 after \\\\ data:ima","role":"assistant"}}],"z":"data:image/png;base64,QUJD"}'
MD_BODY = MD_HEAD + B64 + MD_TAIL


def _content(parsed: Any) -> str:
    return str(parsed["choices"][0]["message"]["content"])


def test_markdown_data_uri_at_any_chunk_size():
    for size in (1, 3, 7, 4096, READ_SIZE):
        seen, parsed, blobs = run_text(pieces(MD_BODY, size))
        assert len(seen) < 400, size  # the payload never reached the parser
        assert parsed == json.loads(MD_BODY), size  # everything else exactly as it came
        assert blobs.pending == 0


def test_markdown_data_uri_split_at_every_byte_near_its_prefix_threshold_and_end():
    prefix = MD_HEAD.index(b"data:image/")
    start, end = len(MD_HEAD), len(MD_HEAD) + len(B64)
    near = [*range(prefix - 12, start + 12), *range(start + BLOB_THRESHOLD - 6, start + BLOB_THRESHOLD + 6)]
    near += range(end - 12, end + 12)
    expected = json.loads(MD_BODY)
    for cut in near:
        seen, parsed, blobs = run_text([MD_BODY[:cut], MD_BODY[cut:]])
        content = _content(json.loads(seen))  # as the parser saw it
        head = 'Here you go "now"\n\n![image](data:image/png;base64,\0bananaline-blob:'
        assert content.startswith(head), cut
        assert content.endswith("\0) and é after \\ data:ima"), cut
        assert parsed == expected and blobs.pending == 0, cut  # the image's base64, as it came


def test_short_data_uris_pass_through_byte_identical():
    short = B64[: BLOB_THRESHOLD - 4]
    bodies = [
        b'{"url":"data:image/png;base64,' + short + b'"}',  # a short string
        b'{"c":"' + b"x " * BLOB_THRESHOLD + b"![a](data:image/png;base64," + short + b') end"}',  # long
        b'{"c":"![a](data:image/png;base64,' + short + b")" + b"y " * BLOB_THRESHOLD + b'"}',
    ]
    for body in bodies:
        for size in (7, 1000, READ_SIZE):
            blobs = BlobExtractor(data_uris=True)
            assert b"".join(blobs.feed(chunk) for chunk in pieces(body, size)) + blobs.finish() == body
            assert blobs.pending == 0


def test_two_data_uris_and_an_escaped_slash_in_one_string():
    other = random.Random(12).randbytes(100_000)
    other_b64 = base64.b64encode(other).replace(b"/", b"\\/")  # \/ inside the payload too
    body = (
        b'{"c":"one ![a](data:image\\/png;base64,'
        + B64
        + b")\\ntwo ![b](data:image\\/jpeg;base64,"
        + other_b64
        + b') three"}'
    )
    for size in (3, 65536):
        blobs = BlobExtractor(data_uris=True)
        seen = b"".join(blobs.feed(chunk) for chunk in pieces(body, size)) + blobs.finish()
        content = json.loads(seen)["c"]
        assert len(seen) < 300 and blobs.pending == 2
        first, second = (part.split(")")[0] for part in content.split("base64,")[1:])
        assert (blobs.take(first), blobs.take(second)) == (IMAGE, other)
        assert content.startswith("one ![a](data:image/png;base64,\0") and content.endswith("\0) three")


def test_discard_inline_frees_the_blobs_of_dropped_text():
    body = b'{"c":"a data:image/png;base64,' + B64 + b" b data:image/png;base64," + B64 + b'"}'
    blobs = BlobExtractor(data_uris=True)
    seen = blobs.feed(body) + blobs.finish()
    content = json.loads(seen)["c"]
    assert blobs.pending == 2 and len(seen) < 300
    blobs.discard_inline(content)
    assert blobs.pending == 0


def _openai_body(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"choices": [{"message": message, "finish_reason": "stop"}], **extra}


OTHER = random.Random(13).randbytes(110_000)
OTHER_URI = "data:image/jpeg;base64," + base64.b64encode(OTHER).decode()
URI = "data:image/png;base64," + B64.decode()


async def test_openai_markdown_images_decode_and_the_text_around_them_is_kept(tools):
    text = 'Here you go\n\n![image]({}) and "more" é \\ text\n![second]({})\nend'
    long = _openai_body({"content": text.format(URI, OTHER_URI)}, model="m-1")
    for size in (1000, READ_SIZE):
        decoded = await openai.decode(tools.streamed(long, chunk_size=size), tools.no_fetch)
        assert [image.data for image in decoded.images] == [IMAGE, OTHER]
        assert [image.declared_mime for image in decoded.images] == ["image/png", "image/jpeg"]
        assert decoded.text == 'Here you go\n\n and "more" é \\ text\n\nend'
    # The same text with short images reads the same (the path that never made blobs).
    short_text = text.format("data:image/png;base64,QUJD", "data:image/jpeg;base64,REVG")
    short = _openai_body({"content": short_text})
    assert (await openai.decode(tools.streamed(short), tools.no_fetch)).text == decoded.text


async def test_openai_images_url_and_content_parts(tools):
    message = {
        "content": [
            {"type": "text", "text": f"look ![x]({OTHER_URI}) ok"},
            {"type": "reasoning", "text": f"draft ![y]({URI[::-1]}) ![z]({OTHER_URI})"},  # dropped
            {"type": "image_url", "image_url": {"url": URI}},
        ],
        "images": [{"type": "image_url", "image_url": {"url": f"data:image/webp;base64,{B64.decode()}\n"}}],
    }
    for size in (7001, READ_SIZE):
        decoded = await openai.decode(tools.streamed(_openai_body(message), chunk_size=size), tools.no_fetch)
        assert [image.data for image in decoded.images] == [OTHER, IMAGE]  # the repeat kept once
        assert decoded.text == "look  ok"
    message = {"images": [URI]}  # images: ["data:..."]
    decoded = await openai.decode(tools.streamed(_openai_body(message)), tools.no_fetch)
    assert [image.data for image in decoded.images] == [IMAGE]


async def test_openai_escaped_slash_in_the_data_uri_prefix(tools):
    body = (
        b'{"choices":[{"message":{"content":"![i](data:image\\/png;base64,'
        + B64.replace(b"/", b"\\/")
        + b')","images":[{"image_url":{"url":"data:image\\/png;base64,'
        + B64
        + b'"}}]},"finish_reason":"stop"}]}'
    )
    for size in (3, 4096):
        decoded = await openai.decode(tools.streamed(body, chunk_size=size), tools.no_fetch)
        assert [image.data for image in decoded.images] == [IMAGE] and decoded.text is None


@pytest.mark.parametrize("where", ["markdown", "url"])
@pytest.mark.parametrize("length", ["long", "short"])
async def test_openai_invalid_base64_in_a_data_uri_is_malformed(tools, where, length):
    payload = B64.decode() if length == "long" else B64[:400].decode()
    bad = payload[:301] + "=" + payload[302:]  # padding inside a quantum
    uri = "data:image/png;base64," + bad
    image = {"image_url": {"url": uri}}
    message = {"content": f"x ![i]({uri}) y"} if where == "markdown" else {"images": [image]}
    with pytest.raises(GenerationError) as caught:
        await openai.decode(tools.streamed(_openai_body(message), chunk_size=5000), tools.no_fetch)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE
    assert caught.value.detail == "invalid base64 in an image"


async def test_openai_long_data_uri_in_a_field_read_as_text_reads_as_before(tools):
    body = _openai_body({"content": f"![i]({URI})"}, model=f"odd {URI} model")
    decoded = await openai.decode(tools.streamed(body, chunk_size=9999), tools.no_fetch)
    assert decoded.model_version == f"odd {URI} model" and decoded.images[0].data == IMAGE
