"""One generation as the service runs it: admit, generate, store, account.

Every HTTP entry point (plugin, Gemini gateway, OpenAI gateway) goes through here, so key
routing, limits, budget, retries, classification, output checks, storage and usage accounting
are the same whichever door a request came in by.

``admit`` runs in the request handler and refuses cheaply (bad input, rate, budget, no key)
before anything is sent upstream; ``run`` does the upstream work and may outlive the request.
"""

from __future__ import annotations

import asyncio
import base64
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

from .. import catalog
from ..client import ImageClient
from ..config import Settings
from ..delivery import store_result
from ..errors import ErrorKind, GenerationError
from ..logs import get_logger
from ..storage import ImageStore
from ..types import GenerationRequest, GenerationResult
from .auth import Principal
from .limits import CallerLimiter
from .metrics import ServiceMetrics
from .usage import FileRecord, UsageRecord, UsageRepository

log = get_logger("bananaline.service")

_URL_SCHEME = re.compile(r"^(https?):", re.IGNORECASE)
ANONYMOUS = "anonymous"


def _most_expensive_usd() -> Decimal:
    return max(price for spec in catalog.MODELS.values() for price in spec.price_usd.values())


@dataclass
class Admission:
    """A request that passed the checks, holding its budget reservation until it finishes."""

    principal: Principal
    request: GenerationRequest
    reserved_usd: float = 0.0
    resolved: catalog.ResolvedParams | None = field(default=None, repr=False)


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        client: ImageClient,
        store: ImageStore | None,
        usage: UsageRepository,
        limiter: CallerLimiter,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.usage = usage
        self.limiter = limiter
        self.metrics = metrics

    # ---- before anything is sent --------------------------------------------------------------

    async def admit(self, principal: Principal, request: GenerationRequest) -> Admission:
        """Refuse what would fail or must not run: catalog, references, key, rate, budget."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", catalog.UnknownModelWarning)
                resolved = catalog.validate(
                    request.model, request.aspect_ratio, request.image_size, len(request.references)
                )
            for reference in request.references:
                check_reference_source(reference)
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
            admission = Admission(principal, request, resolved=resolved)
            caller = principal.caller
            if caller is not None:
                self.limiter.take_rpm(caller.id, caller.rpm)
                if not principal.own_key and caller.budget_usd is not None:
                    price = resolved.price_usd if resolved.price_usd is not None else _most_expensive_usd()
                    spent = await asyncio.to_thread(self.usage.spent_usd, caller.id)
                    admission.reserved_usd = self.limiter.reserve_budget(
                        caller.id, caller.budget_usd, spent, float(price)
                    )
        except GenerationError as error:
            self.metrics.observe_refusal(error.kind.value)
            raise
        return admission

    # ---- the upstream work ----------------------------------------------------------------------

    async def run(
        self, admission: Admission, *, source: str, files_base_url: str, task_id: str | None = None
    ) -> GenerationResult:
        """Generate, store and account. Never raises for a generation failure (see ``result.error``)."""
        principal = admission.principal
        caller = principal.caller
        key = principal.upstream_key or self.settings.api_key
        request = await self._inline_own_files(admission.request, files_base_url)
        try:
            if caller is not None:
                async with self.limiter.slot(caller.id, caller.concurrency):
                    result = await self.client.generate(request, api_key=key)
            else:
                result = await self.client.generate(request, api_key=key)
        finally:
            if caller is not None:
                self.limiter.release_budget(caller.id, admission.reserved_usd)
        result.request = admission.request
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
        files_base_url: str,
        task_id: str | None,
    ) -> list[FileRecord]:
        """Store through the one ``delivery.store_result``; a ``file://`` store is served by this app
        under ``/files/…``, and nothing a caller sees is a path on this host."""
        assert self.store is not None
        local = self.store.local_root is not None
        stored_images = await store_result(
            result,
            self.store,
            url_for_key=(lambda key: files_url(files_base_url, key)) if local else None,
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
                image.url = image.thumbnail_url = image.compressed_url = None
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

    async def _inline_own_files(self, request: GenerationRequest, files_base_url: str) -> GenerationRequest:
        """References to this service's own ``/files/…`` are read from the store, not fetched over
        the network (which the SSRF guard would rightly refuse for a loopback deployment)."""
        if self.store is None or not request.references:
            return request
        prefix = files_base_url.rstrip("/") + "/files/"
        changed = False
        references = []
        for reference in request.references:
            if reference.startswith(prefix):
                key = unquote(reference[len(prefix) :].split("?", 1)[0])
                try:
                    data = await self.store.read(key)
                except (FileNotFoundError, GenerationError):
                    data = None
                if data is not None:
                    reference = "data:application/octet-stream;base64," + base64.b64encode(data).decode(
                        "ascii"
                    )
                    changed = True
            references.append(reference)
        return request.model_copy(update={"references": tuple(references)}) if changed else request


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
