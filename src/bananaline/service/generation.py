"""One generation as the service runs it: admit, generate, store, account.

Every HTTP entry point (plugin, Gemini gateway, OpenAI gateway) goes through here, so key
routing, limits, budget, retries, classification, output checks, storage and usage accounting
are the same whichever door a request came in by.

``admit`` runs in the request handler and refuses cheaply (bad input, rate, budget, no key)
before anything is sent upstream; ``run`` does the upstream work and may outlive the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from pydantic import ValidationError

from ..admission import CallerGate, CallerGates, CallerLimits, Plan, Reservation, plan_request
from ..client import ImageClient
from ..config import Settings
from ..delivery import store_result
from ..errors import ErrorKind, GenerationError
from ..logs import get_logger
from ..storage import ImageStore
from ..types import GenerationRequest, GenerationResult
from .auth import Caller, Principal
from .http_errors import ServiceError
from .metrics import ServiceMetrics
from .usage import FileRecord, UsageRecord, UsageRepository

log = get_logger("bananaline.service")


@dataclass
class Admission:
    """A request that passed admission, holding its budget reservation until its spend is written."""

    principal: Principal
    plan: Plan
    gate: CallerGate | None = field(default=None, repr=False)
    reservation: Reservation = field(default_factory=Reservation)

    @property
    def request(self) -> GenerationRequest:
        return self.plan.request


def build_request(
    *,
    prompt: str,
    references: Sequence[str],
    model: str,
    aspect_ratio: str | None,
    image_size: str | None,
    status: int = 422,
) -> GenerationRequest:
    """A door's fields as a :class:`GenerationRequest` (every door builds it here); a shape problem
    is ``invalid_input`` with ``status`` (422 for the plugin and MCP, 400 in the SDK gateways)."""
    try:
        return GenerationRequest(
            prompt=prompt,
            references=tuple(references),
            model=model,
            aspect_ratio=aspect_ratio or None,
            image_size=image_size or None,
        )
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        if not prompt.strip():
            problems = "the request has no text prompt"
        raise ServiceError(
            status, ErrorKind.INVALID_INPUT.value, f"invalid request: {problems}", f"请求参数无效：{problems}"
        ) from None


def limits_of(caller: Caller) -> CallerLimits:
    return CallerLimits(caller.concurrency, float(caller.rpm) if caller.rpm else None, caller.budget_usd)


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        client: ImageClient,
        store: ImageStore | None,
        usage: UsageRepository,
        gates: CallerGates,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.usage = usage
        self.gates = gates
        self.metrics = metrics

    def gate_for(self, caller: Caller) -> CallerGate:
        """The caller's one gate in this process, with its current limits."""
        return self.gates.get(caller.id, limits_of(caller))

    def links(self, files_base_url: str | None) -> Callable[[str], str] | None:
        """The one rule for the links the service hands out (and stores): a ``file://`` store is
        served by this app under ``/files/…``; any other store — or no HTTP server at all
        (``files_base_url=None``: the stdio MCP door) — gives its own URLs."""
        if self.store is None or self.store.local_root is None or files_base_url is None:
            return None
        return lambda key: files_url(files_base_url, key)

    # ---- before anything is sent --------------------------------------------------------------

    async def admit(
        self, principal: Principal, request: GenerationRequest, *, remote: bool = True
    ) -> Admission:
        """Refuse what would fail or must not run — catalog, references, key, budget, rate —
        before anything is sent. ``remote=False`` only for a local user (stdio MCP): paths allowed."""
        caller = principal.caller
        charged = caller is not None and not principal.own_key and caller.budget_usd is not None
        try:
            plan = plan_request(request, remote=remote, budget_set=charged)
            if principal.upstream_key is None and self.settings.api_key is None:
                raise GenerationError(
                    ErrorKind.NO_API_KEY,
                    message="No upstream key for this caller: the operator must set one "
                    "(bananaline callers add NAME --api-key-env VAR) or send the apikey field",
                    message_zh="该调用方没有上游密钥：请管理员配置"
                    "（bananaline callers add NAME --api-key-env VAR），"
                    "或在请求中传 apikey",
                    request_sent=False,
                )
            admission = Admission(principal, plan)
            if caller is not None:
                gate = admission.gate = self.gate_for(caller)
                if charged:
                    admission.reservation = await self.reserve_budget(caller, plan.reserve_usd)
                try:
                    await gate.take_request()
                except GenerationError:
                    await gate.release_reservation(admission.reservation)
                    raise
        except GenerationError as error:
            self.metrics.observe_refusal(error.kind.value)
            raise
        return admission

    async def reserve_budget(self, caller: Caller, estimate_usd: float) -> Reservation:
        """The one budget rule: what the caller spent (usage) plus what is reserved plus
        ``estimate_usd`` must fit; the reservation is held until the spend is written."""
        if caller.budget_usd is None:
            return Reservation()
        spent = await asyncio.to_thread(self.usage.spent_usd, caller.id)
        return await self.gate_for(caller).reserve(spent, estimate_usd)

    async def check_budget(self, caller: Caller, estimate_usd: float) -> None:
        """:meth:`reserve_budget`'s refusal without holding anything (a batch's upfront check)."""
        if caller.budget_usd is None:
            return
        spent = await asyncio.to_thread(self.usage.spent_usd, caller.id)
        await self.gate_for(caller).check_budget(spent, estimate_usd)

    async def abandon(self, admission: Admission) -> None:
        """An admitted request that will not run after all (or whose spend is now written): give
        its reservation back."""
        if admission.gate is not None:
            await admission.gate.release_reservation(admission.reservation)

    # ---- the upstream work ----------------------------------------------------------------------

    async def run(
        self, admission: Admission, *, source: str, files_base_url: str | None, task_id: str | None = None
    ) -> GenerationResult:
        """Generate, store and account. Never raises for a generation failure (see ``result.error``)."""
        try:
            return await self._run(admission, source=source, files_base_url=files_base_url, task_id=task_id)
        finally:
            await self.abandon(admission)  # only now: the spend is written (or nothing was spent)

    async def _run(
        self, admission: Admission, *, source: str, files_base_url: str | None, task_id: str | None
    ) -> GenerationResult:
        principal = admission.principal
        gate = admission.gate
        key = principal.upstream_key or self.settings.api_key
        request = admission.request
        own_files = await self._own_files(request, files_base_url)
        if gate is not None:
            async with gate.slot():
                result = await self.client.generate(request, api_key=key, known_references=own_files)
            gate.observe(result)
        else:
            result = await self.client.generate(request, api_key=key, known_references=own_files)
        result.request = request
        files: list[FileRecord] = []
        if result.ok and self.store is not None:
            files = await self._store(
                result, principal, source=source, files_base_url=files_base_url, task_id=task_id
            )
        record = UsageRecord(
            caller_id=principal.owner,
            source=source,
            model=request.model,
            image_size=request.image_size,
            ok=result.ok,
            error_kind=result.error.kind.value if result.error else None,
            images=len(result.images),
            cost_usd=float(result.cost_usd or 0.0),
            elapsed_s=round(result.elapsed_s, 3),
            own_key=principal.own_key,
            task_id=task_id,
        )
        await asyncio.to_thread(self.usage.record, record, files)
        self.metrics.observe_generation(source, principal.label, result)
        log.info(
            "generation",
            source=source,
            caller=principal.label,
            model=request.model,
            image_size=request.image_size,
            ok=result.ok,
            error_kind=record.error_kind,
            attempts=result.attempts,
            elapsed_s=record.elapsed_s,
            task_id=task_id,
        )
        return result

    async def _store(
        self,
        result: GenerationResult,
        principal: Principal,
        *,
        source: str,
        files_base_url: str | None,
        task_id: str | None,
    ) -> list[FileRecord]:
        """Store through the one ``delivery.store_result``; a ``file://`` store is served by this app
        under ``/files/…``, and nothing a caller sees is a path on this host."""
        assert self.store is not None
        stored_images = await store_result(
            result,
            self.store,
            url_for_key=self.links(files_base_url),
            public=True,
            skip_failed=True,
            caller=principal.label,
            source=source,
            task_id=task_id,
        )
        records = []
        for image, stored in zip(result.images, stored_images, strict=True):
            if stored is None:
                continue
            if stored.status != "stored":  # in the spool until it can be uploaded: no link yet
                result.warnings.append("stored_locally")
            records.append(
                FileRecord(
                    caller_id=principal.owner,
                    key=stored.key,
                    url=image.url,
                    thumbnail_url=image.thumbnail_url,
                    mime=image.mime,
                    width=image.width,
                    height=image.height,
                    bytes=len(image.data),
                    sha256=image.sha256,
                    source=source,
                    task_id=task_id,
                )
            )
        return records

    async def _own_files(self, request: GenerationRequest, files_base_url: str | None) -> dict[str, bytes]:
        """References to this service's own ``/files/…`` are read from the store, not fetched over
        the network (which the SSRF guard would rightly refuse for a loopback deployment)."""
        if self.store is None or files_base_url is None or not request.references:
            return {}
        prefix = files_base_url.rstrip("/") + "/files/"
        own: dict[str, bytes] = {}
        for reference in request.references:
            if reference.startswith(prefix) and reference not in own:
                key = unquote(reference[len(prefix) :].split("?", 1)[0])
                try:
                    own[reference] = await self.store.read(key)
                except (FileNotFoundError, GenerationError):
                    continue
        return own


def files_url(files_base_url: str, key: str) -> str:
    return f"{files_base_url.rstrip('/')}/files/{quote(key)}"


def summary_of(request: GenerationRequest) -> dict[str, Any]:
    """What a task records about its request: never a key, and references only by count."""
    return {
        "prompt": request.prompt[:2000],
        "model": request.model,
        "aspect_ratio": request.aspect_ratio,
        "image_size": request.image_size,
        "reference_count": len(request.references),
    }
