"""One run of a batch: claim jobs within the limits, generate, store, record, repeat.

The dispatcher is a single loop on the event loop. It claims a job only for a caller whose
limiter says *ready now*, so a slow or throttled caller never holds a global slot and never
blocks another caller's rows. Each job runs as a task: key lookup, generation (the client's
own retries apply), storage, preview, then one transaction that records the outcome under the
job's lease. A stop request ends claiming and lets in-flight jobs finish; cancelling the run
(a second Ctrl-C) gives in-flight jobs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..admission import CallerGate, CallerGates, CallerLimits, Reservation
from ..delivery import store_result
from ..errors import ErrorKind, GenerationError
from ..logs import get_logger
from ..types import GenerationRequest
from .keys import KeyRing
from .progress import ProgressSnapshot
from .store import ClaimedJob, ImageOutcome, JobOutcome, JobStore

if TYPE_CHECKING:
    from ..client import ImageClient
    from ..storage import ImageStore

log = get_logger("bananaline.batch")
DbCall = Callable[..., Awaitable[Any]]
#: How often a run waiting on a shared (cross-process) gate looks at the ledger again.
SHARED_POLL_S = 0.25
#: The caller whose job the current task runs: lets the client's retry events reach its limiter.
CURRENT_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bananaline_batch_caller", default=None
)


class JobAccounting:
    """What a run asks before and after each job: whose limits gate it, whether its budget holds,
    and where its spend goes. This base class is the CLI's: the keys file's limits, no budget.
    The service subclasses it so a batch row is admitted and charged like every other request
    (``bananaline.service.batch_runs``)."""

    def __init__(self, gates: CallerGates, keyring: KeyRing) -> None:
        self.gates = gates
        self.keyring = keyring

    def gate_for(self, job_caller: str) -> CallerGate:
        limits = self.keyring.limits_for(job_caller)
        ceiling = self.gates.default_concurrency  # a run's --concurrency caps every caller
        concurrency = min(limits.concurrency or ceiling, ceiling)
        return self.gates.get(job_caller, CallerLimits(concurrency, limits.rpm))

    async def admit(self, job: ClaimedJob, gate: CallerGate) -> Reservation:
        """Reserve what the job may cost (nothing here); raise ``GenerationError`` to refuse it."""
        return Reservation()

    async def settle(self, job: ClaimedJob, outcome: JobOutcome, reservation: Reservation) -> None:
        """The job is over: write its spend, then release its reservation."""


@dataclass
class RunStats:
    started_at: float
    elapsed_s: float = 0.0
    jobs_finished: int = 0
    images: int = 0
    unrecorded: int = 0
    interrupted: bool = False


class BatchRun:
    def __init__(
        self,
        *,
        jobs: JobStore,
        db: DbCall,
        batch_id: str,
        keyring: KeyRing,
        client: ImageClient,
        store: ImageStore,
        accounting: JobAccounting,
        ceiling: int,
        url_for_key: Callable[[str], str] | None = None,
        public: bool = False,
        run_token: str,
        lease_s: float,
        on_progress: Callable[[ProgressSnapshot], None] | None,
        stop: asyncio.Event,
    ) -> None:
        self.jobs, self.db, self.batch_id = jobs, db, batch_id
        self.keyring, self.client, self.store = keyring, client, store
        self.accounting, self.ceiling = accounting, ceiling
        self.url_for_key, self.public = url_for_key, public
        self.run_token, self.lease_s = run_token, lease_s
        self._gates: dict[str, CallerGate] = {}
        self._turn = 0
        self.on_progress, self.stop = on_progress, stop
        self.stats = RunStats(started_at=time.monotonic())
        self.in_flight: dict[asyncio.Task[None], ClaimedJob] = {}
        self._wake = asyncio.Event()
        #: Jobs holding an upstream slot (global and per caller): claimed and not yet answered.
        self.upstream_active = 0
        self._slot_freed: set[int] = set()
        self.progress = ProgressSnapshot()

    # dispatch ------------------------------------------------------------------------------

    async def execute(self) -> RunStats:
        counts = await self.db(self.jobs.job_counts, self.batch_id)
        spent_usd, images = await self.db(self.jobs.spent_usd, self.batch_id)
        self.progress = ProgressSnapshot.from_counts(counts, spent_usd=spent_usd, images=images)
        self._report()
        callers: set[str] = await self.db(self.jobs.queued_callers, self.batch_id)
        heartbeat = asyncio.create_task(self._heartbeat())
        stop_watch = asyncio.create_task(self._forward_stop())
        try:
            await self._dispatch(callers)
            if self.in_flight:
                await asyncio.wait(list(self.in_flight))
        except asyncio.CancelledError:
            self.stats.interrupted = True
            await self._abandon_in_flight()
            raise
        finally:
            heartbeat.cancel()
            stop_watch.cancel()
            for gate in self._gates.values():
                gate.unsubscribe(self._wake.set)
            self.stats.elapsed_s = time.monotonic() - self.stats.started_at
        self.stats.interrupted = self.stats.interrupted or self.stop.is_set()
        return self.stats

    def gate(self, job_caller: str) -> CallerGate:
        """The caller's gate, shared with every other door; a freed slot anywhere wakes us."""
        gate = self._gates.get(job_caller)
        if gate is None:
            gate = self.accounting.gate_for(job_caller)
            gate.subscribe(self._wake.set)
            self._gates[job_caller] = gate
        return gate

    async def _dispatch(self, callers: set[str]) -> None:
        ceiling = self.ceiling
        # Jobs past their upstream call (checks, storage, recording) no longer hold a slot, but
        # only a few of them may pile up, so a burst of 4K answers cannot pile up in memory.
        job_cap = ceiling + max(2, ceiling // 4)
        while not self.stop.is_set():
            self._wake.clear()
            if self.upstream_active >= ceiling or len(self.in_flight) >= job_cap:
                await self._wake.wait()
                continue
            delays: list[float] = []
            started = False
            order = sorted(callers)
            self._turn = (self._turn + 1) % max(1, len(order))
            for caller in order[self._turn :] + order[: self._turn]:  # take turns between callers
                gate = self.gate(caller)
                wait_s = await gate.try_start()  # a slot and an rpm start, here or across processes
                if wait_s > 0:
                    delays.append(wait_s)
                    continue
                job = await self.db(
                    self.jobs.claim, self.batch_id, [caller], run_token=self.run_token, lease_s=self.lease_s
                )
                if job is None:
                    gate.release()
                    callers.discard(caller)
                    continue
                self._start(job)
                started = True
                break
            if started:
                continue
            if not callers:
                if not self.in_flight:
                    callers.update(await self.db(self.jobs.queued_callers, self.batch_id))
                    if not callers:
                        return
                    continue
                await self._wake.wait()
                continue
            timeout = min((d for d in delays if d != math.inf), default=None)
            if self.accounting.gates.shared is not None:
                # another process may free a slot without waking us: look again soon
                timeout = min(timeout if timeout is not None else SHARED_POLL_S, SHARED_POLL_S)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _start(self, job: ClaimedJob) -> None:
        """Run a claimed job; its caller's slot was taken by ``try_start``."""
        self.upstream_active += 1
        task = asyncio.create_task(self._run_job(job), name=f"batch-job-{job.job_id}")
        self.in_flight[task] = job
        task.add_done_callback(self._job_ended)
        self.progress.queued = max(0, self.progress.queued - 1)
        self.progress.in_flight = len(self.in_flight)
        self._report()

    def _job_ended(self, task: asyncio.Task[None]) -> None:
        job = self.in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None and job is not None:
            # A database failure while recording: the job keeps its lease and the next run recovers it.
            self.stats.unrecorded += 1
            log.warning(
                "batch_job_unrecorded",
                batch=self.batch_id,
                row=job.row_index,
                variant=job.variant,
                error=repr(task.exception()),
            )
        self.progress.in_flight = len(self.in_flight)
        self._wake.set()

    async def _forward_stop(self) -> None:
        await self.stop.wait()
        self._wake.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.db(self.jobs.renew, self.run_token, lease_s=self.lease_s)
            await self.accounting.gates.renew()

    async def _abandon_in_flight(self) -> None:
        tasks = list(self.in_flight)
        leases = [job.lease_id for job in self.in_flight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Runs on the loop thread on purpose: the run is being torn down and must not lose this write.
        self.jobs.release(leases)

    def _report(self) -> None:
        if self.on_progress is not None:
            self.progress.elapsed_s = time.monotonic() - self.stats.started_at
            self.on_progress(self.progress)

    # one job -------------------------------------------------------------------------------

    def _free_slot(self, job: ClaimedJob) -> None:
        """The job's upstream exchange is over: its caller and global slots go to the next job."""
        if job.job_id in self._slot_freed:
            return
        self._slot_freed.add(job.job_id)
        self.gate(job.caller).release()
        self.upstream_active -= 1
        self._wake.set()

    async def _run_job(self, job: ClaimedJob) -> None:
        reservation = Reservation()
        try:
            try:
                reservation = await self.accounting.admit(job, self.gate(job.caller))
            except GenerationError as refusal:
                outcome = _failed(refusal)
            else:
                outcome = await self._generate(job)
        finally:
            self._free_slot(job)
            self._slot_freed.discard(job.job_id)
        try:
            recorded = await self.db(self.jobs.finish, job.job_id, job.lease_id, outcome)
        finally:
            await asyncio.shield(self.accounting.settle(job, outcome, reservation))
        if not recorded:
            return
        self.stats.jobs_finished += 1
        self.stats.images += len(outcome.images)
        self.progress.record(outcome.ok, images=len(outcome.images), cost_usd=outcome.cost_usd or 0.0)
        self.progress.in_flight = max(0, len(self.in_flight) - 1)  # this task is still listed
        self._report()

    async def _generate(self, job: ClaimedJob) -> JobOutcome:
        key = self.keyring.key_for(job.caller)
        if key is None:
            message, message_zh = self.keyring.explain_missing(job.caller)
            return _failed(
                GenerationError(
                    ErrorKind.NO_API_KEY, message=message, message_zh=message_zh, request_sent=False
                )
            )
        try:
            request = GenerationRequest(
                prompt=job.plan["prompt"],
                references=tuple(job.plan.get("references") or ()),
                model=job.plan["model"],
                aspect_ratio=job.plan.get("aspect_ratio"),
                image_size=job.plan.get("image_size"),
                tags={
                    "batch": self.batch_id,
                    "row": str(job.row_index),
                    "variant": str(job.variant),
                    "caller": job.caller,
                },
            )
        except (ValidationError, KeyError, TypeError) as exc:
            return _failed(
                GenerationError(
                    ErrorKind.INVALID_INPUT, detail="row", message=f"invalid row: {exc}", request_sent=False
                )
            )
        token = CURRENT_CALLER.set(job.caller)
        try:
            result = await self.client.generate(
                request, api_key=key, on_upstream_done=lambda: self._free_slot(job)
            )
        finally:
            CURRENT_CALLER.reset(token)
        limiter = self.gate(job.caller)
        if result.error is not None and result.error.kind is ErrorKind.RATE_LIMITED:
            limiter.on_rate_limited(result.error.retry_after_s)
        elif result.ok:
            limiter.on_success()
        outcome = JobOutcome(
            ok=result.ok,
            attempts=result.attempts,
            latency_s=round(result.elapsed_s, 3),
            cost_usd=result.cost_usd if result.ok else None,
            warnings=list(result.warnings),
        )
        if not result.ok:
            error = result.error or GenerationError(ErrorKind.NO_PARTS, detail="no image")
            outcome.error = error.to_dict()
            return outcome
        try:
            await store_result(
                result,
                self.store,
                url_for_key=self.url_for_key,
                public=self.public,
                batch=self.batch_id,
                row=job.row_index,
                variant=job.variant,
            )
        except Exception as exc:  # noqa: BLE001 - any storage failure is this row's error, not the run's
            outcome.ok = False
            outcome.cost_usd = result.cost_usd
            outcome.error = GenerationError(
                ErrorKind.STORAGE, detail=type(exc).__name__, message=f"the image could not be stored: {exc}"
            ).to_dict()
            return outcome
        for image in result.images:
            preview = image.preview  # made by the output checks from their one decode
            outcome.images.append(
                ImageOutcome(
                    sha256=image.sha256,
                    mime=image.mime,
                    width=image.width,
                    height=image.height,
                    size_bytes=len(image.data),
                    url=image.url,
                    thumbnail_url=image.thumbnail_url,
                    compressed_url=image.compressed_url,
                    storage_status=image.storage_status,
                    preview=preview,
                )
            )
        return outcome

    def on_client_event(self, event: str, details: dict[str, Any]) -> None:
        """Client hook: a 429 that the client is about to retry already slows the caller down."""
        if event != "retry_wait" or details.get("error") != ErrorKind.RATE_LIMITED:
            return
        caller = CURRENT_CALLER.get()
        if caller is not None:
            self.gate(caller).on_rate_limited(details.get("wait_s"))


def _failed(error: GenerationError) -> JobOutcome:
    return JobOutcome(ok=False, error=error.to_dict())
