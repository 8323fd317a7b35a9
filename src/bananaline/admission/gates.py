"""The one per-caller limiter: requests per minute, generations in flight, budget reservations.

Every door shares one :class:`CallerGates` per process, so a caller's limits hold across the
plugin, both gateways, the batches API and batch rows at once (a batch no longer gets limits of its
own). Two ways in, one set of counters:

* a request door (plugin, gateway, MCP) calls :meth:`CallerGate.take_request` when it admits a
  request — over the rpm limit it is refused at once with ``rate_limited`` and a Retry-After —
  then holds :meth:`CallerGate.slot` around the upstream call, waiting for a free slot;
* the batch dispatcher calls :meth:`CallerGate.try_start` (a slot and an rpm start together, or
  how long to wait) before it claims a row, and :meth:`CallerGate.release` when the row's
  upstream call is over.

Both report each upstream answer with :meth:`CallerGate.observe`.

rpm is a moving 60 s window (``limits``' moving-window strategy: at most ``rpm`` starts in any
minute). Concurrency backs off on 429s (AIMD): halved at most once per cool-down plus a pause
for the upstream's Retry-After, then one slot back per round of successes. Budget: a reservation
is taken at admission and released only after the spend is written, so concurrent requests can
never all squeeze under the same remaining budget. A gate given a :class:`Shared` ledger keeps
all of this in the database instead, so the limits hold across every process on it
(``admission.ledger``); without one they are this process's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..errors import ErrorKind, GenerationError

if TYPE_CHECKING:
    from ..types import GenerationResult
    from .ledger import GateLedger

Clock = Callable[[], float]


@dataclass(frozen=True)
class CallerLimits:
    """What one caller may do; ``None`` = no limit of that kind (concurrency: the default)."""

    concurrency: int | None = None
    rpm: float | None = None
    budget_usd: float | None = None


@dataclass
class Reservation:
    """Budget held for an admitted request or row until its spend is written."""

    amount_usd: float = 0.0
    ledger_id: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Shared:
    """Where a process's gates keep the state other processes must see: the ledger, this
    process's holder id and the lease of what it holds (renewed by :meth:`CallerGates.renew`)."""

    ledger: GateLedger
    holder: str
    lease_s: float = 60.0


def _rpm_item(rpm: float) -> RateLimitItem:
    if rpm >= 1 and float(rpm).is_integer():
        return RateLimitItemPerMinute(int(rpm))
    return RateLimitItemPerHour(max(1, round(rpm * 60)))


