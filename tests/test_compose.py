"""``compose.yaml`` says only true things: every ``bananaline`` command in it (and every ``docker
compose run`` line it and docs/scaling.md suggest) parses with the CLI's own parser (a renamed or
removed flag, a bad value, an unknown command fails here), every ``BANANALINE_*`` variable it sets
is a setting with a valid value, its database and store URLs point at the services it runs, and
what it builds from exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from typer.core import TyperGroup

from bananaline.cli import app
from bananaline.config import Settings
from bananaline.storage.urls import parse_store_url

ROOT = Path(__file__).resolve().parents[1]
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}`` / ``${NAME:?error}`` / ``$$`` with no variable set."""
    if isinstance(value, str):
        text = _VARIABLE.sub(lambda m: m["arg"] if m["op"] == ":-" else "set-by-operator", value)
        return text.replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    return value


def _compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8")))


def _bananaline_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if 'ENTRYPOINT ["bananaline"]' in str(service.get("build", {}).get("dockerfile_inline", ""))
    }


def _parse(args: list[str]) -> typer.Context:
    """Resolve ``args`` to a command and parse its options as the CLI would (Typer's own click
    parser: types, ranges, unknown options), without running it."""
    command: Any = typer.main.get_command(app)
    parent = command.make_context("bananaline", [], resilient_parsing=True)
    rest = list(args)
    while isinstance(command, TyperGroup):
        assert rest, f"{args}: a command group needs a command"
        name, rest = rest[0], rest[1:]
        sub = command.get_command(parent, name)
        assert sub is not None, f"{args}: no command {name!r}"
        command = sub
        parent = command.make_context(name, [], parent=parent, resilient_parsing=True)
    return command.make_context(command.name or "", rest, parent=parent.parent)


def test_every_bananaline_command_parses_with_the_cli() -> None:
    services = _bananaline_services(_compose())
    assert {"service", "worker"} <= set(services)
    parsed = {name: _parse([str(arg) for arg in service["command"]]) for name, service in services.items()}
    assert parsed["service"].command.name == "serve" and parsed["worker"].command.name == "worker"
    service, worker = parsed["service"].params, parsed["worker"].params
    assert service["workers"] > 1 and worker["concurrency"] >= 1
    assert service["db"] == worker["db"] and service["db"].startswith("postgresql+psycopg://")
    assert service["store"] == worker["store"] and service["store"].startswith("s3://")
    assert worker["keys"] is not None and not worker["exit_when_idle"]


def test_the_checker_refuses_what_the_cli_refuses() -> None:
    with pytest.raises(Exception, match="No such option: --no-such-flag"):
        _parse(["worker", "--db", "sqlite:///x.db", "--no-such-flag"])
    with pytest.raises(typer.BadParameter):
        _parse(["worker", "--concurrency", "0"])
    with pytest.raises(AssertionError):
        _parse(["no-such-command"])
    assert _parse(["batch", "submit", "in.csv", "--json"]).params["as_json"] is True


def test_the_suggested_compose_run_commands_parse() -> None:
    """``docker compose run --rm worker ARGS`` replaces the worker's command: ARGS must be a command."""
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    text += (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    lines = re.findall(r"docker\s+compose\s+run\s+--rm\s+worker\s+([^`#\n]+)", text)
    assert len(lines) >= 4, lines
    for line in lines:
        args = [arg.replace("BATCH", "b_x") for arg in shlex.split(line)]
        assert _parse(args).command.name in {"submit", "status", "export"}, line


def test_environment_names_valid_settings_and_the_build_context_exists(monkeypatch) -> None:
    compose = _compose()
    fields = set(Settings.model_fields)
    for name, service in _bananaline_services(compose).items():
        for variable, value in service["environment"].items():
            if variable.startswith("BANANALINE_"):
                assert variable.removeprefix("BANANALINE_").lower() in fields, (name, variable)
                monkeypatch.setenv(variable, str(value))
        settings = Settings()  # every value validates, as in the container
        assert settings.shares_limits and settings.db_url.startswith("postgresql+psycopg://")
        dockerfile = service["build"]["dockerfile_inline"]
        for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
            for path in source.split():
                assert (ROOT / path).exists(), path
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["worker"]["stop_signal"] == "SIGTERM"
    assert compose["services"]["worker"]["stop_grace_period"] == "10m"  # docs/scaling.md says so


def test_the_database_and_store_urls_point_at_the_services_this_file_runs() -> None:
    from sqlalchemy.engine import make_url

    compose = _compose()
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    bucket_job = " ".join(services["bucket"]["command"])
    for name, service in _bananaline_services(compose).items():
        params = _parse([str(arg) for arg in service["command"]]).params
        for db in (params["db"], service["environment"]["BANANALINE_DB_URL"]):
            url = make_url(db)
            assert url.host in services and url.port == 5432, (name, db)
            assert (url.username, url.password, url.database) == (
                postgres["POSTGRES_USER"],
                postgres["POSTGRES_PASSWORD"],
                postgres["POSTGRES_DB"],
            ), name
        for store in (params["store"], service["environment"]["BANANALINE_STORE_URL"]):
            location = parse_store_url(store)
            assert location.scheme == "s3" and location.endpoint, (name, store)
            assert urlsplit(location.endpoint).hostname in services, store
            assert f"mb --ignore-existing local/{location.bucket}" in bucket_job, (name, store)
        minio = services["minio"]["environment"]
        environment = service["environment"]
        assert environment["BANANALINE_S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert environment["BANANALINE_S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name
