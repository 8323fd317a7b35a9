"""The CLI's contract, over real processes against the simulator: under ``--json`` exactly one JSON
object on stdout whatever happens; exit 2 means nothing was sent upstream (so nothing was paid
for); exit 1 after a paid call still lists what was made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bananaline.cli import app

KEY = "cli-contract-key-123456"
runner = CliRunner()


def _env(sim, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("BANANALINE_")}
    env.update(
        BANANALINE_BASE_URL=sim.base_url,
        BANANALINE_API_KEY=KEY,
        BANANALINE_BACKOFF_INITIAL_S="0.01",
        BANANALINE_BACKOFF_MAX_S="0.05",
    )
    env.update(extra)
    return env


def _run(sim, *args: str, **env: str) -> tuple[int, dict, str]:
    """A fresh ``bananaline`` process; stdout must be exactly one JSON object on one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "bananaline", *args],
        capture_output=True,
        text=True,
        env=_env(sim, **env),
        timeout=180,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout is not one line (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    payload = json.loads(lines[0])
    assert isinstance(payload, dict)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, payload, proc.stderr


def _assert_failure_shape(payload: dict) -> dict:
    assert payload["ok"] is False
    assert set(payload) >= {"ok", "images", "text", "warnings", "attempts", "elapsed_s", "usage", "error"}
    error = payload["error"]
    assert set(error) >= {"kind", "detail", "label", "retryable", "message", "message_zh"}
    assert error["message"] and error["message_zh"]
    return error


# ---- item 9: a bad store URL is refused before anything is sent ---------------------------------


def test_bogus_store_url_exits_2_before_any_upstream_call(sim):
    code, payload, _ = _run(sim, "generate", "a cat", "--json", "--store", "bogus://x")
    assert code == 2
    error = _assert_failure_shape(payload)
    assert error["kind"] == "invalid_input"
    assert "bogus" in error["message"] and "s3://" in error["message"]
    assert payload["attempts"] == 0 and payload["images"] == []
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    "store_url, words",
    [
        ("s3://AKIDLEAKED01:sEcReTlEaKeD99@bucket/p", "credentials"),
        ("s3://bucket/p?endpoint=http://127.0.0.1:9&colour=red", "unknown store URL option"),
        ("s3://bucket/p?presign=maybe", "not a boolean"),
        ("s3:///no-bucket", "names no bucket"),
        ("oss://bucket/p", "endpoint"),
        ("file://./blocked/images", "cannot be used"),
    ],
)
def test_every_store_url_mistake_is_invalid_input_and_sends_nothing(sim, tmp_path, store_url, words):
    (tmp_path / "blocked").write_text("a file where the store directory should be")
    result = runner.invoke(app, ["generate", "a cat", "--json", "--store", store_url], env=_env(sim))
    assert result.exit_code == 2, result.output
    payload = json.loads(result.stdout)
    error = _assert_failure_shape(payload)
    assert error["kind"] == "invalid_input" and words in error["message"], error
    assert "sEcReTlEaKeD99" not in result.stdout
    assert sim.stats()["requests_total"] == 0


# ---- item 10: every failure under --json is one JSON object ------------------------------------


def test_out_folder_that_is_a_file_exits_2_with_one_json_object(sim, tmp_path):
    (tmp_path / "out").write_text("not a directory")
    code, payload, _ = _run(sim, "generate", "a cat", "--json")
    assert code == 2
    error = _assert_failure_shape(payload)
    assert error["kind"] == "invalid_input"
    assert "out" in error["message"] and "file" in error["message"]
    assert sim.stats()["requests_total"] == 0


def test_out_folder_below_a_file_exits_2(sim, tmp_path):
    (tmp_path / "plain").write_text("x")
    args = ["generate", "a cat", "--json", "--out", "plain/deeper/images"]
    result = runner.invoke(app, args, env=_env(sim))
    assert result.exit_code == 2
    assert _assert_failure_shape(json.loads(result.stdout))["kind"] == "invalid_input"
    assert sim.stats()["requests_total"] == 0


