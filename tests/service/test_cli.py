"""``bananaline serve``, ``callers`` and ``usage`` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from bananaline.cli import app
from bananaline.simulator import free_port

from .conftest import SECRET_KEY
from .helpers import upstream_requests


def _env(tmp_path, simulator) -> dict[str, str]:
    return {
        "BANANALINE_DB_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "BANANALINE_STORE_URL": f"file://{tmp_path / 'images'}",
        "BANANALINE_SPOOL_DIR": str(tmp_path / "spool"),
        "BANANALINE_SECRET_KEY": SECRET_KEY,
        "BANANALINE_BASE_URL": simulator.base_url,
        "TEAM_KEY": "upstream-key-from-the-environment",
    }


def test_callers_add_list_and_usage(tmp_path, simulator, monkeypatch):
    for name, value in _env(tmp_path, simulator).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    added = runner.invoke(
        app,
        ["callers", "add", "design-team", "--api-key-env", "TEAM_KEY", "--rpm", "30", "--budget-usd", "5"],
    )
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("bl_") and len(token) > 40
    again = runner.invoke(app, ["callers", "add", "design-team"])
    assert again.exit_code == 2 and "already exists" in again.output
    listed = runner.invoke(app, ["callers", "list", "--json"])
    assert listed.exit_code == 0
    callers = json.loads(listed.stdout)
    assert callers[0]["name"] == "design-team" and callers[0]["has_upstream_key"] is True
    assert callers[0]["budget_usd"] == 5 and callers[0]["rpm"] == 30
    assert token not in listed.output and "upstream-key-from" not in listed.output
    assert runner.invoke(app, ["callers", "add", "x", "--api-key-env", "NOT_SET_ANYWHERE"]).exit_code == 2
    usage = runner.invoke(app, ["usage", "--json", "--since", "2020-01-01"])
    assert usage.exit_code == 0 and json.loads(usage.stdout)[0]["requests"] == 0
    assert runner.invoke(app, ["usage", "--since", "yesterday-ish"]).exit_code == 2
    monkeypatch.delenv("BANANALINE_SECRET_KEY")
    refused = runner.invoke(app, ["callers", "add", "no-secret", "--api-key", "abc12345"])
    assert refused.exit_code == 2 and "BANANALINE_SECRET_KEY" in refused.output


def test_serve_runs_the_service_and_a_cli_token_works(tmp_path, simulator):
    env = {**os.environ, **_env(tmp_path, simulator)}
    runner = CliRunner()
    added = runner.invoke(app, ["callers", "add", "ops", "--api-key-env", "TEAM_KEY"], env=env)
    token = added.stdout.strip().splitlines()[-1]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bananaline", "serve", "--port", str(port), "--root-path", "/banana"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        before = upstream_requests(simulator, "upstream-key-from-the-environment")
        response = httpx.post(
            f"{base}/v1/plugin/generate",
            json={"cleantext": "served banana", "aspect_ratio": "1:1"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["url"].startswith(f"{base}/banana/files/")
        assert upstream_requests(simulator, "upstream-key-from-the-environment") == before + 1
        assert httpx.get(f"{base}/openapi.json", trust_env=False).json()["servers"][0]["url"] == "/banana"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert token.encode() not in stderr
    assert b"http_request" in stderr  # JSON access log with request ids
