"""Output checks on real images made by Pillow."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from bananaline.catalog import get_model
from bananaline.checks import check_output, inspect_image, is_blank, output_warnings
from bananaline.errors import ErrorKind, GenerationError

MAX_PIXELS = 8192 * 8192


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def inspected(image: Image.Image, fmt: str = "PNG", declared: str | None = None, **params: object):
    return inspect_image(encode(image, fmt, **params), declared, max_pixels=MAX_PIXELS)


def invalid(data: bytes, max_pixels: int = MAX_PIXELS) -> GenerationError:
    with pytest.raises(GenerationError) as info:
        inspect_image(data, "image/png", max_pixels=max_pixels)
    assert info.value.kind is ErrorKind.INVALID_IMAGE
    return info.value


def test_inspect_reports_real_mime_and_size() -> None:
    data = encode(noise(120, 80), "JPEG", quality=90)
    image = inspect_image(data, "image/png", max_pixels=MAX_PIXELS)
    assert (image.mime, image.width, image.height) == ("image/jpeg", 120, 80)
    assert image.declared_mime == "image/png"
    assert image.data == data and image.extension == "jpg"


def test_bytes_that_do_not_decode_are_invalid_image() -> None:
    assert invalid(b"").detail == "empty"
    assert invalid(b"<html>definitely not</html>").detail == "unknown_format"
    png = encode(noise(200, 200), "PNG")
    assert invalid(png[: len(png) // 2]).detail == "undecodable"
    jpeg = encode(noise(200, 200), "JPEG")
    assert invalid(jpeg[: len(jpeg) // 2]).detail == "undecodable"
    flipped = bytearray(png)
    flipped[100] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    assert invalid(bytes(flipped)).detail == "undecodable"


def test_bomb_header_is_refused_without_decoding() -> None:
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    idat = zlib.compress(b"\0" * 999)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    assert invalid(bomb).detail == "too_large"
    assert invalid(encode(Image.new("L", (300, 300)), "PNG"), max_pixels=200 * 200).detail == "too_large"


def test_good_image_has_no_warnings() -> None:
    image = inspected(noise(1376, 768), declared="image/png")
    assert output_warnings(image, aspect_ratio="16:9", expected_pixels=(1376, 768)) == []


def test_mime_mismatch_but_jpg_alias_is_fine() -> None:
    picture = noise(64, 64)
    mislabelled = inspected(picture, "JPEG", "image/png")
    assert output_warnings(mislabelled, aspect_ratio=None, expected_pixels=None) == ["mime_mismatch"]
    for alias in ("image/jpg", "IMAGE/JPEG", "image/jpeg; charset=binary"):
        image = inspected(picture, "JPEG", alias)
        assert output_warnings(image, aspect_ratio=None, expected_pixels=None) == [], alias


def test_aspect_mismatch() -> None:
    image = inspected(noise(512, 512))
    assert output_warnings(image, aspect_ratio="16:9", expected_pixels=None) == ["aspect_mismatch"]
    assert output_warnings(image, aspect_ratio="1:1", expected_pixels=None) == []
    portrait = inspected(noise(288, 512))
    assert output_warnings(portrait, aspect_ratio="16:9", expected_pixels=None) == ["aspect_mismatch"]


def test_catalog_sizes_never_count_as_aspect_mismatch() -> None:
    """2.5 Flash's 21:9 size (1536x672) is 2.04 % off 21/9; the catalog's own size must pass."""
    spec = get_model("gemini-2.5-flash-image")
    assert spec is not None
    for ratio in spec.ratios:
        width, height = spec.expected_pixels(ratio, "1K")  # type: ignore[misc]
        image = inspected(noise(width, height), "JPEG", quality=60)
        assert output_warnings(image, aspect_ratio=ratio, expected_pixels=(width, height)) == [], ratio


def test_size_mismatch_when_4k_is_delivered_at_1k() -> None:
    spec = get_model("gemini-3-pro-image-preview")
    assert spec is not None
    ordered = spec.expected_pixels("16:9", "4K")
    assert ordered == (5504, 3072)
    image = inspected(noise(1376, 768), "JPEG", quality=60)
    assert output_warnings(image, aspect_ratio="16:9", expected_pixels=ordered) == ["size_mismatch"]
    slightly_off = inspected(noise(1360, 760), "JPEG", quality=60)  # within 3 %: a rounding, not a class
    assert output_warnings(slightly_off, aspect_ratio="16:9", expected_pixels=(1376, 768)) == []


def test_blank_images() -> None:
    black = inspected(Image.new("RGB", (1024, 1024), "black"))
    assert output_warnings(black, aspect_ratio="1:1", expected_pixels=(1024, 1024)) == ["blank_image"]
    white_jpeg = inspected(Image.new("RGB", (2048, 1152), "white"), "JPEG", quality=85)
    assert output_warnings(white_jpeg, aspect_ratio="16:9", expected_pixels=None) == ["blank_image"]
    transparent = inspected(Image.new("RGBA", (256, 256), (255, 0, 0, 0)))
    assert is_blank(transparent.data)
    grey_palette = inspected(Image.new("P", (300, 300), 7), "GIF")
    assert is_blank(grey_palette.data)
    near_black = Image.frombytes("L", (512, 512), bytes(b % 4 for b in os.urandom(512 * 512)))
    assert is_blank(encode(near_black, "PNG"))  # encoder-level noise is still one colour


def test_a_small_shape_on_black_is_not_blank() -> None:
    canvas = Image.new("RGB", (1024, 1024), "black")
    ImageDraw.Draw(canvas).rectangle((400, 400, 520, 520), fill="white")
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert not is_blank(encode(canvas, fmt)), fmt
    gradient = Image.linear_gradient("L").resize((1024, 1024))
    assert not is_blank(encode(gradient, "PNG"))


def test_is_blank_on_the_pillow_path_refuses_a_bomb_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """BMP is not a libvips format: ``is_blank`` judges it with Pillow, behind the same header-only
    bomb guard as ``inspect_image`` (it used to decode whatever Pillow's own warning let through)."""
    import bananaline.checks as checks

    assert is_blank(encode(Image.new("RGB", (600, 300), (9, 90, 200)), "BMP"))
    canvas = Image.new("RGB", (600, 300), "black")
    ImageDraw.Draw(canvas).rectangle((200, 100, 260, 160), fill="white")
    assert not is_blank(encode(canvas, "BMP"))
    decoded: list[object] = []
    real_decode = checks.decode
    monkeypatch.setattr(checks, "decode", lambda image: decoded.append(image) or real_decode(image))
    # A valid BMP header announcing 8200 x 8200 (over 8192 x 8192, under Pillow's own bomb
    # warning): refused before a single pixel row is read.
    header = encode(Image.new("RGB", (1, 1)), "BMP")[:54]
    bomb = header[:18] + struct.pack("<ii", 8200, 8200) + header[26:] + b"\0" * 64
    assert not is_blank(bomb)
    assert decoded == []
    assert is_blank(encode(Image.new("L", (40, 40), 3), "BMP"))
    assert len(decoded) == 1


def test_codes_come_in_the_documented_order() -> None:
    image = inspected(Image.new("RGB", (800, 400), "black"), "JPEG", "image/png")
    assert output_warnings(image, aspect_ratio="1:1", expected_pixels=(1024, 1024)) == [
        "mime_mismatch",
        "aspect_mismatch",
        "blank_image",
    ]


def test_strict_mode_raises_output_check() -> None:
    image = inspected(Image.new("RGB", (512, 512), "black"))
    assert check_output(image, aspect_ratio="16:9", expected_pixels=None, strict=False) == [
        "aspect_mismatch",
        "blank_image",
    ]
    with pytest.raises(GenerationError) as info:
        check_output(image, aspect_ratio="16:9", expected_pixels=None, strict=True)
    assert info.value.kind is ErrorKind.OUTPUT_CHECK
    assert info.value.detail == "aspect_mismatch,blank_image"
    fine = inspected(noise(64, 64))
    assert check_output(fine, aspect_ratio="1:1", expected_pixels=None, strict=True) == []
