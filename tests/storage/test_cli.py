"""``store put`` and ``store flush`` as a person runs them."""

from __future__ import annotations

import json
from pathlib import Path

from storage_support import noise_png
from typer.testing import CliRunner

from bananaline.storage.cli import app

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "BANANALINE_SPOOL_DIR": str(tmp_path / "spool"),
        "BANANALINE_STORE_UPLOAD_ATTEMPTS": "1",
        "BANANALINE_STORE_BACKOFF_INITIAL_S": "0",
    }


def test_put_prints_json_with_absolute_paths(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(noise_png(31))
    result = runner.invoke(
        app, ["put", str(image), "--store", "file://./images", "--json"], env=_env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "stored"
    assert {"key", "url", "compressed_url", "thumbnail_url", "status"} <= set(summary)
    assert summary["url"] == str((tmp_path / "images" / summary["key"]).resolve())
    assert Path(summary["url"]).read_bytes() == image.read_bytes()
    assert Path(summary["thumbnail_url"]).is_file() and summary["thumbnail_url"].endswith(".thumb.webp")


def test_put_sniffs_the_real_type_not_the_name(tmp_path: Path) -> None:
    image = tmp_path / "really-a-png.jpg"
    image.write_bytes(noise_png(32))
    result = runner.invoke(app, ["put", str(image), "--store", "memory://", "--json"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key"].endswith(".png")


def test_put_refuses_non_images_and_bad_store_urls(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("hello")
    result = runner.invoke(app, ["put", str(text), "--store", "memory://"], env=_env(tmp_path))
    assert result.exit_code == 2 and "not a recognised image" in result.output
    image = tmp_path / "a.png"
    image.write_bytes(noise_png(33))
    result = runner.invoke(app, ["put", str(image), "--store", "s3://id:pw-secret-1@b/p"], env=_env(tmp_path))
    assert result.exit_code == 2 and "credentials" in result.output and "pw-secret-1" not in result.output


def test_flush_reports_counts(tmp_path: Path, moto_endpoint: str) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(noise_png(34))
    broken = f"s3://cli-bucket-missing?endpoint={moto_endpoint}"
    env = {**_env(tmp_path), "AWS_ACCESS_KEY_ID": "AKIDCLI1", "AWS_SECRET_ACCESS_KEY": "cli-secret-value"}
    put = runner.invoke(app, ["put", str(image), "--store", broken, "--json"], env=env)
    assert put.exit_code == 1 and json.loads(put.stdout)["status"] == "stored_locally"
    assert "cli-secret-value" not in put.output

    flush = runner.invoke(app, ["flush", "--store", "file://./recovered", "--all", "--json"], env=env)
    assert flush.exit_code == 0, flush.output
    assert json.loads(flush.stdout) | {"errors": []} == {
        "uploaded": 1,
        "failed": 0,
        "remaining": 0,
        "skipped_other_store": 0,
        "errors": [],
    }
    assert len(list((tmp_path / "recovered").rglob("*.png"))) == 1
