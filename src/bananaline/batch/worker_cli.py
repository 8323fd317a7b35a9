"""``bananaline worker``: run queued batch jobs of any batch from the shared job store.

Start as many as you like, on as many machines as reach the database (PostgreSQL for more than
one machine): they share one queue (jobs claimed with ``FOR UPDATE SKIP LOCKED`` leases) and
one set of per-caller limits (the gate ledger), so ``concurrency``/``rpm`` in ``keys.toml`` hold
across all of them. ``--concurrency`` caps this worker only.

Signals: the first SIGTERM/SIGINT stops claiming and lets the jobs in flight finish (exit 0);
a second one cancels them and gives their leases back to the queue at once (exit 130). A worker
killed with SIGKILL loses nothing: its jobs go back to the queue when their lease expires (or at
once, if a worker on the same machine sees its process is gone).

Logs are JSON lines on stderr; every line about a job names the worker (its instance id,
``<machine>:<pid>:<random>``) and the job (batch, row, variant).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..config import Settings
from ..db.base import _safe as safe_db_url
from .cli import (
    BaseUrlOption,
    DbOption,
    KeysOption,
    ProtocolOption,
    StoreOption,
    _engine,
    _keyring,
    _settings,
    two_stage_signals,
)
from .engine import DEFAULT_LEASE_S, BatchEngine
from .keys import KeyRing
from .runner import DB_BACKOFF_INITIAL_S, DB_BACKOFF_MAX_S, RunStats
from .store import new_run_token

EXIT_OK, EXIT_DB_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 130
#: How long a worker started before its database waits for it.
STARTUP_WAIT_S = 300.0


def worker(
    db: DbOption = None,
    keys: KeysOption = None,
    store: StoreOption = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="This worker's cap on requests in flight.")
    ] = None,
    exit_when_idle: Annotated[
        bool,
        typer.Option("--exit-when-idle", help="Exit once no job is queued or running (scripts, tests)."),
    ] = False,
    base_url: BaseUrlOption = None,
    protocol: ProtocolOption = None,
    lease_s: Annotated[
        float,
        typer.Option(
            "--lease-s",
            min=2.0,
            help="Lease on claimed jobs and limit slots, renewed every third of it: how long after "
            "this worker dies its jobs return to the queue.",
        ),
    ] = DEFAULT_LEASE_S,
    poll_s: Annotated[
        float, typer.Option("--poll-s", min=0.05, help="How often an idle worker looks for new jobs.")
    ] = 1.0,
) -> None:
    """Run queued jobs of any batch in the job store (`batch submit` puts them there) until stopped."""
    from ..logs import configure_logging, get_logger

    configure_logging(json_output=True, stream=sys.stderr)
    log = get_logger("bananaline.worker")
    settings = _settings(
        db_url=db,
        store_url=store,
        base_url=base_url,
        protocol=protocol,
        concurrency=concurrency,
    )
    # a dead worker's limit slots come back no later than its jobs
    settings = settings.with_overrides(limits_lease_s=min(lease_s, settings.limits_lease_s))
    keyring = _keyring(keys, settings)
    engine = _connect(settings, keyring, lease_s=lease_s, patient=not exit_when_idle, log=log)
    run_token = new_run_token()
    log.info(
        "worker_started",
        worker=run_token,
        concurrency=settings.concurrency,
        db=safe_db_url(settings.db_url),
        limits="shared" if settings.shares_limits else "process",
        lease_s=lease_s,
    )
    try:
        stats, aborted = asyncio.run(
            _work_with_signals(
                engine,
                concurrency=settings.concurrency,
                exit_when_idle=exit_when_idle,
                poll_s=poll_s,
                run_token=run_token,
                on_signal=lambda count: log.info(
                    "worker_stopping",
                    worker=run_token,
                    how="finishing the jobs in flight" if count == 1 else "releasing the jobs in flight",
                ),
            )
        )
    finally:
        engine.close()
    log.info(
        "worker_stopped",
        worker=run_token,
        jobs_finished=stats.jobs_finished if stats else None,
        images=stats.images if stats else None,
        elapsed_s=round(stats.elapsed_s, 3) if stats else None,
        aborted=aborted,
    )
    raise typer.Exit(EXIT_INTERRUPTED if aborted else EXIT_OK)


def _connect(settings: Settings, keyring: KeyRing, *, lease_s: float, patient: bool, log: Any) -> BatchEngine:
    """The engine, once the database answers (and is migrated). A long-running worker started
    before its database (a fresh deployment, a PostgreSQL restart) waits with backoff for up to
    ``STARTUP_WAIT_S``; ``--exit-when-idle`` (scripts) fails at once. Exit 1 when it gives up."""
    from sqlalchemy.exc import OperationalError

    give_up_at = time.monotonic() + (STARTUP_WAIT_S if patient else 0.0)
    backoff_s = DB_BACKOFF_INITIAL_S
    while True:
        try:
            return _engine(settings, keyring, lease_s=lease_s)
        except OperationalError as exc:
            if time.monotonic() + backoff_s > give_up_at:
                log.error("worker_db_unavailable", db=safe_db_url(settings.db_url), error=type(exc).__name__)
                raise typer.Exit(EXIT_DB_UNAVAILABLE) from None
            log.warning(
                "worker_db_unavailable",
                db=safe_db_url(settings.db_url),
                error=type(exc).__name__,
                retry_in_s=backoff_s,
            )
            time.sleep(backoff_s)
            backoff_s = min(DB_BACKOFF_MAX_S, backoff_s * 2)


async def _work_with_signals(
    engine: BatchEngine,
    *,
    concurrency: int,
    exit_when_idle: bool,
    poll_s: float,
    run_token: str,
    on_signal: Callable[[int], None],
) -> tuple[RunStats | None, bool]:
    """``(stats, aborted)``: the first signal stops claiming; the second cancels the work, which
    gives the jobs in flight back to the queue (``BatchRun`` releases their leases)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        engine.work(
            concurrency=concurrency,
            stop=stop,
            exit_when_idle=exit_when_idle,
            poll_s=poll_s,
            run_token=run_token,
        )
    )
    with two_stage_signals(stop, task, on_signal):
        try:
            return await task, False
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return None, True


def register(app: typer.Typer) -> None:
    """Add ``bananaline worker`` to the CLI."""
    app.command("worker")(worker)
