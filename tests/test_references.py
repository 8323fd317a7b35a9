"""Reference loading: sniffing, local files, data URIs, bombs, downscaling, concurrent URL fetches."""

from __future__ import annotations

import base64
import io
import os
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from bananaline.config import Settings
from bananaline.errors import ErrorKind, GenerationError
from bananaline.references import ReferenceImage, inline_size, load_references, sniff_mime


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with a tiny compressed IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


async def load_one(source: str, **overrides: object) -> ReferenceImage:
    (reference,) = await load_references([source], settings=Settings(**overrides))
    return reference


async def reference_error(sources: list[str], **overrides: object) -> GenerationError:
    with pytest.raises(GenerationError) as info:
        await load_references(sources, settings=Settings(**overrides))
    assert info.value.kind is ErrorKind.REFERENCE_ERROR
    return info.value


# --- sniffing -------------------------------------------------------------------------------------


def test_sniff_every_format_from_magic_numbers() -> None:
    small = Image.new("RGB", (4, 4), "red")
    assert sniff_mime(encode(small, "PNG")) == "image/png"
    assert sniff_mime(encode(small, "JPEG")) == "image/jpeg"
    assert sniff_mime(encode(small, "WEBP")) == "image/webp"
    assert sniff_mime(encode(small, "GIF")) == "image/gif"
    assert sniff_mime(encode(small, "BMP")) == "image/bmp"
    assert sniff_mime(encode(small, "TIFF")) == "image/tiff"
    assert sniff_mime(encode(small, "AVIF")) == "image/avif"
    ftyp = struct.pack(">I", 24) + b"ftyp"
    assert sniff_mime(ftyp + b"heic\0\0\0\0mif1heic" + b"\0" * 16) == "image/heic"
    assert sniff_mime(ftyp + b"mif1\0\0\0\0mif1miaf" + b"\0" * 16) == "image/heif"
    assert sniff_mime(ftyp + b"mif1\0\0\0\0avifmiaf" + b"\0" * 16) == "image/avif"
    assert sniff_mime(ftyp + b"isom\0\0\0\0isomavc1" + b"\0" * 16) is None  # an MP4 is no image
    assert sniff_mime(b"<!doctype html><html>") is None
    assert sniff_mime(b"BM not really") is None
    assert sniff_mime(b"") is None


async def test_jpeg_named_png_is_jpeg_and_keeps_its_bytes(tmp_path: Path) -> None:
    jpeg = encode(Image.new("RGB", (40, 30), (10, 120, 200)), "JPEG", quality=90)
    path = tmp_path / "x.png"
    path.write_bytes(jpeg)
    reference = await load_one(str(path))
    assert (reference.mime, reference.width, reference.height) == ("image/jpeg", 40, 30)
    assert reference.data == jpeg
    assert reference.source == str(path)
    assert "bytes" in repr(reference) and "\\x" not in repr(reference)


async def test_webp_passes_through_and_gif_is_converted(tmp_path: Path) -> None:
    webp = encode(noise(50, 40), "WEBP", quality=80)
    gif = encode(Image.new("P", (30, 20), 3), "GIF")
    (tmp_path / "a.jpg").write_bytes(webp)
    (tmp_path / "b.webp").write_bytes(gif)
    first, second = await load_references(
        [str(tmp_path / "a.jpg"), str(tmp_path / "b.webp")], settings=Settings()
    )
    assert first.mime == "image/webp" and first.data == webp
    assert sniff_mime(gif) == "image/gif"
    assert second.mime in ("image/png", "image/jpeg")  # the upstream takes no GIF inline
    assert Image.open(io.BytesIO(second.data)).size == (30, 20)


# --- local files and data URIs --------------------------------------------------------------------


async def test_missing_path_is_not_found(tmp_path: Path) -> None:
    error = await reference_error([str(tmp_path / "nope.png")])
    assert error.detail == "not_found"


async def test_directory_fifo_and_device_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it blocking would hang: the loader must not
    for source in (str(tmp_path), str(fifo), "/dev/zero"):
        error = await reference_error([source])
        assert error.detail == "not_an_image", source


