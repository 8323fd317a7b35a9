"""``bananaline store ...``: upload an existing image with the library layout, flush the spool.

Thin: parse, call :class:`ImageStore`, print. The lead mounts ``app`` on the main CLI.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ..config import Settings
from ..errors import GenerationError
from .results import StoredImage
from .store import ImageStore

app = typer.Typer(help="Store images and flush the local spool.", no_args_is_help=True)

StoreOption = Annotated[str | None, typer.Option("--store", help="Store URL (default: settings.store_url).")]


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


def _display_url(store: ImageStore, url: str | None, key: str | None) -> str | None:
    """For a file store a person wants the absolute path, not a file:// URL."""
    if store.local_root is not None and key:
        return str(store.local_root / key)
    return url


def _summary(store: ImageStore, stored: StoredImage) -> dict[str, Any]:
    return {
        "key": stored.key,
        "url": _display_url(store, stored.url, stored.key) if stored.status == "stored" else None,
        "compressed_url": _display_url(store, stored.compressed_url, stored.compressed_key),
        "thumbnail_url": _display_url(store, stored.thumbnail_url, stored.thumbnail_key),
        "status": stored.status,
        "sha256": stored.sha256,
        "deduplicated": stored.deduplicated,
        "error": stored.error,
        "spool_path": str(stored.spool_path) if stored.spool_path else None,
    }


@app.command()
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Image file.")],
    store_url: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Upload an image with the same layout, derivatives and metadata as generated images."""
    from ..references import sniff_mime

    settings = _settings()
    data = file.read_bytes()
    mime = sniff_mime(data)
    if mime is None:
        typer.echo(f"error: {file.name} is not a recognised image", err=True)
        raise typer.Exit(2)
    try:
        store = ImageStore.from_url(store_url, settings=settings)
        stored = asyncio.run(
            store.put_image(data, mime=mime, metadata={"source": "cli put", "original_name": file.name})
        )
    except GenerationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2 if exc.kind.value in {"invalid_input", "invalid_image"} else 1) from None
    summary = _summary(store, stored)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        typer.echo(f"{summary['status']}: {summary['url'] or summary['spool_path']}")
        for name in ("compressed_url", "thumbnail_url"):
            if summary[name]:
                typer.echo(f"  {name.removesuffix('_url')}: {summary[name]}")
        if stored.error:
            typer.echo(f"  upload failed, kept locally: {stored.error}", err=True)
    raise typer.Exit(0 if stored.status == "stored" else 1)


@app.command()
def flush(
    store_url: StoreOption = None,
    all_stores: Annotated[
        bool, typer.Option("--all", help="Also upload entries spooled for other stores.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Upload everything in the local spool; entries are removed only once fully uploaded."""
    settings = _settings()
    try:
        store = ImageStore.from_url(store_url, settings=settings)
        report = asyncio.run(store.flush_spool(all_stores=all_stores))
    except GenerationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    summary = {
        "uploaded": report.uploaded,
        "failed": report.failed,
        "remaining": report.remaining,
        "skipped_other_store": report.skipped_other_store,
        "errors": report.errors,
    }
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        typer.echo(f"uploaded {report.uploaded}, failed {report.failed}, remaining {report.remaining}")
        for line in report.errors:
            typer.echo(f"  {line}", err=True)
    raise typer.Exit(0 if report.failed == 0 else 1)