class CallerGate:
    """One caller's share of this process. Lives on one event loop; not thread-safe."""

    def __init__(
        self,
        key: str,
        limits: CallerLimits,
        *,
        default_concurrency: int,
        window: MovingWindowRateLimiter,
        shared: Shared | None = None,
        default_pause_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.key = key
        self._window = window
        self._shared = shared
        self._slot_ids: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._default_pause_s = default_pause_s
        self._default_concurrency = default_concurrency
        self.in_flight = 0
        self.reserved_usd = 0.0
        self.paused_until = 0.0
        self._last_cut = -math.inf
        self._listeners: list[Callable[[], None]] = []
        self._changed = asyncio.Event()
        self.limits = limits
        self.max_concurrency = max(1, limits.concurrency or default_concurrency)
        self.effective = float(self.max_concurrency)
        self._rpm_item = _rpm_item(limits.rpm) if limits.rpm else None

    def update(self, limits: CallerLimits) -> None:
        """The caller's limits changed (an operator edited them): apply them from now on."""
        if limits == self.limits:
            return
        self.limits = limits
        self.max_concurrency = max(1, limits.concurrency or self._default_concurrency)
        self.effective = min(self.effective, float(self.max_concurrency))
        self._rpm_item = _rpm_item(limits.rpm) if limits.rpm else None
        self._notify()

    # --- concurrency ------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return max(1, int(self.effective))

    def ready_in_s(self) -> float:
        """0 when a generation may start now; ``inf`` when only a finishing one can free a slot."""
        if self.in_flight >= self.slots:
            return math.inf
        return max(max(0.0, self.paused_until - self._clock()), self._rpm_wait_s())

    def acquire(self, *, count_request: bool = True) -> None:
        self.in_flight += 1
        if count_request and self._rpm_item is not None:
            self._window.hit(self._rpm_item, self.key)

    async def try_start(self, *, count_request: bool = True) -> float:
        """Take a slot (and count the start toward rpm) if the caller may start now and return 0;
        else how long to wait (``inf``: until a slot frees). Shared gates decide in the ledger,
        across every process on the database."""
        if self._shared is None:
            wait_s = self.ready_in_s() if count_request else self._slot_wait_s()
            if wait_s == 0:
                self.acquire(count_request=count_request)
            return wait_s
        wait_s, slot_id = await asyncio.to_thread(
            self._shared.ledger.try_start,
            self.key,
            max_concurrency=self.max_concurrency,
            rpm=self.limits.rpm,
            holder=self._shared.holder,
            lease_s=self._shared.lease_s,
            count_request=count_request,
        )
        if slot_id is not None:
            self.in_flight += 1
            self._slot_ids.append(slot_id)
        return wait_s

    def _slot_wait_s(self) -> float:
        if self.in_flight >= self.slots:
            return math.inf
        return max(0.0, self.paused_until - self._clock())

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self._shared is not None and self._slot_ids:
            self._in_background(self._shared.ledger.finish, self._slot_ids.pop())
        self._notify()

    def _in_background(self, call: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Ledger writes that must not hold up the caller (a freed slot, upstream feedback)."""

        async def write() -> None:
            await asyncio.to_thread(call, *args, **kwargs)

        task = asyncio.get_running_loop().create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the caller's slots for an admitted request (its rpm was counted then).
        A shared gate polls the ledger (a slot freed in another process wakes nobody here)."""
        while True:
            wait_s = await self.try_start(count_request=False)
            if wait_s <= 0:
                break
            if self._shared is not None:
                wait_s = min(wait_s, 0.2)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), None if wait_s == math.inf else wait_s)
            except TimeoutError:
                pass
        try:
            yield
        finally:
            self.release()

    # --- requests per minute ----------------------------------------------------------------

    def _rpm_wait_s(self) -> float:
        if self._rpm_item is None:
            return 0.0
        stats = self._window.get_window_stats(self._rpm_item, self.key)
        if stats.remaining > 0:
            return 0.0
        return max(0.001, stats.reset_time - time.time())

    async def take_request(self) -> None:
        """Count one admitted request, or refuse it with ``rate_limited`` and a Retry-After."""
        if self._rpm_item is None:
            return
        if self._shared is not None:
            wait_s = await asyncio.to_thread(self._shared.ledger.take_request, self.key, self.limits.rpm)
            if wait_s == 0:
                return
        elif self._window.hit(self._rpm_item, self.key):
            return
        else:
            wait_s = self._rpm_wait_s()
        rpm = self.limits.rpm
        retry_after_s = max(1.0, wait_s)
        raise GenerationError(
            ErrorKind.RATE_LIMITED,
            detail="caller_rpm",
            message=f"this caller is limited to {rpm:g} requests per minute; retry in {retry_after_s:.0f}s",
            message_zh=f"该调用方每分钟最多 {rpm:g} 次请求，请 {retry_after_s:.0f} 秒后重试",
            retry_after_s=retry_after_s,
            request_sent=False,
        )

    # --- upstream feedback (AIMD) -------------------------------------------------------------

    def observe(self, result: GenerationResult) -> None:
        """What every door reports after an upstream answer: a 429 slows the caller down, a
        success lets it speed up again."""
        if result.error is not None and result.error.kind is ErrorKind.RATE_LIMITED:
            self.on_rate_limited(result.error.retry_after_s)
        elif result.ok:
            self.on_success()

    def on_success(self) -> None:
        if self._shared is not None and self.effective < self.max_concurrency:
            self._in_background(
                self._shared.ledger.feedback,
                self.key,
                rate_limited=False,
                max_concurrency=self.max_concurrency,
            )
        if self.effective < self.max_concurrency:
            self.effective = min(float(self.max_concurrency), self.effective + 1.0 / self.effective)
            self._notify()

    def on_rate_limited(self, retry_after_s: float | None = None) -> None:
        """Multiplicative decrease, once per cool-down (a burst of 429s is one signal), and a pause."""
        now = self._clock()
        if self._shared is not None:
            self._in_background(
                self._shared.ledger.feedback,
                self.key,
                rate_limited=True,
                max_concurrency=self.max_concurrency,
                retry_after_s=retry_after_s,
                default_pause_s=self._default_pause_s,
            )
        pause_s = retry_after_s if retry_after_s and retry_after_s > 0 else self._default_pause_s
        if now - self._last_cut >= max(pause_s, self._default_pause_s):
            self.effective = max(1.0, self.effective / 2.0)
            self._last_cut = now
        self.paused_until = max(self.paused_until, now + pause_s)

    # --- budget -------------------------------------------------------------------------------

    async def reserve(self, spent_usd: float, estimate_usd: float) -> Reservation:
        """Reserve ``estimate_usd`` against the budget or refuse with ``budget_exceeded``."""
        budget_usd = self.limits.budget_usd
        if budget_usd is None:
            return Reservation()
        if self._shared is None:
            self._refuse_over_budget(spent_usd, self.reserved_usd, estimate_usd)
            self.reserved_usd += estimate_usd
            return Reservation(estimate_usd)
        ledger_id, reserved = await asyncio.to_thread(
            self._shared.ledger.reserve,
            self.key,
            budget_usd=budget_usd,
            spent_usd=spent_usd,
            estimate_usd=estimate_usd,
            holder=self._shared.holder,
            lease_s=self._shared.lease_s,
        )
        if ledger_id is None:
            self._refuse_over_budget(spent_usd, reserved, estimate_usd)
        return Reservation(estimate_usd, ledger_id)

    async def check_budget(self, spent_usd: float, estimate_usd: float) -> None:
        """Refuse like :meth:`reserve` would, without holding anything (a batch's upfront check)."""
        if self.limits.budget_usd is None:
            return
        reserved = self.reserved_usd
        if self._shared is not None:
            reserved = await asyncio.to_thread(self._shared.ledger.current_reserved_usd, self.key)
        self._refuse_over_budget(spent_usd, reserved, estimate_usd)

    def _refuse_over_budget(self, spent_usd: float, reserved_usd: float, estimate_usd: float) -> None:
        budget_usd = self.limits.budget_usd
        if budget_usd is None or spent_usd + reserved_usd + estimate_usd <= budget_usd + 1e-9:
            return
        raise GenerationError(
            ErrorKind.BUDGET_EXCEEDED,
            detail=f"spent {spent_usd:.4f} (+{reserved_usd:.4f} in flight) of {budget_usd:.4f} USD; "
            f"this needs about {estimate_usd:.4f}",
            request_sent=False,
        )

    async def release_reservation(self, reservation: Reservation) -> None:
        """Call only after the spend the reservation covered is written."""
        if reservation.ledger_id is not None and self._shared is not None:
            ledger_id, reservation.ledger_id = reservation.ledger_id, None
            await asyncio.to_thread(self._shared.ledger.release_reservation, ledger_id)
        elif reservation.amount_usd:
            self.reserved_usd = max(0.0, self.reserved_usd - reservation.amount_usd)
        reservation.amount_usd = 0.0
        self._notify()

    # --- waking waiters -------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        self._changed.set()
        for listener in list(self._listeners):
            listener()


class CallerGates:
    """Every caller's gate in this process, made on first use."""

    def __init__(
        self,
        *,
        default_concurrency: int = 4,
        shared: Shared | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.shared = shared
        self.default_concurrency = default_concurrency
        self._clock = clock
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._gates: dict[str, CallerGate] = {}

    def get(self, key: str, limits: CallerLimits) -> CallerGate:
        """The gate of ``key`` with the caller's current ``limits``."""
        gate = self._gates.get(key)
        if gate is None:
            gate = CallerGate(
                key,
                limits,
                default_concurrency=self.default_concurrency,
                window=self._window,
                shared=self.shared,
                clock=self._clock,
            )
            self._gates[key] = gate
        else:
            gate.update(limits)
        return gate

    async def renew(self) -> None:
        """Keep this process's slots and reservations leased (call every ``lease_s / 3``)."""
        if self.shared is not None:
            await asyncio.to_thread(self.shared.ledger.renew, self.shared.holder, self.shared.lease_s)

    async def release_all(self) -> None:
        """A clean stop: whatever this process still holds goes back at once."""
        if self.shared is not None:
            await asyncio.to_thread(self.shared.ledger.release_holder, self.shared.holder)
