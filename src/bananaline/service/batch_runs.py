"""The batch engine as the service runs it: owned by callers, admitted and paid like any request.

Every batch submitted over HTTP is owned by the calling caller (its id is part of the batch id,
so two callers submitting the same sheet get two batches). A sheet's ``caller`` column is ignored
for keys: the authenticated caller's upstream key pays for every row, and every row goes through
the caller's one gate (:class:`CallerAccounting`): the same rpm window, concurrency slots and
budget reservations as the plugin and the gateways, so a caller's limits hold across all doors
at once. Each row's spend is written to usage as it finishes (a crash loses no charge), and only
then is its reservation released. Rows may not reference server paths (``allow_local_refs=False``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..admission import CallerGate, Reservation, estimate_usd
from ..batch import BatchEngine, CallerKey, KeyRing
from ..batch.runner import JobAccounting
from ..batch.store import ClaimedJob, JobOutcome
from ..logs import get_logger
from .auth import Caller
from .usage import UsageRecord

if TYPE_CHECKING:
    from .deps import AppState

log = get_logger("bananaline.service.jobs")


def _keyring(state: AppState, caller: Caller) -> KeyRing:
    key = caller.upstream_key or state.settings.api_key
    entry = CallerKey(
        api_key=key, concurrency=caller.concurrency, rpm=float(caller.rpm) if caller.rpm else None
    )
    return KeyRing({}, default=entry, fallback_to_default=True)


class CallerAccounting(JobAccounting):
    """A service caller's batch rows: the caller's gate, budget and usage, row by row."""

    def __init__(self, state: AppState, caller: Caller, batch_id: str) -> None:
        super().__init__(state.gates, _keyring(state, caller))
        self.state, self.caller, self.batch_id = state, caller, batch_id

    def gate_for(self, job_caller: str) -> CallerGate:
        return self.state.generation.gate_for(self.caller)

    async def admit(self, job: ClaimedJob, gate: CallerGate) -> Reservation:
        return await self.state.generation.reserve_budget(self.caller, estimate_usd(job.plan))

    async def settle(self, job: ClaimedJob, outcome: JobOutcome, reservation: Reservation) -> None:
        try:
            error_kind = outcome.error.get("kind") if outcome.error else None
            record = UsageRecord(
                caller_id=self.caller.id,
                source="batch",
                model=str(job.plan.get("model") or "batch"),
                image_size=job.plan.get("image_size"),
                ok=outcome.ok,
                error_kind=error_kind,
                images=len(outcome.images),
                cost_usd=float(outcome.cost_usd or 0.0),
                elapsed_s=float(outcome.latency_s or 0.0),
                own_key=False,
                task_id=self.batch_id[:40],
            )
            await asyncio.to_thread(self.state.usage.record, record)
            self.state.metrics.images.labels(caller=self.caller.name).inc(record.images)
            self.state.metrics.cost.labels(caller=self.caller.name).inc(record.cost_usd)
        finally:
            await self.gate_for(job.caller).release_reservation(reservation)


async def check_budget(state: AppState, caller: Caller, batch_id: str) -> None:
    """Refuse (402) a batch that cannot fit the budget before any row runs; rows then reserve
    one by one as they start, so racing requests and jobs never overspend."""
    if caller.budget_usd is None:
        return
    estimate = await asyncio.to_thread(state.batches.pending_estimate_usd, batch_id)
    await state.generation.check_budget(caller, estimate)


def start_run(state: AppState, caller: Caller, batch_id: str, *, files_base_url: str) -> bool:
    """Start running the batch unless it already runs in this process. Returns whether it started."""
    runs = state.batch_runs
    current = runs.get(batch_id)
    if current is not None and not current.done():
        return False
    engine = BatchEngine(
        state.settings,
        jobs=state.batches.jobs,
        store=state.store,
        keyring=_keyring(state, caller),
        accounting=CallerAccounting(state, caller, batch_id),
        url_for_key=state.generation.links(files_base_url),
        public=True,
    )

    async def run() -> None:
        try:
            summary = await engine.run(batch_id, concurrency=caller.concurrency)
            log.info("batch_run_done", batch_id=batch_id, caller=caller.name, rows=summary.rows_by_status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed run must still be logged
            log.error("batch_run_failed", batch_id=batch_id, error=type(exc).__name__)
        finally:
            await asyncio.to_thread(engine.close)

    task = asyncio.create_task(run(), name=f"bananaline-batch-{batch_id}")
    runs[batch_id] = task
    task.add_done_callback(lambda _: runs.pop(batch_id, None) if runs.get(batch_id) is task else None)
    return True
