"""The ``bananaline`` command: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

from .config import Settings
from .errors import ErrorKind, GenerationError, is_invalid_input
from .types import GenerationRequest, GenerationResult, Usage, WireProtocol

if TYPE_CHECKING:
    from .storage import ImageStore


class _LazyCommands(TyperGroup):
    """The commands of other modules (batch, storage, serve, mcp...) are imported only when one of
    them, or the list of all commands, is asked for: their imports (SQLAlchemy, Alembic, FastAPI)
    would double the start-up time of every ``generate``."""

    complete = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self.complete:
            return _all_commands().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: Any) -> list[str]:
        if not self.complete:
            return _all_commands().list_commands(ctx)
        return super().list_commands(ctx)


@functools.cache
def _all_commands() -> _LazyCommands:
    _register_subapps()
    group = typer.main.get_group(app)
    assert isinstance(group, _LazyCommands)
    group.complete = True
    return group


app = typer.Typer(
    name="bananaline",
    help="Generate and edit images with Google's Nano Banana models, and say exactly why one failed.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_LazyCommands,
)
err_console = Console(stderr=True)
out_console = Console()

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


#: A ``--config`` file that does not exist, reported by the command (``generate --json`` as JSON).
_missing_config: Path | None = None


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default ./bananaline.toml)."),
    ] = None,
) -> None:
    """Settings come from flags, then BANANALINE_* variables, then the config file, then defaults."""
    global _missing_config
    _missing_config = None
    if config is not None:
        if not config.is_file():
            if ctx.invoked_subcommand == "generate":
                _missing_config = config
                return
            err_console.print(f"[red]config file not found:[/red] {config}")
            raise typer.Exit(EXIT_INVALID)
        os.environ["BANANALINE_CONFIG"] = str(config)


def _settings(*, as_json: bool = False, **overrides: Any) -> Settings:
    """Flags (the non-``None`` overrides) over the environment over the config file, validated."""
    if _missing_config is not None:
        _fail_invalid(f"config file not found: {_missing_config}", as_json=as_json)
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        _fail_invalid("; ".join(_validation_messages(exc)), as_json=as_json)
    except ValueError as exc:  # a config file that is not TOML
        _fail_invalid(f"config file: {exc}", as_json=as_json)


def _validation_messages(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        messages.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return messages


def _failure_payload(error: GenerationError) -> dict[str, Any]:
    """The ``--json`` shape of a failure that has no result: the same keys as a result's."""
    return {
        "ok": False,
        "images": [],
        "text": None,
        "warnings": [],
        "attempts": 0,
        "elapsed_s": 0.0,
        "usage": Usage().to_dict(),
        "cost_usd": None,
        "error": error.to_dict(),
    }


def _fail(error: GenerationError, *, as_json: bool, code: int) -> NoReturn:
    if as_json:
        print(json.dumps(_failure_payload(error), ensure_ascii=False))
    else:
        label = "invalid input" if code == EXIT_INVALID else error.kind.value
        err_console.print(f"[red]{label}:[/red] {error.message}", highlight=False)
        if error.message_zh != error.message:
            err_console.print(f"  {error.message_zh}", highlight=False)
    raise typer.Exit(code)


def _fail_invalid(message: str, *, as_json: bool, message_zh: str | None = None) -> NoReturn:
    error = GenerationError(
        ErrorKind.INVALID_INPUT, message=message, message_zh=message_zh or message, request_sent=False
    )
    _fail(error, as_json=as_json, code=EXIT_INVALID)


