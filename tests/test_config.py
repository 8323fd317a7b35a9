"""Where settings come from, strongest first: flags, environment, config file, defaults."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bananaline.cli import app
from bananaline.config import Settings


def test_precedence_env_over_file_over_default(tmp_path, monkeypatch):
    config = tmp_path / "b.toml"
    config.write_text(
        'base_url = "http://from-file.invalid"\nmax_attempts = 5\nmodel = "gemini-3-pro-image"\n'
    )
    monkeypatch.setenv("BANANALINE_CONFIG", str(config))
    monkeypatch.setenv("BANANALINE_MAX_ATTEMPTS", "7")
    settings = Settings()
    assert settings.base_url == "http://from-file.invalid"
    assert settings.max_attempts == 7
    assert settings.with_overrides(max_attempts=2, model=None).max_attempts == 2
    assert settings.with_overrides(model=None).model == "gemini-3-pro-image"


def test_api_key_is_secret_everywhere(monkeypatch):
    monkeypatch.setenv("BANANALINE_API_KEY", "sk-secret-value-123456")
    settings = Settings()
    assert "sk-secret-value-123456" not in repr(settings)
    assert "sk-secret-value-123456" not in settings.model_dump_json()


def test_cli_reads_config_file(sim, tmp_path):
    config = tmp_path / "custom.toml"
    config.write_text(f'base_url = "{sim.base_url}"\napi_key = "file-key-123456"\nprotocol = "openai"\n')
    result = CliRunner().invoke(app, ["--config", str(config), "generate", "a melon", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] and sim.stats()["by_path"]
    assert any("chat/completions" in path for path in sim.stats()["by_path"])


def test_default_timeouts_follow_size():
    settings = Settings()
    assert settings.timeout_for("1K") == 360 and settings.timeout_for("2K") == 600
    assert settings.timeout_for("4K") == 1200
    assert Settings(timeout_s=30).timeout_for("4K") == 30
