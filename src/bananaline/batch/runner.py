"""One run of a batch: claim jobs within the limits, generate, store, record, repeat.

The dispatcher is a single loop on the event loop. It claims a job only for a caller whose
limiter says *ready now*, so a slow or throttled caller never holds a global slot and never
blocks another caller's rows. Each job runs as a task: key lookup, generation (the client's
own retries apply), storage, preview, then one transaction that records the outcome under the
job's lease. A stop request ends claiming and lets in-flight jobs finish; cancelling the run
(a second Ctrl-C) gives in-flight jobs back to the queue.

A run without a batch (``batch_id=None``) is a *worker* (``bananaline worker``): it claims jobs
of any batch in the work queue, waits for more when the queue is empty (or ends, with
``exit_when_idle``, once no job is queued or running anywhere), returns the jobs of dead workers
to the queue as their leases expire, and rides out a lost database connection with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

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
#: The shared cap of a caller with no concurrency limit in keys.toml (rpm and pauses still apply).
UNLIMITED_SHARED_SLOTS = 1_000_000
#: A worker that cannot reach the database waits this long, doubling up to the maximum.
DB_BACKOFF_INITIAL_S, DB_BACKOFF_MAX_S = 0.5, 30.0
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
        if limits.concurrency is None and self.gates.shared is not None:
            # No limit of its own: each process's ceiling bounds it already (the dispatcher's
            # count); in the shared ledger that ceiling would become every process's together.
            concurrency = UNLIMITED_SHARED_SLOTS
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
        batch_id: str | None,
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
        exit_when_idle: bool = True,
        poll_s: float = 1.0,
    ) -> None:
        self.jobs, self.db, self.batch_id = jobs, db, batch_id
        #: A worker run: any batch of the work queue (``batch_id`` is ``None``).
        self.worker = batch_id is None
        self.exit_when_idle, self.poll_s = exit_when_idle, poll_s
        self._db_backoff_s = 0.0
        self._next_look_s = 0.0
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
        callers: set[str] = set()
        if self.batch_id is not None:
            counts = await self.db(self.jobs.job_counts, self.batch_id)
            spent_usd, images = await self.db(self.jobs.spent_usd, self.batch_id)
            self.progress = ProgressSnapshot.from_counts(counts, spent_usd=spent_usd, images=images)
            self._report()
            callers = await self.db(self.jobs.queued_callers, self.batch_id)
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
            if self.worker and callers and time.monotonic() >= self._next_look_s:
                # new batches (and callers) may have arrived while some callers wait on their limits
                await self._look_for_work(callers, wait=False)
            if self.upstream_active >= ceiling or len(self.in_flight) >= job_cap:
                await self._wake.wait()
                continue
            claimed, delays = await self._claim_one(callers)
            if claimed:
                continue
            if not callers and self.worker:
                if not await self._look_for_work(callers, wait=True):
                    return
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
            if self.worker:
                # a worker looks at the queue every poll_s, even while its callers wait
                timeout = min(timeout if timeout is not None else self.poll_s, self.poll_s)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _claim_one(self, callers: set[str]) -> tuple[bool, list[float]]:
        """Start one job for the first caller (taking turns) whose gate lets it start now.
        ``(True, _)`` when a job started or the database needs a fresh look after a backoff;
        else ``(False, waits)``: how long each waiting caller's gate asked to wait. A caller with
        nothing left to claim leaves ``callers``."""
        delays: list[float] = []
        order = sorted(callers)
        self._turn = (self._turn + 1) % max(1, len(order))
        for caller in order[self._turn :] + order[: self._turn]:
            gate = self.gate(caller)
            slot_taken = False
            try:
                wait_s = await gate.try_start()  # a slot and an rpm start, here or across processes
                if wait_s > 0:
                    delays.append(wait_s)
                    continue
                slot_taken = True
                job = await self._claim(caller)
            except SQLAlchemyError as exc:  # the job store or the gate ledger is out of reach
                if slot_taken:
                    gate.release()
                if not self.worker:
                    raise
                await self._db_trouble("claim", exc)
                return True, delays  # after the backoff, from the top
            self._db_backoff_s = 0.0
            if job is None:
                gate.release()
                callers.discard(caller)
                continue
            self._start(job)
            return True, delays
        return False, delays

    async def _claim(self, caller: str) -> ClaimedJob | None:
        """Claim one job of ``caller``. The claim commits in a database thread: a cancel that
        lands meanwhile (the second Ctrl-C / SIGTERM) must not leave the job claimed by nobody
        until its lease runs out, so the claim is waited for and given straight back."""
        claim = self.db(
            self.jobs.claim, self.batch_id, [caller], run_token=self.run_token, lease_s=self.lease_s
        )
        try:
            job: ClaimedJob | None = await asyncio.shield(claim)
        except asyncio.CancelledError:
            claimed = await asyncio.gather(claim, return_exceptions=True)
            if isinstance(claimed[0], ClaimedJob):
                self.jobs.release([claimed[0].lease_id])  # on the loop thread: the run is ending
            raise
        return job

    async def _look_for_work(self, callers: set[str], *, wait: bool) -> bool:
        """A worker's look at the whole queue (every ``poll_s``, and whenever it has no caller left
        to claim for): the callers with queued jobs in any batch. With none and ``wait``, it waits
        a poll interval (a finishing job or a stop wakes it sooner). ``False``: nothing is queued
        or running anywhere and the worker was asked to exit when idle."""
        self._next_look_s = time.monotonic() + self.poll_s
        try:
            callers.update(await self.db(self.jobs.queued_callers, None))
            self._db_backoff_s = 0.0
            if callers or not wait:
                return True
            if self.exit_when_idle and not self.in_flight and not await self.db(self.jobs.open_jobs, None):
                return False
        except SQLAlchemyError as exc:
            await self._db_trouble("look_for_work", exc)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_s)
        return True

    async def _db_trouble(self, doing: str, exc: SQLAlchemyError) -> None:
        """A worker lost its database: claim nothing, back off (doubling), then try again. Jobs in
        flight keep going; a result whose lease was lost meanwhile is refused by ``finish``."""
        self._db_backoff_s = min(DB_BACKOFF_MAX_S, max(DB_BACKOFF_INITIAL_S, self._db_backoff_s * 2))
        log.warning(
            "worker_db_unavailable",
            worker=self.run_token,
            doing=doing,
            error=type(exc).__name__,
            retry_in_s=self._db_backoff_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self._db_backoff_s)

    def _start(self, job: ClaimedJob) -> None:
        """Run a claimed job; its caller's slot was taken by ``try_start``."""
        if self.worker:
            log.info(
                "job_claimed",
                worker=self.run_token,
                batch=job.batch_id,
                job=job.job_id,
                row=job.row_index,
                variant=job.variant,
                caller=job.caller,
            )
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
                worker=self.run_token,
                batch=job.batch_id,
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
            if not self.worker:
                await self.db(self.jobs.renew, self.run_token, lease_s=self.lease_s)
                await self.accounting.gates.renew()
                continue
            try:
                await self.db(self.jobs.renew, self.run_token, lease_s=self.lease_s)
                await self.accounting.gates.renew()
                # the jobs of a worker that died (SIGKILL, lost machine) go back to the queue
                recovered = await self.db(self.jobs.recover, None)
            except SQLAlchemyError as exc:
                log.warning("worker_heartbeat_failed", worker=self.run_token, error=type(exc).__name__)
                continue
            if recovered:
                log.info("jobs_recovered", worker=self.run_token, jobs=recovered)
                self._wake.set()

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
            recorded = await self._record(job, outcome)
        finally:
            await asyncio.shield(self.accounting.settle(job, outcome, reservation))
        if self.worker:
            log.info(
                "job_finished" if recorded else "job_lease_lost",
                worker=self.run_token,
                batch=job.batch_id,
                job=job.job_id,
                row=job.row_index,
                variant=job.variant,
                ok=outcome.ok,
                error_kind=(outcome.error or {}).get("kind"),
            )
        if not recorded:
            return
        self.stats.jobs_finished += 1
        self.stats.images += len(outcome.images)
        self.progress.record(outcome.ok, images=len(outcome.images), cost_usd=outcome.cost_usd or 0.0)
        self.progress.in_flight = max(0, len(self.in_flight) - 1)  # this task is still listed
        self._report()

    async def _record(self, job: ClaimedJob, outcome: JobOutcome) -> bool:
        """Write the outcome under the job's lease. A worker keeps the result through a database
        outage (a PostgreSQL restart) and retries with backoff for up to a lease: a result is never
        recorded twice (``finish`` checks the lease), and a job whose lease ran out meanwhile went
        back to the queue for another worker."""
        if not self.worker:
            recorded: bool = await self.db(self.jobs.finish, job.job_id, job.lease_id, outcome)
            return recorded
        give_up_at = time.monotonic() + self.lease_s
        backoff_s = DB_BACKOFF_INITIAL_S
        while True:
            try:
                recorded = await self.db(self.jobs.finish, job.job_id, job.lease_id, outcome)
                return recorded
            except SQLAlchemyError as exc:
                if time.monotonic() + backoff_s > give_up_at:
                    raise
                log.warning(
                    "job_record_retry",
                    worker=self.run_token,
                    batch=job.batch_id,
                    job=job.job_id,
                    error=type(exc).__name__,
                    retry_in_s=backoff_s,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(DB_BACKOFF_MAX_S, backoff_s * 2)

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
                    "batch": job.batch_id,
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
        self.gate(job.caller).observe(result)
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
                batch=job.batch_id,
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