def _out_dir_problem(out_dir: Path) -> tuple[str, str] | None:
    """Why images could not be written under ``out_dir`` (en, zh), checked before anything is paid for."""
    probe = out_dir.expanduser()
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        if probe.exists():
            return (
                f"--out {out_dir}: {probe} is a file; give a directory to write the images into",
                f"--out {out_dir}：{probe} 是一个文件，请指定用于保存图片的目录",
            )
        return (
            f"--out {out_dir}: {probe} does not resolve to a directory",
            f"--out {out_dir}：{probe} 不指向任何目录",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"--out {out_dir}: {probe} is not writable", f"--out {out_dir}：{probe} 不可写"
    return None


@dataclass
class _Admitted:
    """A command line turned into what will be sent and where it will land, all checked locally."""

    request: GenerationRequest
    store: ImageStore | None


def _admit(
    settings: Settings,
    *,
    prompt: str,
    references: tuple[str, ...],
    aspect_ratio: str | None,
    size: str | None,
    store_url: str | None,
    as_json: bool,
) -> _Admitted:
    """Everything that can be refused without the network, refused before anything is sent.

    The request against the catalog (the admission plan), the output folder, the store URL and
    the store's configuration: a mistake in any of them exits 2 with nothing paid for.
    """
    from .admission.plan import plan_request
    from .storage import ImageStore

    try:
        request = GenerationRequest(
            prompt=prompt,
            references=references,
            model=settings.model,
            aspect_ratio=aspect_ratio,
            image_size=size,
            strict_checks=settings.strict_checks,
        )
    except ValidationError as exc:
        _fail_invalid("; ".join(e["msg"] for e in exc.errors()), as_json=as_json)
    problem = _out_dir_problem(settings.out_dir)
    if problem is not None:
        _fail_invalid(problem[0], message_zh=problem[1], as_json=as_json)
    try:
        plan = plan_request(request)
        store = ImageStore.from_url(store_url, settings=settings) if store_url else None
    except GenerationError as error:
        _fail(error, as_json=as_json, code=EXIT_INVALID if is_invalid_input(error) else EXIT_FAILED)
    return _Admitted(plan.request, store)


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
    """Generate (no --ref) or edit (with --ref) an image. Exit 0 ok, 1 failed, 2 invalid input.

    With ``--json`` exactly one JSON object is printed whatever happens; exit 2 means nothing was
    sent upstream, exit 1 after a paid call still lists the images that were made.
    """
    settings = _settings(
        as_json=as_json,
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
    admitted = _admit(
        settings,
        prompt=prompt,
        references=tuple(ref or ()),
        aspect_ratio=aspect_ratio,
        size=size,
        store_url=store,
        as_json=as_json,
    )
    try:
        result = asyncio.run(_generate_and_deliver(admitted.request, settings, admitted.store, as_json))
    except Exception as exc:  # noqa: BLE001 - a bug; the caller still gets one JSON object
        if not as_json:
            err_console.print_exception()
        detail = f"{type(exc).__name__}: {exc}"[:400]
        internal = GenerationError(ErrorKind.INTERNAL, detail=detail, retryable=False)
        _fail(internal, as_json=as_json, code=EXIT_FAILED)
    _print_result(result, as_json)
    if result.ok:
        raise typer.Exit(EXIT_OK)
    if result.error is not None and is_invalid_input(result.error):
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(EXIT_FAILED)


async def _generate_and_deliver(
    request: GenerationRequest, settings: Settings, store: ImageStore | None, as_json: bool
) -> GenerationResult:
    from .client import ImageClient

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
            await _deliver(result, settings.out_dir, store)
    finally:
        if status is not None:
            status.stop()
    return result


async def _deliver(result: GenerationResult, out_dir: Path, store: ImageStore | None) -> None:
    """Save, then store, a paid result; a failure of either becomes ``result.error`` (``storage``)
    and never stops the other, so the images land wherever they still can and are listed."""
    from .delivery import save_result, store_result

    failures: list[GenerationError] = []
    try:
        save_result(result, out_dir)
    except Exception as exc:  # noqa: BLE001 - the image is paid for: report, keep going
        failures.append(_as_storage_error(exc))
    if store is not None:
        try:
            await store_result(result, store)
        except Exception as exc:  # noqa: BLE001
            failures.append(_as_storage_error(exc))
    if len(failures) == 1:
        result.error = failures[0]
    elif failures:
        detail = "; ".join(failure.detail or failure.message for failure in failures)
        result.error = GenerationError(ErrorKind.STORAGE, detail=detail, retryable=False)


def _as_storage_error(exc: Exception) -> GenerationError:
    if isinstance(exc, GenerationError):
        return exc
    return GenerationError(ErrorKind.STORAGE, detail=f"{type(exc).__name__}: {exc}"[:400], retryable=False)


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
    """Called once, by :func:`_all_commands`."""
    from .batch.cli import app as batch_app
    from .batch.worker_cli import register as register_worker
    from .connectors.mcp_cli import register as register_mcp
    from .service.cli import register as register_service
    from .storage.cli import app as storage_app

    app.add_typer(storage_app, name="storage", help="Put images into a store; flush the local spool.")
    app.add_typer(batch_app, name="batch", help="Spreadsheet in, spreadsheet of images out.")
    register_worker(app)
    register_service(app)
    register_mcp(app)
