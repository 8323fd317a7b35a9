"""``bananaline generate`` end to end against the simulator: real images, real dimensions, exit codes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bananaline.cli import app

runner = CliRunner()
KEY = "cli-test-key-123456"


def _env(sim, **extra):
    env = {
        "BANANALINE_BASE_URL": sim.base_url,
        "BANANALINE_API_KEY": KEY,
        "BANANALINE_BACKOFF_INITIAL_S": "0.01",
    }
    env.update(extra)
    return env


def _invoke(sim, *args, **env):
    result = runner.invoke(app, ["generate", *args, "--json"], env=_env(sim, **env))
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    return result.exit_code, payload


def _reference_files(tmp_path: Path, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = tmp_path / f"ref{index}.png"
        Image.new("RGB", (320 + index, 240), (index * 15 % 255, 90, 200)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
@pytest.mark.parametrize(
    "model, ratio, size, expected",
    [
        ("gemini-3-pro-image-preview", "16:9", "1K", (1376, 768)),
        ("gemini-3-pro-image-preview", "9:16", "2k", (1536, 2752)),
        ("gemini-2.5-flash-image", "21:9", None, (1536, 672)),
        ("gemini-3.1-flash-image-preview", "1:1", "512", (512, 512)),
    ],
)
def test_text_to_image_dimensions(sim, tmp_path, protocol, model, ratio, size, expected):
    args = [
        "a red bicycle",
        "--model",
        model,
        "--aspect-ratio",
        ratio,
        "--protocol",
        protocol,
        "--out",
        "imgs",
    ]
    if size:
        args += ["--size", size]
    code, payload = _invoke(sim, *args)
    assert code == 0, payload
    assert payload["ok"] is True and payload["error"] is None
    image = payload["images"][0]
    assert (image["width"], image["height"]) == expected
    saved = Path(image["path"])
    assert saved.exists() and saved.suffix == ".png"
    with Image.open(saved) as decoded:
        decoded.load()
        assert decoded.size == expected
    assert payload["attempts"] == 1 and payload["elapsed_s"] >= 0
    assert set(payload) >= {"ok", "images", "text", "warnings", "attempts", "elapsed_s", "usage", "error"}


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
@pytest.mark.parametrize("count", [1, 3, 14])
def test_image_to_image_with_references(sim, tmp_path, protocol, count):
    refs = _reference_files(tmp_path, count)
    args = ["blend these", "--protocol", protocol, "--aspect-ratio", "4:3", "--size", "1K"]
    for ref in refs:
        args += ["--ref", ref]
    code, payload = _invoke(sim, *args)
    assert code == 0, payload
    assert (payload["images"][0]["width"], payload["images"][0]["height"]) == (1200, 896)
    stats = sim.stats()
    assert stats["requests_total"] == 1
    sent = stats["last_call"]["references"]
    assert len(sent) == count
    assert [tuple(ref["pixels"]) for ref in sent] == [(320 + index, 240) for index in range(count)]
    assert stats["last_call"]["aspect_ratio"] == "4:3" and stats["last_call"]["image_size"] == "1K"


def test_mime_comes_from_bytes_not_file_name(sim, tmp_path):
    fake_png = tmp_path / "actually.png"
    Image.new("RGB", (64, 64), "green").save(fake_png, format="JPEG")
    data_uri = "data:image/png;base64," + base64.b64encode(fake_png.read_bytes()).decode()
    code, payload = _invoke(sim, "edit", "--ref", str(fake_png), "--ref", data_uri)
    assert code == 0, payload
    sent = sim.stats()["last_call"]["references"]
    assert [(ref["mime"], ref["format"]) for ref in sent] == [("image/jpeg", "JPEG")] * 2


def test_openai_url_style_image_is_downloaded(sim):
    code, payload = _invoke(sim, "a pear [sim style=url]", "--protocol", "openai", "--aspect-ratio", "1:1")
    assert code == 0, payload
    assert payload["images"][0]["width"] == 1024


def test_invalid_input_exits_2_and_sends_nothing(sim):
    code, payload = _invoke(sim, "x", "--model", "gemini-2.5-flash-image", "--size", "4K")
    assert code == 2
    assert payload["ok"] is False and payload["error"]["kind"] == "invalid_input"
    assert "1K" in payload["error"]["message"]
    code, payload = _invoke(sim, "   ")
    assert code == 2 and payload["error"]["kind"] == "invalid_input"
    assert sim.stats()["requests_total"] == 0


def test_generation_failure_exits_1_with_bilingual_error(sim):
    code, payload = _invoke(sim, "x [sim fault=finish_IMAGE_SAFETY]")
    assert code == 1
    error = payload["error"]
    assert error["kind"] == "finish_reason" and error["detail"] == "IMAGE_SAFETY"
    assert error["retryable"] is False and error["message_zh"]
    assert KEY not in json.dumps(payload)


class _RedirectHandler(BaseHTTPRequestHandler):
    target = ""
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", type(self).target)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def redirector():
    server = ThreadingHTTPServer(("127.0.0.2", 0), _RedirectHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RedirectHandler.hits = []
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/cat.png",
        "http://10.1.2.3/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "http://[::1]/x.png",
    ],
)
def test_ssrf_reference_urls_are_refused_before_any_upstream_call(sim, url):
    code, payload = _invoke(sim, "edit", "--ref", url)
    assert code == 2, payload
    assert payload["error"]["kind"] == "reference_error"
    assert payload["error"]["detail"] == "blocked_address"
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/secret.png", "http://169.254.169.254/latest/"])
def test_public_looking_url_redirecting_inward_is_refused(sim, redirector, target):
    _RedirectHandler.target = target.format(port=sim.base_url.rsplit(":", 1)[1])
    port = redirector.server_address[1]
    code, payload = _invoke(
        sim,
        "edit",
        "--ref",
        f"http://127.0.0.2:{port}/cdn/cat.png",
        BANANALINE_REF_ALLOW_NETWORKS='["127.0.0.2/32"]',
    )
    assert code == 2, payload
    assert payload["error"]["detail"] == "blocked_address"
    assert _RedirectHandler.hits == ["/cdn/cat.png"]
    assert sim.stats()["requests_total"] == 0


def test_png_carries_provenance(sim):
    code, payload = _invoke(sim, "一只香蕉 on a desk", "--aspect-ratio", "1:1")
    assert code == 0
    with Image.open(payload["images"][0]["path"]) as image:
        text = image.text
    assert any("一只香蕉" in value for value in text.values())


def test_real_process_generate(sim, tmp_path):
    env = {**os.environ, **_env(sim)}
    proc = subprocess.run(
        [sys.executable, "-m", "bananaline", "generate", "a plum", "-a", "3:2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert (payload["images"][0]["width"], payload["images"][0]["height"]) == (1264, 848)
    assert KEY not in proc.stdout + proc.stderr
    with Image.open(io.BytesIO(Path(payload["images"][0]["path"]).read_bytes())) as image:
        assert image.format == "PNG"


def test_generate_with_store_prints_urls(sim, tmp_path):
    code, payload = _invoke(sim, "a teapot", "-a", "16:9", "--store", "file://./store")
    assert code == 0, payload
    image = payload["images"][0]
    assert image["storage_status"] == "stored"
    stored = Path(image["url"].removeprefix("file://"))
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == image["sha256"]
    assert image["sha256"] in stored.name
    thumb = Path(image["thumbnail_url"].removeprefix("file://"))
    with Image.open(thumb) as thumbnail:
        assert thumbnail.format == "WEBP" and max(thumbnail.size) == 512
    assert (tmp_path / "store").is_dir()


def test_max_attempts_flag_bounds_retries(sim):
    code, payload = _invoke(sim, "x [sim fault=http_503 times=5 retry_after=0]", "--max-attempts", "2")
    assert code == 1 and payload["attempts"] == 2
    assert payload["error"]["kind"] == "upstream_error" and payload["error"]["retryable"] is True
    assert sim.stats()["requests_total"] == 2


def test_timeout_flag_bounds_one_attempt(sim):
    code, payload = _invoke(sim, "x [sim fault=hang]", "--timeout", "1", "--max-attempts", "3")
    assert code == 1
    assert payload["error"]["kind"] == "timeout" and payload["error"]["retryable"] is False
    assert payload["attempts"] == 1 and payload["elapsed_s"] < 30


def test_allow_private_refs_flag_lets_a_loopback_reference_through(sim, tmp_path):
    served = tmp_path / "ref.png"
    Image.new("RGB", (300, 200), "orange").save(served)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            body = served.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ref.png"
    try:
        code, payload = _invoke(sim, "edit", "--ref", url)
        assert code == 2 and payload["error"]["detail"] == "blocked_address"
        code, payload = _invoke(sim, "edit", "--ref", url, "--allow-private-refs")
        assert code == 0, payload
        assert sim.stats()["last_call"]["references"][0]["pixels"] == [300, 200]
    finally:
        server.shutdown()
        server.server_close()


def test_human_output_says_what_happened(sim):
    ok = runner.invoke(app, ["generate", "a pear", "-a", "16:9"], env=_env(sim))
    assert ok.exit_code == 0
    assert "1376x768" in ok.stdout and "image/png" in ok.stdout and ".png" in ok.stdout
    failed = runner.invoke(app, ["generate", "x [sim fault=text_nsfw_zh]"], env=_env(sim))
    assert failed.exit_code == 1
    assert "text_response" in failed.stderr and "模型只返回了文字" in failed.stderr
    assert "retryable: False" in failed.stderr
