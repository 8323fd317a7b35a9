"""The batch engine: the library API every entry point (CLI, HTTP service, connectors) drives.

    engine = BatchEngine(settings, keyring=KeyRing.from_toml("keys.toml"))
    batch_id = engine.create_batch(table.rows, columns=ColumnConfig(prompt="提示词"))
    summary = await engine.run(batch_id)            # resumes if it ran before
    open("out.xlsx", "wb").write(engine.export(batch_id, "xlsx"))

A batch is identified by its content (header, rows, column config, owner): creating the same
batch twice returns the same id and running it again only does what is left.

``await engine.work()`` is a worker (``bananaline worker``): it runs queued jobs of every batch
in the work queue (the batches no service caller owns), on as many processes and machines as
share the job store, until told to stop (or, with ``exit_when_idle``, until nothing is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from ..admission import CallerGates, GateLedger, Plan, Shared, estimate_usd, plan_request
from ..config import Settings
from ..errors import ErrorKind, GenerationError
from ..instances import LIVE_INSTANCES
from ..types import GenerationRequest
from .columns import ColumnConfig, RowPlan, RowPlanner
from .keys import KeyRing
from .progress import ProgressSnapshot
from .report import BatchSummary, summarize
from .results import BatchInfo, BatchStatus, batch_info, fold_rows, output_rows
from .runner import BatchRun, JobAccounting, RunStats
from .sheets import write_table
from .store import JobStore, NewRow, new_run_token

if TYPE_CHECKING:
    from ..client import ImageClient
    from ..storage import ImageStore

DEFAULT_LEASE_S = 120.0


class BatchNotFound(LookupError):
    """No such batch (or it belongs to another owner)."""


class BatchInputError(ValueError):
    """The sheet as a whole cannot be run (a mapped column is missing, the template is broken)."""


def header_of(rows: list[dict[str, str]]) -> list[str]:
    header: list[str] = []
    for row in rows:
        for name in row:
            if name not in header:
                header.append(name)
    return header


def admit_row(row_plan: RowPlan, *, remote: bool) -> Plan:
    """A planned row through the one admission path (``plan_request``): the catalog checks, the
    reference policy and the price, once, when the batch is created. The stored plan holds what
    will be sent (canonical model, normalised ratio and size). Raises ``GenerationError``."""
    try:
        request = GenerationRequest(**row_plan.request_fields())
    except ValidationError as exc:
        raise GenerationError(
            ErrorKind.INVALID_INPUT, detail="row", message=f"invalid row: {exc}", request_sent=False
        ) from None
    return plan_request(request, n=row_plan.n, remote=remote)


def batch_id_for(
    header: list[str], rows: list[dict[str, str]], columns: ColumnConfig, owner: str | None
) -> str:
    digest = hashlib.sha256()
    for part in (json.dumps(header, ensure_ascii=False), columns.canonical_json(), owner or ""):
        digest.update(part.encode("utf-8") + b"\x00")
    for row in rows:
        digest.update(json.dumps([row.get(name, "") for name in header], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:24]


class BatchEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        db_url: str | None = None,
        jobs: JobStore | None = None,
        store: ImageStore | None = None,
        client: ImageClient | None = None,
        keyring: KeyRing | None = None,
        accounting: JobAccounting | None = None,
        url_for_key: Callable[[str], str] | None = None,
        public: bool = False,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.settings = settings
        self.db_url = db_url or settings.db_url
        self.jobs = jobs or JobStore(self.db_url)
        self._store = store
        self._client = client
        self.keyring = keyring or KeyRing.single(settings.api_key)
        #: Whose limits gate each row and where its spend goes; ``None``: the keys file's limits.
        self.accounting = accounting
        #: Links for stored images (the service's ``/files/…``); ``None``: the store's own URLs.
        self.url_for_key = url_for_key
        #: Links are for other people (the service): an image in the spool gets none, never a path.
        self.public = public
        self.lease_s = lease_s

    def close(self) -> None:
        self.jobs.close()

    # batches -------------------------------------------------------------------------------

    def create_batch(
        self,
        rows: list[dict[str, str]],
        *,
        columns: ColumnConfig | None = None,
        owner: str | None = None,
        name: str | None = None,
        header: list[str] | None = None,
        base_dir: Path | None = None,
        allow_local_refs: bool = True,
    ) -> str:
        """Store the rows as jobs and return the batch id; the same content gives the same id.

        ``base_dir`` resolves relative reference paths; services pass ``allow_local_refs=False``
        so a row can never read a file of the server. Raises :class:`BatchInputError`.
        """
        columns = columns or ColumnConfig()
        header = list(header) if header is not None else header_of(rows)
        batch_id = batch_id_for(header, rows, columns, owner)
        if self.jobs.get_batch(batch_id) is not None:
            return batch_id
        try:
            planner = RowPlanner(
                columns,
                default_model=self.settings.model,
                base_dir=base_dir,
                allow_local_refs=allow_local_refs,
            )
        except ValueError as exc:
            raise BatchInputError(str(exc)) from exc
        missing = planner.missing_columns(header)
        if missing:
            raise BatchInputError(
                f"the sheet has no column {', '.join(map(repr, missing))}; "
                f"its columns are: {', '.join(header)}"
            )
        planner.prerender(rows)
        new_rows = []
        for cells in rows:
            row_plan = planner.plan(cells)
            fields, error = None, row_plan.error
            if error is None:
                try:
                    fields = admit_row(row_plan, remote=not allow_local_refs).request_fields()
                except GenerationError as refusal:
                    error = refusal
            new_rows.append(
                NewRow(
                    cells={name: cells.get(name, "") for name in header},
                    caller=row_plan.caller,
                    n=row_plan.n,
                    plan=fields,
                    plan_error=error.to_dict() if error is not None else None,
                )
            )
        try:
            self.jobs.create_batch(
                batch_id,
                name=name,
                owner=owner,
                header=header,
                columns_json=columns.canonical_json(),
                rows=new_rows,
            )
        except IntegrityError:
            # Another process (a second worker given the same sheet) created it first: same content,
            # same id, same rows, so joining it is exactly what a second run would do.
            if self.jobs.get_batch(batch_id) is None:
                raise
        return batch_id

    def _batch(self, batch_id: str, owner: str | None):  # type: ignore[no-untyped-def]
        record = self.jobs.get_batch(batch_id, owner=owner)
        if record is None:
            raise BatchNotFound(batch_id)
        return record

    def list_batches(self, *, owner: str | None = None) -> list[BatchInfo]:
        return [
            batch_info(record, self.jobs.job_counts(record.id))
            for record in self.jobs.list_batches(owner=owner)
        ]

    def status(self, batch_id: str, *, owner: str | None = None, with_previews: bool = False) -> BatchStatus:
        record = self._batch(batch_id, owner)
        rows, jobs, images = self.jobs.load_results(batch_id, with_previews=with_previews)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        return BatchStatus(
            batch_info(record, counts), json.loads(record.header_json), fold_rows(rows, jobs, images)
        )

    def summary(self, batch_id: str, *, owner: str | None = None, **run_figures: Any) -> BatchSummary:
        self._batch(batch_id, owner)
        rows, jobs, images = self.jobs.load_results(batch_id)
        return summarize(batch_id, fold_rows(rows, jobs, images), jobs, **run_figures)

    def export(
        self, batch_id: str, fmt: Literal["csv", "xlsx", "jsonl"], *, owner: str | None = None
    ) -> bytes:
        """The input, row for row and column for column, plus the result columns."""
        status = self.status(batch_id, owner=owner, with_previews=fmt == "xlsx")
        header, rows = output_rows(status.header, status.rows)
        previews = (
            [row.previews[0] if row.previews else None for row in status.rows] if fmt == "xlsx" else None
        )
        return write_table(header, rows, fmt, previews=previews)

    def pending_estimate_usd(self, batch_id: str) -> float:
        """What the jobs still to run would cost, from their stored plans (column mapping,
        defaults and ``n`` applied; one job per image) priced by the one admission rule."""
        plans = self.jobs.pending_plans(batch_id)
        return sum(estimate_usd(plan, default_model=self.settings.model) for plan in plans)

    def retry_failed(self, batch_id: str, *, owner: str | None = None) -> int:
        self._batch(batch_id, owner)
        return self.jobs.retry_failed(batch_id)

    def cancel(self, batch_id: str, *, owner: str | None = None) -> int:
        """Cancel every queued job (running ones finish); ``retry_failed`` brings them back."""
        self._batch(batch_id, owner)
        return self.jobs.cancel(batch_id)

    # running -------------------------------------------------------------------------------

    async def run(
        self,
        batch_id: str,
        *,
        concurrency: int | None = None,
        on_progress: Callable[[ProgressSnapshot], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> BatchSummary:
        """Run what is left of the batch. Set ``stop`` to stop claiming (in-flight jobs finish);
        cancel the task to also give in-flight jobs back to the queue."""
        self._batch(batch_id, None)
        stats = await self._drive(batch_id, concurrency=concurrency, on_progress=on_progress, stop=stop)
        return await asyncio.to_thread(
            self.summary,
            batch_id,
            run_elapsed_s=stats.elapsed_s,
            run_jobs_finished=stats.jobs_finished,
            run_images=stats.images,
            interrupted=stats.interrupted,
        )

    async def work(
        self,
        *,
        concurrency: int | None = None,
        stop: asyncio.Event | None = None,
        exit_when_idle: bool = False,
        poll_s: float = 1.0,
        run_token: str | None = None,
    ) -> RunStats:
        """Be a worker: run queued jobs of any batch in the work queue until ``stop`` is set (then
        in-flight jobs finish) or, with ``exit_when_idle``, until no job is queued or running.
        Cancel the task to give in-flight jobs back to the queue at once."""
        return await self._drive(
            None,
            concurrency=concurrency,
            stop=stop,
            exit_when_idle=exit_when_idle,
            poll_s=poll_s,
            run_token=run_token,
        )

    async def _drive(
        self,
        batch_id: str | None,
        *,
        concurrency: int | None,
        on_progress: Callable[[ProgressSnapshot], None] | None = None,
        stop: asyncio.Event | None = None,
        exit_when_idle: bool = True,
        poll_s: float = 1.0,
        run_token: str | None = None,
    ) -> RunStats:
        """One batch (``batch_id``) or, with ``None``, a worker over the whole work queue."""
        ceiling = concurrency or self.settings.concurrency
        run_token = run_token or new_run_token()
        LIVE_INSTANCES.add(run_token)
        loop = asyncio.get_running_loop()
        sqlite = self.jobs.engine.dialect.name == "sqlite"
        executor = ThreadPoolExecutor(1 if sqlite else 4, thread_name_prefix="bananaline-db")

        def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(executor, partial(fn, *args, **kwargs))

        accounting = self.accounting or JobAccounting(
            CallerGates(default_concurrency=ceiling, shared=self._shared(run_token)), self.keyring
        )
        try:
            await db(self.jobs.recover, batch_id)
            async with self._resources() as (client, store, hook_slot):
                batch_run = BatchRun(
                    jobs=self.jobs,
                    db=db,
                    batch_id=batch_id,
                    keyring=self.keyring,
                    client=client,
                    store=store,
                    accounting=accounting,
                    ceiling=ceiling,
                    url_for_key=self.url_for_key,
                    public=self.public,
                    run_token=run_token,
                    lease_s=self.lease_s,
                    on_progress=on_progress,
                    stop=stop or asyncio.Event(),
                    exit_when_idle=exit_when_idle,
                    poll_s=poll_s,
                )
                hook_slot.append(batch_run.on_client_event)
                return await batch_run.execute()
        finally:
            await accounting.gates.release_all()
            LIVE_INSTANCES.discard(run_token)
            executor.shutdown(wait=True)

    def _shared(self, holder: str) -> Shared | None:
        """Caller limits in the job store's database when processes share it (``limits_scope``)."""
        if not self.settings.shares_limits:
            return None
        return Shared(GateLedger(self.jobs.engine), holder=holder, lease_s=self.settings.limits_lease_s)

    @contextlib.asynccontextmanager
    async def _resources(self) -> AsyncIterator[tuple[ImageClient, ImageStore, list[Callable[..., None]]]]:
        """The client and store to use: the ones given, or ones owned for the duration of a run.
        An owned client reports its retry events to the run (through ``hook_slot``)."""
        hook_slot: list[Callable[..., None]] = []
        store = self._store
        if store is None:
            from ..storage import ImageStore

            store = ImageStore.from_url(self.settings.store_url, settings=self.settings)
        if self._client is not None:
            yield self._client, store, hook_slot
            return
        from ..client import ImageClient

        def on_event(event: str, details: dict[str, Any]) -> None:
            for hook in hook_slot:
                hook(event, details)

        async with ImageClient(self.settings, on_event=on_event) as client:
            yield client, store, hook_slot
