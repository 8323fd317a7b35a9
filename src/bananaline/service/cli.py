"""``bananaline serve``, ``bananaline callers add|list|token|revoke`` and ``bananaline usage``."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..config import Settings

callers_app = typer.Typer(no_args_is_help=True, help="Callers of the HTTP service and their tokens.")
err = Console(stderr=True)
out = Console()

DbOption = Annotated[
    str | None, typer.Option("--db", help="Database URL (default: BANANALINE_DB_URL or sqlite).")
]


def _settings(**overrides: Any) -> Settings:
    return Settings().with_overrides(**overrides)


def _repositories(db: str | None) -> tuple[Any, Any, Any]:
    from ..db import make_engine
    from .auth import KeyCipher
    from .callers import CallerRepository
    from .usage import UsageRepository

    settings = _settings(db_url=db)
    _upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    return CallerRepository(engine, KeyCipher(settings.secret_key)), UsageRepository(engine), engine


def _upgrade(db_url: str) -> None:
    """Migrate, or exit 2 with the fix when the URL cannot be used (a driver not installed)."""
    from rich.markup import escape

    from ..db import upgrade
    from ..db.base import DatabaseUrlError

    try:
        upgrade(db_url)
    except DatabaseUrlError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(2) from None


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    db: DbOption = None,
    store: Annotated[str | None, typer.Option("--store", help="Store URL (file://, s3://, oss://).")] = None,
    root_path: Annotated[
        str, typer.Option("--root-path", help="Path prefix when served behind a proxy.")
    ] = "",
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    public_base_url: Annotated[
        str | None,
        typer.Option("--public-base-url", help="Absolute URL clients reach us at (links, OpenAPI servers)."),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies (IPs/CIDRs, comma list, or *) trusted for X-Forwarded-* headers "
            "(default: BANANALINE_TRUSTED_PROXIES, else loopback)."
        ),
    ] = None,
) -> None:
    """Run the HTTP service: plugin endpoint, Gemini/OpenAI gateway, batches API, /files, /metrics."""
    import uvicorn

    # Workers are separate processes that build their settings from the environment.
    for name, value in (("DB_URL", db), ("STORE_URL", store), ("PUBLIC_BASE_URL", public_base_url)):
        if value:
            os.environ[f"BANANALINE_{name}"] = value
    if forwarded_allow_ips:
        proxies = [item.strip() for item in forwarded_allow_ips.split(",") if item.strip()]
        trusted = ["0.0.0.0/0", "::/0"] if proxies == ["*"] else proxies
        os.environ["BANANALINE_TRUSTED_PROXIES"] = json.dumps(trusted)
    settings = Settings()
    _upgrade(settings.db_url)
    if settings.secret_key is None:
        err.print(
            "[yellow]BANANALINE_SECRET_KEY is not set: callers cannot have their own upstream keys.[/yellow]"
        )
    err.print(f"bananaline service on http://{host}:{port}{root_path}  (OpenAPI: {root_path}/openapi.json)")
    uvicorn.run(
        "bananaline.service.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        root_path=root_path,
        workers=max(1, workers),
        # The app applies X-Forwarded-* itself, from settings.trusted_proxies (one trust decision).
        proxy_headers=False,
        access_log=False,
        log_level="warning",
    )


@callers_app.command("add")
def callers_add(
    name: Annotated[str, typer.Argument(help="Caller name, unique.")],
    api_key_env: Annotated[
        str | None,
        typer.Option("--api-key-env", help="Read the caller's upstream key from this env variable."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="The caller's upstream key (prefer --api-key-env).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent generations.")] = 4,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", min=0, help="Total spend allowed.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Create a caller and print its service token. The token is shown once and stored only as a hash."""
    from .auth import SecretKeyMissing
    from .callers import CallerExists

    key = api_key
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            err.print(f"[red]environment variable {api_key_env} is empty or not set[/red]")
            raise typer.Exit(2)
    callers, _, engine = _repositories(db)
    try:
        info, token = callers.add(
            name, upstream_key=key, concurrency=concurrency, rpm=rpm, budget_usd=budget_usd
        )
    except (CallerExists, SecretKeyMissing, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    err.print(f"caller [bold]{info.name}[/bold] created; its service token (shown only now):")
    print(token)


@callers_app.command("token")
def callers_token(name: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Issue another token for a caller (rotate: then `callers revoke` the old ones)."""
    from .callers import CallerNotFound

    callers, _, engine = _repositories(db)
    try:
        print(callers.issue_token(name))
    except CallerNotFound as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


@callers_app.command("revoke")
def callers_revoke(name: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Revoke every token of a caller."""
    from .callers import CallerNotFound

    callers, _, engine = _repositories(db)
    try:
        err.print(f"revoked {callers.revoke_tokens(name)} token(s)")
    except CallerNotFound as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


@callers_app.command("list")
def callers_list(
    db: DbOption = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Callers with limits, budget and spend (never keys or tokens)."""
    callers, _, engine = _repositories(db)
    try:
        infos = callers.list()
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps([info.to_dict() for info in infos], ensure_ascii=False))
        return
    table = Table("name", "upstream key", "concurrency", "rpm", "budget USD", "spent USD", "tokens")
    for info in infos:
        table.add_row(
            info.name,
            "set" if info.has_upstream_key else "default",
            str(info.concurrency),
            str(info.rpm or "-"),
            f"{info.budget_usd:.2f}" if info.budget_usd is not None else "-",
            f"{info.spent_usd:.4f}",
            str(info.tokens),
        )
    out.print(table)


def usage(
    caller: Annotated[str | None, typer.Option(help="Only this caller (name).")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 date/time or epoch seconds.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 date/time or epoch seconds.")] = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Usage and cost per caller over a time range."""
    from .callers import CallerNotFound
    from .http_errors import ServiceError
    from .routers.ops import parse_time

    try:
        since_s, until_s = parse_time(since, "since"), parse_time(until, "until")
    except ServiceError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    callers, usage_repo, engine = _repositories(db)
    try:
        infos = callers.list()
        if caller is not None:
            try:
                infos = [callers.get(caller)]
            except CallerNotFound as exc:
                err.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from None
        report = [
            {"caller": info.name, **usage_repo.summary(info.id, since=since_s, until=until_s)}
            for info in infos
        ]
        if caller is None:
            anonymous = usage_repo.summary(None, since=since_s, until=until_s)
            known = {info.id for info in infos}
            rows = [row for row in anonymous["by_model"] if row["caller_id"] not in known]
            if rows:
                report.append(
                    {
                        "caller": "(own keys, no token)",
                        "requests": sum(r["requests"] for r in rows),
                        "succeeded": sum(r["succeeded"] for r in rows),
                        "images": sum(r["images"] for r in rows),
                        "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
                        "by_model": rows,
                    }
                )
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return
    span = " → ".join(_when(t) for t in (since_s, until_s))
    table = Table("caller", "requests", "ok", "images", "cost USD", title=f"usage {span}")
    for row in report:
        table.add_row(
            row["caller"],
            str(row["requests"]),
            str(row["succeeded"]),
            str(row["images"]),
            f"{row['cost_usd']:.4f}",
        )
    out.print(table)


def _when(epoch_s: float | None) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="minutes") if epoch_s is not None else "…"


def register(app: typer.Typer) -> None:
    """Add the service commands to the ``bananaline`` CLI."""
    app.command("serve")(serve)
    app.add_typer(callers_app, name="callers")
    app.command("usage")(usage)
