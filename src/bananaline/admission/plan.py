"""A request turned into a validated, priced plan — once, before any money is spent.

Every door (CLI, batch row, plugin, gateways, batches API, MCP) asks :func:`plan_request`; nothing
downstream validates the catalog or prices an image again. A plan's price is never 0: a model
outside the catalog is charged the dearest price of its family (of the whole catalog when even
the family is unknown), and such an unpriceable model is refused outright for a caller with a
budget, since no estimate could hold that budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .. import catalog
from ..errors import ErrorKind, GenerationError
from ..types import GenerationRequest

_URL_SCHEME = re.compile(r"^(https?):", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    """What will be sent (canonical model, normalised ratio/size) and what it may cost."""

    request: GenerationRequest
    resolved: catalog.ResolvedParams
    n: int = 1

    @property
    def price_usd(self) -> Decimal:
        """One image."""
        return self.resolved.price_usd

    @property
    def reserve_usd(self) -> float:
        """What a budget must hold for the whole plan: every image it may make."""
        return float(self.price_usd * self.n)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.resolved.warnings

    def request_fields(self) -> dict[str, Any]:
        """What a stored batch row keeps of the request (the runner rebuilds it from these)."""
        request = self.request
        return {
            "prompt": request.prompt,
            "references": list(request.references),
            "model": request.model,
            "aspect_ratio": request.aspect_ratio,
            "image_size": request.image_size,
        }


def plan_request(
    request: GenerationRequest, *, n: int = 1, remote: bool = False, budget_set: bool = False
) -> Plan:
    """Validate ``request`` against the catalog and the reference policy and price it.

    ``remote``: the caller is not on this machine, so references must be http(s) URLs or data
    URIs (never a server path). ``budget_set``: the caller's spend is capped, so the price must be
    one the catalog can vouch for. Raises :class:`GenerationError` (``request_sent=False``).
    """
    resolved = catalog.validate(
        request.model, request.aspect_ratio, request.image_size, len(request.references)
    )
    if remote:
        for reference in request.references:
            check_reference_source(reference)
    if budget_set and not resolved.priced_exactly:
        raise GenerationError(
            ErrorKind.INVALID_INPUT,
            detail="unpriced_model",
            message=f"model {resolved.model!r} is not in the catalog and belongs to no known family, so "
            f"its price is unknown; a caller with a budget may use: {', '.join(catalog.MODELS)}",
            message_zh=f"模型 {resolved.model!r} 不在目录中，价格未知；有预算的调用方只能使用："
            f"{'、'.join(catalog.MODELS)}",
            request_sent=False,
        )
    updates = {
        "model": resolved.model,
        "aspect_ratio": resolved.aspect_ratio,
        "image_size": resolved.image_size,
    }
    return Plan(request.model_copy(update=updates), resolved, max(1, n))


def estimate_usd(fields: Mapping[str, Any], *, default_model: str = "") -> float:
    """The price of one image of a stored plan (:meth:`Plan.request_fields`; a batch job is one
    image): the same rule as :func:`plan_request`, without re-validating what was validated."""
    name = catalog.canonical_name(str(fields.get("model") or default_model))
    size = fields.get("image_size")
    resolved = catalog.ResolvedParams(
        name,
        None,
        catalog.normalize_size(size if isinstance(size, str) else None),
        catalog.get_model(name),
    )
    return float(resolved.price_usd)


def check_reference_source(reference: str) -> None:
    """Remote callers may send http(s) URLs and data URIs only: never a path on this server."""
    if reference[:5].lower() == "data:" or _URL_SCHEME.match(reference):
        return
    shown = reference if len(reference) <= 60 else reference[:57] + "..."
    raise GenerationError(
        ErrorKind.REFERENCE_ERROR,
        detail="blocked_address",
        message="A reference image could not be used: only http(s) URLs and data: URIs are accepted, "
        f"got {shown!r}",
        message_zh=f"参考图无法使用：只接受 http(s) 链接或 data: URI，收到 {shown!r}",
        request_sent=False,
    )
