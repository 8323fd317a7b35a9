"""``bananaline batch``: spreadsheet in, spreadsheet of images out. Parse, call the engine, print."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table as RichTable

from ..atomicfile import atomic_write
from ..config import Settings
from ..db.base import _safe as safe_db_url
from ..types import WireProtocol
from .columns import ColumnConfig
from .engine import BatchEngine, BatchInputError, BatchNotFound
from .keys import KeyRing
from .progress import ProgressBar, ProgressSnapshot
from .report import BatchSummary, render_html, summary_lines
from .sheets import Table, format_of, read_table
from .template import TemplateRejected

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)
err_console = Console(stderr=True)
out_console = Console()

EXIT_OK, EXIT_FAILED_ROWS, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130

DbOption = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL of the job store.")]
InputArgument = Annotated[Path, typer.Argument(metavar="INPUT", help=".csv, .xlsx or .jsonl")]
StoreOption = Annotated[str | None, typer.Option(help="Image store: file://, s3:// or oss:// URL.")]
KeysOption = Annotated[Path | None, typer.Option(help="Keys TOML: per-caller API keys and limits.")]
BaseUrlOption = Annotated[str | None, typer.Option(help="Upstream base URL.")]
ProtocolOption = Annotated[WireProtocol | None, typer.Option(help="Wire protocol of the upstream.")]
BatchConfigOption = Annotated[
    Path | None,
    typer.Option("--batch-config", help="Batch config TOML: a columns table and a prompt template."),
]
ColOption = Annotated[list[str] | None, typer.Option("--col", help="ROLE=COLUMN, e.g. prompt=提示词.")]
TemplateOption = Annotated[str | None, typer.Option(help="Jinja2 prompt template over the row's columns.")]
ModelOption = Annotated[str | None, typer.Option(help="Model for rows that do not name one.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _invalid(message: str) -> typer.Exit:
    err_console.print(f"[red]invalid input:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(EXIT_INVALID)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings().with_overrides(**overrides)
    except ValidationError as exc:
        raise _invalid(str(exc)) from exc


def _engine(
    settings: Settings, keyring: KeyRing | None = None, *, lease_s: float | None = None
) -> BatchEngine:
    from rich.markup import escape

    from ..db.base import DatabaseUrlError

    try:
        if lease_s is not None:
            return BatchEngine(settings, keyring=keyring, lease_s=lease_s)
        return BatchEngine(settings, keyring=keyring)
    except DatabaseUrlError as exc:  # e.g. postgresql:// without the postgres extra
        raise _invalid(escape(str(exc))) from None


def _keyring(keys: Path | None, settings: Settings) -> KeyRing:
    """The callers of a keys file, or one caller with the configured API key."""
    try:
        return KeyRing.from_toml(keys) if keys else KeyRing.single(settings.api_key)
    except (OSError, ValueError) as exc:
        raise _invalid(f"keys file: {exc}") from exc


def _read_sheet(input_path: Path) -> Table:
    try:
        return read_table(input_path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"cannot read {input_path}: {exc}") from exc


def _create_batch(engine: BatchEngine, input_path: Path, table: Table, columns: ColumnConfig) -> str:
    """The sheet's batch in the job store (the existing one when this sheet was queued before)."""
    try:
        return engine.create_batch(
            table.rows,
            columns=columns,
            header=table.header,
            base_dir=input_path.parent.resolve(),
            name=input_path.name,
        )
    except (BatchInputError, TemplateRejected) as exc:
        raise _invalid(str(exc)) from exc


def _default_out(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.stem}.out{input_path.suffix}")


def _columns(config: Path | None, col: list[str] | None, template: str | None) -> ColumnConfig:
    try:
        columns = ColumnConfig.from_toml(config) if config else ColumnConfig()
        columns = columns.with_mappings(col or [])
        if template:
            columns = columns.model_copy(update={"template": template})
        return columns
    except (OSError, ValueError, ValidationError) as exc:
        raise _invalid(str(exc)) from exc


