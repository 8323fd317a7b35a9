"""Admission: the one path every door takes before money is spent.

:func:`plan_request` turns a request into a validated, priced :class:`Plan`; :class:`CallerGates`
holds each caller's rpm, concurrency and budget reservations (in this process, or in the shared
database's :class:`GateLedger`). Names load on first use: a plain ``bananaline generate`` needs
only the plan, not SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gates import CallerGate, CallerGates, CallerLimits, Reservation, Shared
    from .ledger import GateLedger
    from .plan import Plan, check_reference_source, estimate_usd, plan_request

_HOMES = {
    "CallerGate": "gates",
    "CallerGates": "gates",
    "CallerLimits": "gates",
    "Reservation": "gates",
    "Shared": "gates",
    "GateLedger": "ledger",
    "Plan": "plan",
    "check_reference_source": "plan",
    "estimate_usd": "plan",
    "plan_request": "plan",
}

__all__ = [
    "CallerGate",
    "CallerGates",
    "CallerLimits",
    "GateLedger",
    "Plan",
    "Reservation",
    "Shared",
    "check_reference_source",
    "estimate_usd",
    "plan_request",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bananaline.admission' has no attribute {name!r}")
    return getattr(import_module(f".{home}", __name__), name)
