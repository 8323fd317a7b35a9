"""Admission: the one path every door takes before money is spent.

:func:`plan_request` turns a request into a validated, priced :class:`Plan`; :class:`CallerGates`
holds each caller's rpm, concurrency and budget reservations for the whole process.
"""

from .gates import CallerGate, CallerGates, CallerLimits, Reservation, Shared
from .ledger import GateLedger
from .plan import Plan, check_reference_source, estimate_usd, plan_request

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