@app.command("run")
def run_command(
    input_path: InputArgument,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output sheet (default INPUT.out.EXT).")
    ] = None,
    store: StoreOption = None,
    keys: KeysOption = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Global cap on requests in flight.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and price every row; call no model.")
    ] = False,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    db: DbOption = None,
    batch_config: BatchConfigOption = None,
    col: ColOption = None,
    template: TemplateOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    protocol: ProtocolOption = None,
    progress: Annotated[
        bool | None, typer.Option(help="Show a progress bar (default: on a terminal).")
    ] = None,
) -> None:
    """Run a sheet; running the same command again resumes it. Exit 0 all done, 1 some rows failed,
    2 invalid input, 130 interrupted."""
    settings = _settings(
        db_url=db, store_url=store, base_url=base_url, protocol=protocol, model=model, concurrency=concurrency
    )
    table = _read_sheet(input_path)
    columns = _columns(batch_config, col, template)
    keyring = _keyring(keys, settings)
    if dry_run:
        _dry_run(table.rows, columns, settings, keyring, input_path.parent)
        return
    out_path = out or _default_out(input_path)
    try:
        out_format = format_of(out_path)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc
    engine = _engine(settings, keyring)
    batch_id = _create_batch(engine, input_path, table, columns)
    err_console.print(
        f"batch [bold]{batch_id}[/bold] · {len(table.rows)} rows · db {safe_db_url(settings.db_url)}",
        highlight=False,
    )
    show_progress = sys.stderr.isatty() if progress is None else progress
    summary = asyncio.run(_run_with_signals(engine, batch_id, settings.concurrency, show_progress))
    atomic_write(out_path, engine.export(batch_id, out_format))
    err_console.print(f"wrote {out_path}", highlight=False)
    if report is not None:
        status = engine.status(batch_id, with_previews=True)
        atomic_write(report, render_html(summary, status.rows).encode("utf-8"))
        err_console.print(f"report {report}", highlight=False)
    engine.close()
    _print_summary(summary)
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    failed = summary.rows_by_status.get("failed", 0) + summary.rows_by_status.get("cancelled", 0)
    raise typer.Exit(EXIT_FAILED_ROWS if failed else EXIT_OK)


@app.command("submit")
def submit_command(
    input_path: InputArgument,
    db: DbOption = None,
    batch_config: BatchConfigOption = None,
    col: ColOption = None,
    template: TemplateOption = None,
    model: ModelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate, price and queue a sheet without running it; `bananaline worker` processes (on any
    machine that reaches the job store) run it. Prints the batch id. Submitting the same sheet
    again gives the same id and queues nothing twice. Exit 0 queued, 2 invalid input."""
    settings = _settings(db_url=db, model=model)
    table = _read_sheet(input_path)
    columns = _columns(batch_config, col, template)
    engine = _engine(settings)
    batch_id = _create_batch(engine, input_path, table, columns)
    plans = engine.jobs.pending_plans(batch_id)
    estimated_total_usd = engine.pending_estimate_usd(batch_id)
    counts = engine.jobs.job_counts(batch_id)
    engine.close()
    estimated_usd = round(estimated_total_usd, 6)
    local_refs = sum(
        1 for plan in plans for ref in plan.get("references") or () if not _is_remote_reference(str(ref))
    )
    figures = {
        "batch_id": batch_id,
        "rows": len(table.rows),
        "jobs_queued": counts.get("queued", 0) + counts.get("running", 0),
        "jobs_invalid": counts.get("failed", 0),
        "estimated_cost_usd": estimated_usd,
    }
    if local_refs:
        err_console.print(
            f"[yellow]warning:[/yellow] {local_refs} reference(s) are files on this machine: a worker "
            "elsewhere cannot read them (use URLs, or a path every worker shares)",
            highlight=False,
        )
    if as_json:
        print(json.dumps(figures, ensure_ascii=False))
        return
    err_console.print(
        f"batch [bold]{batch_id}[/bold] · {figures['rows']} rows · {figures['jobs_queued']} jobs queued · "
        f"{figures['jobs_invalid']} invalid · about {estimated_usd:.3f} USD · "
        f"db {safe_db_url(settings.db_url)}",
        highlight=False,
    )
    print(batch_id)


def _is_remote_reference(reference: str) -> bool:
    lowered = reference[:12].lower()
    return lowered.startswith(("data:", "http://", "https://"))


async def _run_with_signals(
    engine: BatchEngine, batch_id: str, concurrency: int, show_progress: bool
) -> BatchSummary:
    """First Ctrl-C (or SIGTERM): stop claiming, let in-flight rows finish. Second: give them back."""
    stop = asyncio.Event()
    bar = ProgressBar(err_console) if show_progress else None

    def on_progress(snapshot: ProgressSnapshot) -> None:
        if bar is not None:
            bar.update(snapshot)

    run_task = asyncio.create_task(
        engine.run(batch_id, concurrency=concurrency, on_progress=on_progress, stop=stop)
    )

    def on_signal(count: int) -> None:
        if count == 1:
            err_console.print("stopping: finishing the rows in flight (press Ctrl-C again to requeue them)")

    with two_stage_signals(stop, run_task, on_signal):
        try:
            if bar is not None:
                with bar:
                    return await run_task
            return await run_task
        except asyncio.CancelledError:
            if not run_task.cancelled():
                raise
            return engine.summary(batch_id, interrupted=True)


@contextlib.contextmanager
def two_stage_signals(
    stop: asyncio.Event, task: asyncio.Task[Any], on_signal: Callable[[int], None]
) -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM number 1 sets ``stop`` (claim nothing more, finish what
    is in flight) and any later one cancels ``task`` (give the jobs in flight back); ``on_signal``
    hears the count first. Needs the running loop; where it cannot install handlers, does nothing."""
    loop = asyncio.get_running_loop()
    count = 0

    def handle() -> None:
        nonlocal count
        count += 1
        on_signal(count)
        if count == 1:
            stop.set()
        else:
            task.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handle)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _dry_run(
    rows: list[dict[str, str]], columns: ColumnConfig, settings: Settings, keyring: KeyRing, base_dir: Path
) -> None:
    from .dryrun import dry_run

    try:
        report = asyncio.run(
            dry_run(rows, columns=columns, settings=settings, keyring=keyring, base_dir=base_dir)
        )
    except (ValueError, TemplateRejected) as exc:  # a template that does not parse, or over a bound
        raise _invalid(str(exc)) from exc
    table = RichTable(title="estimated cost (no model was called)")
    for name in ("caller", "images", "USD"):
        table.add_column(name)
    for caller, cost in sorted(report.cost_by_caller.items()):
        table.add_row(caller, str(report.images_by_caller.get(caller, 0)), f"{cost:.3f}")
    table.add_row(
        "[bold]total[/bold]",
        str(sum(report.images_by_caller.values())),
        f"[bold]{report.total_cost_usd:.3f}[/bold]",
    )
    out_console.print(table)
    for row in report.invalid_rows:
        out_console.print(
            f"[red]row {row.row_index + 2}[/red] {row.error_kind}: {row.error}", highlight=False, markup=True
        )
    out_console.print(
        f"{len(report.rows) - len(report.invalid_rows)} rows ok, {len(report.invalid_rows)} invalid"
    )
    raise typer.Exit(EXIT_INVALID if report.invalid_rows else EXIT_OK)


