"""Saving with provenance: PNG text chunks read back by Pillow, sidecars, hostile stems."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from bananaline.checks import inspect_image
from bananaline.errors import ErrorKind, GenerationError
from bananaline.provenance import read_png_metadata, sanitize_stem, save_image
from bananaline.types import GeneratedImage

PROMPT_ZH = "一只戴着宇航员头盔的橘猫，水彩风格，背景是上海外滩的夜景"
METADATA = {
    "prompt": PROMPT_ZH,
    "model": "gemini-3-pro-image-preview",
    "aspect_ratio": "16:9",
    "image_size": "2K",
    "tags": {"caller": "测试", "row": "7"},
    "cost_usd": 0.134,
    "warnings": [],
}


def make(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> GeneratedImage:
    image = Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return inspect_image(buffer.getvalue(), None, max_pixels=10**8)


def test_png_chunks_read_back_with_pillow_and_pixels_are_untouched(tmp_path: Path) -> None:
    image = make("PNG", "RGBA")
    path = save_image(image, tmp_path, metadata=METADATA)
    assert path.parent == tmp_path and path.suffix == ".png"
    assert re.fullmatch(r"\d{8}-\d{6}-" + image.sha256[:12] + r"\.png", path.name)
    with Image.open(path) as saved:
        saved.load()
        text = dict(saved.text)  # type: ignore[attr-defined]
        with Image.open(io.BytesIO(image.data)) as original:
            assert saved.tobytes() == original.tobytes() and saved.mode == original.mode
    assert text["bananaline:prompt"] == PROMPT_ZH
    assert text["bananaline:model"] == "gemini-3-pro-image-preview"
    params = json.loads(text["bananaline:params"])
    assert params["tags"] == {"caller": "测试", "row": "7"} and params["cost_usd"] == 0.134
    assert text["Software"].startswith("bananaline")
    assert read_png_metadata(path) == METADATA
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp"))


def test_png_bytes_before_iend_are_exactly_the_delivered_ones(tmp_path: Path) -> None:
    image = make("PNG")
    saved = save_image(image, tmp_path, metadata={"prompt": "x"}).read_bytes()
    assert saved.startswith(image.data[:-12])  # everything up to IEND kept verbatim
    assert saved.endswith(image.data[-12:])  # and IEND itself still closes the file
    Image.open(io.BytesIO(saved)).verify()  # every chunk CRC is right


def test_long_prompt_is_compressed_and_survives(tmp_path: Path) -> None:
    prompt = "画一幅长卷：" + "山水、楼阁、行人。" * 3000
    path = save_image(make("PNG"), tmp_path, metadata={"prompt": prompt})
    assert Image.open(path).text["bananaline:prompt"] == prompt  # type: ignore[attr-defined]
    assert path.stat().st_size < len(prompt.encode()) // 2 + 20_000


def test_jpeg_gets_a_sidecar_and_exact_bytes(tmp_path: Path) -> None:
    image = make("JPEG")
    path = save_image(image, tmp_path, metadata=METADATA, stem="row-7")
    assert path.name == "row-7.jpg"
    assert path.read_bytes() == image.data
    sidecar = json.loads((tmp_path / "row-7.jpg.json").read_text(encoding="utf-8"))
    assert sidecar["metadata"] == METADATA
    assert sidecar["image"]["sha256"] == image.sha256 and sidecar["image"]["mime"] == "image/jpeg"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("..\\..\\windows\\system32", "windows_system32"),
        ("con", "_con"),
        ("NUL.txt", "_NUL.txt"),
        ("com1", "_com1"),
        ("a\0b", "a_b"),
        (".hidden", "hidden"),
        ("猫 的 图", "猫_的_图"),
        ("evil\u202egnp.exe", "evil_gnp.exe"),
        ("line\nbreak", "line_break"),
    ],
)
def test_hostile_stems_are_sanitised(tmp_path: Path, stem: str, expected: str) -> None:
    assert sanitize_stem(stem) == expected
    path = save_image(make("JPEG"), tmp_path, metadata={}, stem=stem)
    assert path.parent == tmp_path and path.name == f"{expected}.jpg"


def test_very_long_and_empty_stems(tmp_path: Path) -> None:
    image = make("PNG")
    long_path = save_image(image, tmp_path, metadata={}, stem="长" * 500)
    assert len(long_path.name.encode()) <= 160 and long_path.exists()
    for stem in ("", "../..", "///", "\0"):
        path = save_image(image, tmp_path, metadata={}, stem=stem)
        assert path.name.endswith(f"-{image.sha256[:12]}.png"), stem


def test_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GenerationError) as info:
        save_image(make("PNG"), blocker / "out", metadata={})
    assert info.value.kind is ErrorKind.STORAGE


def test_saving_twice_replaces_atomically(tmp_path: Path) -> None:
    first, second = make("PNG"), make("PNG")
    save_image(first, tmp_path, metadata={"prompt": "one"}, stem="same")
    path = save_image(second, tmp_path, metadata={"prompt": "two"}, stem="same")
    assert read_png_metadata(path) == {"prompt": "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]