async def test_text_and_truncated_files_are_not_images(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("just text")
    png = encode(noise(64, 64), "PNG")
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    for name in ("notes.png", "cut.png"):
        error = await reference_error([str(tmp_path / name)])
        assert error.detail == "not_an_image", name


async def test_local_file_over_the_limit_is_too_large(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(encode(noise(200, 200), "PNG"))
    error = await reference_error([str(tmp_path / "big.png")], reference_max_download_bytes=10_000)
    assert error.detail == "too_large"


async def test_data_uri_is_decoded_and_its_payload_kept_out_of_source() -> None:
    png = encode(Image.new("RGBA", (12, 9), (0, 0, 0, 0)), "PNG")
    payload = base64.b64encode(png).decode()
    reference = await load_one(f"data:image/jpeg;base64,{payload}")
    assert (reference.mime, reference.data) == ("image/png", png)
    assert payload[:20] not in reference.source and reference.source.startswith("data:image/jpeg;base64")
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    assert (await load_one(f"data:image/png;base64,{urlsafe}")).data == png


async def test_bad_data_uris() -> None:
    assert (await reference_error(["data:image/png;base64,@@@not-base64@@@"])).detail == "not_an_image"
    assert (await reference_error(["data:text/plain,hello"])).detail == "not_an_image"
    huge = "data:image/png;base64," + "A" * 40_000
    assert (await reference_error([huge], reference_max_download_bytes=10_000)).detail == "too_large"


async def test_paths_can_be_refused_and_file_urls_always_are(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8)), "PNG"))
    with pytest.raises(GenerationError) as info:
        await load_references([str(path)], settings=Settings(), allow_paths=False)
    assert info.value.detail == "blocked_address"
    assert (await reference_error([f"file://{path}"])).detail == "blocked_address"