def _print_summary(summary: BatchSummary) -> None:
    for line in summary_lines(summary):
        out_console.print(line, highlight=False, markup=False)


@app.command("status")
def status_command(
    batch: Annotated[str | None, typer.Argument(help="Batch id; omit to list batches.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where a batch stands (or every batch in the store)."""
    engine = _engine(_settings(db_url=db))
    if batch is None:
        batches = engine.list_batches()
        if as_json:
            print(json.dumps([info.to_dict() for info in batches], ensure_ascii=False))
            return
        table = RichTable()
        for name in ("batch", "name", "rows", "jobs", "complete"):
            table.add_column(name)
        for info in batches:
            jobs = ", ".join(f"{k} {v}" for k, v in sorted(info.jobs_by_status.items()))
            table.add_row(
                info.id, info.name or "", str(info.row_count), jobs, "yes" if info.complete else "no"
            )
        out_console.print(table)
        return
    try:
        summary = engine.summary(batch)
    except BatchNotFound as exc:
        raise _invalid(f"no batch {batch!r} in {engine.db_url}") from exc
    if as_json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False, default=str))
        return
    _print_summary(summary)


@app.command("retry-failed")
def retry_failed_command(batch: Annotated[str, typer.Argument()], db: DbOption = None) -> None:
    """Queue the failed rows again; then run the same sheet (or `batch run`) to retry them."""
    engine = _engine(_settings(db_url=db))
    try:
        count = engine.retry_failed(batch)
    except BatchNotFound as exc:
        raise _invalid(f"no batch {batch!r}") from exc
    out_console.print(f"requeued {count} job(s) of batch {batch}", highlight=False)


@app.command("export")
def export_command(
    batch: Annotated[str, typer.Argument()],
    out: Annotated[Path, typer.Option("--out", "-o", help=".csv, .xlsx or .jsonl")],
    db: DbOption = None,
) -> None:
    """Write the batch's input plus results to a sheet, whatever state it is in."""
    engine = _engine(_settings(db_url=db))
    try:
        payload = engine.export(batch, format_of(out))
    except BatchNotFound as exc:
        raise _invalid(f"no batch {batch!r}") from exc
    except ValueError as exc:
        raise _invalid(str(exc)) from exc
    atomic_write(out, payload)
    out_console.print(f"wrote {out}", highlight=False)
