"""``bananaline mcp``: the MCP server for agents (Claude Desktop, Cursor, Cherry Studio, …).

Kept apart from :mod:`bananaline.connectors.mcp` so that ``bananaline --help`` does not import the
MCP SDK.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)


def mcp_command(
    http: Annotated[
        bool,
        typer.Option(
            "--http",
            help="Streamable HTTP instead of stdio: runs `bananaline serve`, whose /mcp endpoint needs a "
            "service token (Authorization: Bearer bl_…).",
        ),
    ] = False,
    host: Annotated[str, typer.Option(help="--http: interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="--http: TCP port.")] = 8000,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: BANANALINE_DB_URL or sqlite).")
    ] = None,
    store: Annotated[str | None, typer.Option("--store", help="Store URL (file://, s3://, oss://).")] = None,
    public_base_url: Annotated[
        str | None,
        typer.Option("--public-base-url", help="Absolute URL image links start with (else file:// links)."),
    ] = None,
) -> None:
    """MCP server with the tools generate_image and get_task (stdio by default, for a local client).

    stdio is a local single user: calls use BANANALINE_API_KEY (and BANANALINE_BASE_URL), references
    may be local paths. Every setting comes from BANANALINE_* variables, so an MCP client config
    needs only the command and its env.
    """
    if http:
        from ..service.cli import serve

        err.print(f"MCP endpoint: http://{host}:{port}/mcp  (Authorization: Bearer <service token>)")
        serve(host=host, port=port, db=db, store=store, public_base_url=public_base_url)
        return

    from ..config import Settings
    from ..logs import configure_logging
    from .mcp import serve_stdio

    configure_logging(json_output=True, stream=sys.stderr)  # stdout is the protocol
    settings = Settings().with_overrides(db_url=db, store_url=store, public_base_url=public_base_url)
    if settings.api_key is None:
        err.print(
            "[yellow]BANANALINE_API_KEY is not set: generate_image will answer no_api_key. "
            "Put it in the MCP client's env for this server.[/yellow]"
        )
    asyncio.run(serve_stdio(settings))


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp_command)
