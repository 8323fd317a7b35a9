"""The ``bananaline`` command: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from .config import Settings
from .errors import ErrorKind, GenerationError, is_invalid_input
from .types import GenerationRequest, GenerationResult, WireProtocol

app = typer.Typer(
    name="bananaline",
    help="Generate and edit images with Google's Nano Banana models, and say exactly why one failed.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
err_console = Console(stderr=True)
out_console = Console()

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default ./bananaline.toml)."),
    ] = None,
) -> None:
    """Settings come from flags, then BANANALINE_* variables, then the config file, then defaults."""
    if config is not None:
        if not config.is_file():
            err_console.print(f"[red]config file not found:[/red] {config}")
            raise typer.Exit(EXIT_INVALID)
        os.environ["BANANALINE_CONFIG"] = str(config)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings().with_overrides(**overrides)
    except ValidationError as exc:
        _fail_invalid(str(exc), as_json=False)


def _fail_invalid(message: str, *, as_json: bool) -> NoReturn:
    error = GenerationError(ErrorKind.INVALID_INPUT, message=message, message_zh=message, request_sent=False)
    if as_json:
        print(json.dumps({"ok": False, "images": [], "error": error.to_dict()}, ensure_ascii=False))
    else:
        err_console.print(f"[red]invalid input:[/red] {message}")
    raise typer.Exit(EXIT_INVALID)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to make or how to edit the references.")],
    ref: Annotated[
        list[str] | None,
        typer.Option("--ref", "-r", help="Reference image: path, URL or data URI. Repeatable."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name, e.g. gemini-3-pro-image-preview.")] = None,
    aspect_ratio: Annotated[str | None, typer.Option("--aspect-ratio", "-a", help="e.g. 16:9")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s", help="512, 1K, 2K or 4K")] = None,
    protocol: Annotated[WireProtocol | None, typer.Option(help="Wire protocol of the upstream.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Upstream base URL (relay or Google).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the images.")] = None,
    store: Annotated[
        str | None, typer.Option(help="Also store in file://, s3:// or oss:// and print URLs.")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts for retryable failures.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Per-attempt timeout in seconds.")] = None,
    deadline: Annotated[float | None, typer.Option(help="Total time budget in seconds.")] = None,
    allow_private_refs: Annotated[
        bool, typer.Option(help="Allow reference URLs on private networks.")
    ] = False,
    strict_checks: Annotated[bool, typer.Option(help="Fail when an output check warns.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
) -> None:
    """Generate (no --ref) or edit (with --ref) an image. Exit 0 ok, 1 failed, 2 invalid input."""
    settings = _settings(
        model=model,
        protocol=protocol,
        base_url=base_url,
        out_dir=out,
        store_url=store,
        max_attempts=max_attempts,
        timeout_s=timeout,
        deadline_s=deadline,
        allow_private_refs=allow_private_refs or None,
        strict_checks=strict_checks or None,
    )
    try:
        request = GenerationRequest(
            prompt=prompt,
            references=tuple(ref or ()),
            model=settings.model,
            aspect_ratio=aspect_ratio,
            image_size=size,
            strict_checks=settings.strict_checks,
        )
    except ValidationError as exc:
        _fail_invalid("; ".join(e["msg"] for e in exc.errors()), as_json=as_json)
    result = asyncio.run(_generate_and_deliver(request, settings, store, as_json))
    _print_result(result, as_json)
    if result.ok:
        raise typer.Exit(EXIT_OK)
    if result.error is not None and is_invalid_input(result.error):
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(EXIT_FAILED)


async def _generate_and_deliver(
    request: GenerationRequest, settings: Settings, store_url: str | None, as_json: bool
) -> GenerationResult:
    from .client import ImageClient
    from .delivery import save_result, store_result

    status = None if as_json or not sys.stderr.isatty() else err_console.status("starting…")
    started = time.monotonic()

    def on_event(event: str, details: dict[str, Any]) -> None:
        if status is None:
            return
        elapsed = time.monotonic() - started
        if event == "attempt":
            status.update(f"attempt {details['attempt']} · waiting for the model · {elapsed:.0f}s")
        elif event == "retry_wait":
            status.update(f"{details.get('error')}: retrying in {details['wait_s']:.1f}s")
        elif event == "decoding":
            status.update("checking the image…")

    if status is not None:
        status.start()
    try:
        async with ImageClient(settings, on_event=on_event) as client:
            result = await client.generate(request)
        if result.ok:
            save_result(result, settings.out_dir)
            if store_url:
                from .storage import ImageStore

                await store_result(result, ImageStore.from_url(store_url, settings=settings))
    finally:
        if status is not None:
            status.stop()
    return result


def _print_result(result: GenerationResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.ok:
        for image in result.images:
            where = image.url or image.path
            out_console.print(
                f"[green]✓[/green] {where}  {image.width}x{image.height} {image.mime} "
                f"{len(image.data):,} bytes  ({result.attempts} attempt(s), {result.elapsed_s:.1f}s)"
            )
        if result.text:
            out_console.print(f"[dim]model said:[/dim] {result.text}")
    elif result.error is not None:
        error = result.error
        err_console.print(f"[red]✗ {error.kind.value}[/red] {error.message}")
        err_console.print(f"  {error.message_zh}")
        if error.detail:
            err_console.print(f"  detail: {error.detail}")
        err_console.print(f"  retryable: {error.retryable}; attempts: {result.attempts}")
    for code in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {code}")


@app.command("fake-upstream")
def fake_upstream(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8787,
    latency_s: Annotated[float, typer.Option("--latency-s", help="Seconds before each answer.")] = 0.0,
) -> None:
    """Serve the upstream simulator (both protocols, every fault on demand)."""
    from .simulator import SimulatorConfig, run

    run(host, port, SimulatorConfig(latency_s=latency_s))


@app.command()
def demo(
    prompt: Annotated[str, typer.Argument()] = "a ripe banana on a marble desk, studio light",
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("out"),
) -> None:
    """Make one image: against BANANALINE_API_KEY's upstream if set, else the bundled simulator."""
    if os.environ.get("BANANALINE_API_KEY"):
        settings = _settings(out_dir=out)
        result = asyncio.run(
            _generate_and_deliver(
                GenerationRequest(prompt=prompt, model=settings.model), settings, None, False
            )
        )
    else:
        from .simulator import SimulatorServer

        err_console.print("[dim]BANANALINE_API_KEY is not set: using the bundled upstream simulator.[/dim]")
        with SimulatorServer() as sim:
            settings = _settings(out_dir=out, base_url=sim.base_url, api_key="demo-key")
            request = GenerationRequest(
                prompt=prompt, model=settings.model, aspect_ratio="16:9", image_size="1K"
            )
            result = asyncio.run(_generate_and_deliver(request, settings, None, False))
    _print_result(result, False)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _register_subapps() -> None:
    from .batch.cli import app as batch_app
    from .service.cli import register as register_service
    from .storage.cli import app as storage_app

    app.add_typer(storage_app, name="storage", help="Put images into a store; flush the local spool.")
    app.add_typer(batch_app, name="batch", help="Spreadsheet in, spreadsheet of images out.")
    register_service(app)


_register_subapps()