def test_failure_after_the_paid_call_exits_1_and_still_lists_the_image(sim, tmp_path):
    """The store cannot take the image and neither can the spool: the image was paid for and
    saved locally, so the answer says where it is, with the storage error and exit 1."""
    store = tmp_path / "store"
    store.mkdir()
    year = time.gmtime().tm_year
    for blocked_year in (year, year + 1):
        (store / str(blocked_year)).write_text("a file where the day folders go")
    (tmp_path / "spool-is-a-file").write_text("x")
    code, payload, _ = _run(
        sim,
        "generate",
        "a cat",
        "-a",
        "1:1",
        "--json",
        "--store",
        "file://./store",
        BANANALINE_SPOOL_DIR=str(tmp_path / "spool-is-a-file"),
    )
    assert code == 1
    error = _assert_failure_shape(payload)
    assert error["kind"] == "storage" and "spool" in error["detail"]
    assert payload["attempts"] == 1 and sim.stats()["requests_total"] == 1
    [image] = payload["images"]
    assert image["sha256"] and image["width"] == 1024
    assert Path(image["path"]).is_file()


def test_missing_config_file_is_one_json_object(sim, tmp_path):
    code, payload, _ = _run(sim, "--config", str(tmp_path / "absent.toml"), "generate", "a cat", "--json")
    assert code == 2
    error = _assert_failure_shape(payload)
    assert error["kind"] == "invalid_input" and "absent.toml" in error["message"]
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-attempts", "0"], "max_attempts"),
        (["--timeout", "-1"], "timeout_s"),
        (["--model", "gemini-2.5-flash-image", "--size", "4K"], "1K"),
        (["--aspect-ratio", "5:7"], "5:7"),
    ],
)
def test_bad_options_are_invalid_input_as_json(sim, args, words):
    result = runner.invoke(app, ["generate", "a cat", "--json", *args], env=_env(sim))
    assert result.exit_code == 2, result.output
    error = _assert_failure_shape(json.loads(result.stdout))
    assert error["kind"] == "invalid_input" and words in error["message"], error
    assert sim.stats()["requests_total"] == 0


def test_config_file_that_is_not_toml_is_one_json_object(sim, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    result = runner.invoke(app, ["--config", str(bad), "generate", "a cat", "--json"], env=_env(sim))
    assert result.exit_code == 2, result.output
    assert _assert_failure_shape(json.loads(result.stdout))["kind"] == "invalid_input"
    assert sim.stats()["requests_total"] == 0


def test_a_bug_while_saving_is_reported_with_the_image(sim, monkeypatch):
    import bananaline.delivery

    def broken_save(result, out_dir):
        raise RuntimeError("provenance writer exploded")

    monkeypatch.setattr(bananaline.delivery, "save_result", broken_save)
    result = runner.invoke(app, ["generate", "a cat", "-a", "1:1", "--json"], env=_env(sim))
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    error = _assert_failure_shape(payload)
    assert error["kind"] == "storage" and "exploded" in error["detail"]
    assert len(payload["images"]) == 1 and payload["images"][0]["sha256"]


def test_a_bug_in_the_client_is_internal_and_one_json_object(sim, monkeypatch):
    from bananaline.client import ImageClient

    async def broken_generate(self, request, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(ImageClient, "generate", broken_generate)
    result = runner.invoke(app, ["generate", "a cat", "--json"], env=_env(sim))
    assert result.exit_code == 1
    error = _assert_failure_shape(json.loads(result.stdout))
    assert error["kind"] == "internal" and "surprise" in error["detail"]


# ---- item 13 through the CLI: a zero quota is not retried ---------------------------------------


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_zero_quota_is_quota_after_one_attempt(sim, protocol):
    result = runner.invoke(
        app,
        ["generate", "a cat [sim fault=quota_zero]", "--json", "--protocol", protocol, "--max-attempts", "4"],
        env=_env(sim),
    )
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    error = _assert_failure_shape(payload)
    assert error["kind"] == "quota" and error["retryable"] is False
    assert "billing" in error["message"] and "结算" in error["message_zh"]
    assert payload["attempts"] == 1 and sim.stats()["requests_total"] == 1