# --- decompression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize("side", [50_000, 9_000])
async def test_bomb_header_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    """50000² trips Pillow's own guard, 9000² (81 Mpx) only ours (64 Mpx by default)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side, side))
    tracemalloc.start()
    started_s = time.perf_counter()
    try:
        error = await reference_error([str(path)])
        elapsed_s = time.perf_counter() - started_s
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.detail == "too_large"
    assert "decompression bomb" in error.message or f"{side}x{side}" in error.message
    assert elapsed_s < 10.0  # refused from the header: decoding 9000² would take far longer
    assert peak_bytes < 20 * 1024 * 1024  # a decoded 9000² grey image alone would be 81 MB


# --- downscaling ----------------------------------------------------------------------------------


async def test_huge_noisy_png_is_downscaled_and_small_one_kept(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    noise(6000, 4000).save(big, format="PNG", compress_level=1)
    assert big.stat().st_size > 60_000_000
    small_bytes = encode(noise(300, 200), "PNG")
    (tmp_path / "small.png").write_bytes(small_bytes)
    settings = Settings(reference_max_download_bytes=100_000_000)
    large, small = await load_references([str(big), str(tmp_path / "small.png")], settings=settings)
    assert max(large.width, large.height) == settings.reference_long_edge_px
    assert (large.width, large.height) == (3072, 2048) and large.mime == "image/jpeg"
    with Image.open(io.BytesIO(large.data)) as decoded:
        decoded.load()
        assert decoded.size == (3072, 2048)
    assert inline_size(len(large.data)) + inline_size(len(small.data)) <= settings.inline_request_limit_bytes
    assert small.data == small_bytes and small.mime == "image/png"


async def test_inline_budget_shrinks_the_largest_first(tmp_path: Path) -> None:
    sources = []
    originals = {}
    for name, size in (("a.jpg", (1600, 1200)), ("b.png", (64, 64)), ("c.jpg", (800, 600))):
        image = noise(*size)
        data = encode(image, "PNG") if name.endswith(".png") else encode(image, "JPEG", quality=95)
        (tmp_path / name).write_bytes(data)
        sources.append(str(tmp_path / name))
        originals[name] = data
    total = sum(inline_size(len(data)) for data in originals.values())
    limit = int(total * 0.8)
    settings = Settings(inline_request_limit_bytes=limit)
    a, b, c = await load_references(sources, settings=settings)
    assert sum(inline_size(len(ref.data)) for ref in (a, b, c)) <= limit - 64 * 1024
    assert a.data != originals["a.jpg"] and max(a.width, a.height) < 1600
    assert b.data == originals["b.png"] and c.data == originals["c.jpg"]
    Image.open(io.BytesIO(a.data)).load()


async def test_alpha_survives_downscaling_as_png(tmp_path: Path) -> None:
    image = noise(4000, 1000, "RGBA")
    (tmp_path / "alpha.png").write_bytes(encode(image, "PNG", compress_level=1))
    reference = await load_one(str(tmp_path / "alpha.png"))
    assert reference.mime == "image/png" and (reference.width, reference.height) == (3072, 768)
    assert Image.open(io.BytesIO(reference.data)).mode == "RGBA"


async def test_exif_orientation_is_applied_when_reencoding(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.new("RGB", (4000, 2000), (90, 90, 90)), "JPEG", exif=exif.tobytes())
    (tmp_path / "rotated.jpg").write_bytes(data)
    reference = await load_one(str(tmp_path / "rotated.jpg"))
    assert (reference.width, reference.height) == (1536, 3072)
    assert Image.open(io.BytesIO(reference.data)).size == (1536, 3072)


# --- URLs: fetched concurrently -------------------------------------------------------------------


class _BarrierHandler(BaseHTTPRequestHandler):
    """Answers only once ``parties`` requests are in flight together: proof of concurrency."""

    server: _BarrierServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        try:
            self.server.barrier.wait(timeout=10)
            status, body = 200, self.server.images[self.path.split("?")[0]]
        except threading.BrokenBarrierError:
            status, body = 503, b"not concurrent"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _BarrierServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _BarrierHandler)
        self.images = images
        self.barrier = threading.Barrier(len(images))
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def barrier_server() -> Iterator[_BarrierServer]:
    images = {f"/{n}.png": encode(Image.new("RGB", (10 + n, 10), (n * 40, 0, 0)), "PNG") for n in range(3)}
    server = _BarrierServer(images)
    yield server
    server.shutdown()
    server.server_close()


async def test_urls_are_fetched_concurrently_in_order(barrier_server: _BarrierServer) -> None:
    port = barrier_server.server_address[1]
    sources = [f"http://127.0.0.1:{port}/{n}.png?sig=secret{n}" for n in range(3)]
    references = await load_references(sources, settings=Settings(allow_private_refs=True))
    assert [ref.data for ref in references] == [barrier_server.images[f"/{n}.png"] for n in range(3)]
    assert [ref.width for ref in references] == [10, 11, 12]
    assert all("secret" not in ref.source for ref in references)


async def test_a_failure_does_not_wait_for_slow_downloads(tmp_path: Path) -> None:
    """The barrier wants two requests; only one comes, so that download hangs until cancelled."""
    server = _BarrierServer({"/0.png": b"x", "/1.png": b"y"})
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/0.png"
        started_s = time.perf_counter()
        error = await reference_error([url, str(tmp_path / "missing.png")], allow_private_refs=True)
        assert error.detail == "not_found"
        assert time.perf_counter() - started_s < 5.0
    finally:
        server.barrier.abort()
        server.shutdown()
        server.server_close()


async def test_heic_this_pillow_cannot_read_is_passed_through(tmp_path: Path) -> None:
    """The upstream reads HEIC/HEIF; without a Pillow plugin it is sent as-is, size unknown (0x0)."""
    heic = struct.pack(">I", 24) + b"ftypheic\0\0\0\0mif1heic" + b"\0" * 64
    (tmp_path / "photo.HEIC").write_bytes(heic)
    reference = await load_one(str(tmp_path / "photo.HEIC"))
    assert (reference.mime, reference.width, reference.height, reference.data) == ("image/heic", 0, 0, heic)
