"""The ASGI app: wiring only. Routers own their paths; the lifespan owns clients, DB and store.

    uvicorn --factory bananaline.service.app:app_from_environment

``create_app(settings)`` is what tests and ``bananaline serve`` use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..admission import CallerGates, GateLedger, Shared
from ..batch import BatchEngine
from ..batch.store import JobStore
from ..client import ImageClient
from ..config import Settings
from ..db import make_engine, upgrade
from ..errors import register_secret
from ..instances import LIVE_INSTANCES, new_instance_id
from ..logs import get_logger
from ..storage import ImageStore
from .auth import KeyCipher
from .callers import CallerRepository
from .deps import AppState
from .generation import GenerationService
from .http_errors import install as install_error_handlers
from .metrics import ServiceMetrics
from .middleware import RequestContextMiddleware
from .openapi import install_openapi
from .plugin_document import PublicDocumentsCORS
from .plugin_document import router as plugin_document_router
from .routers import batches, files, gateway_gemini, gateway_openai, ops, plugin
from .tasks import TaskRegistry
from .usage import UsageRepository

log = get_logger("bananaline.service")

DESCRIPTION = """bananaline 图片生成服务：工作流插件节点（Coze / Dify / n8n / 飞书）、
兼容 Gemini 与 OpenAI SDK 的网关、批量任务接口。
The bananaline image service: a workflow plugin node, a Gemini/OpenAI-compatible gateway and a batches API."""


def create_app(settings: Settings) -> FastAPI:
    metrics = ServiceMetrics()
    for secret in (settings.api_key, settings.s3_secret_access_key, settings.oss_access_key_secret):
        if secret is not None:  # configured: pinned, never evicted by the request-scoped own keys
            register_secret(secret.get_secret_value(), transient=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(_build_state, settings, metrics)
        app.state.bananaline = state
        await state.tasks.start()
        metrics.track_in_flight("task", lambda: state.tasks.in_flight)
        metrics.track_in_flight("batch", lambda: len(state.batch_runs))
        log.info("service_started", db=_safe_db(settings.db_url), store=repr(state.store))
        renewer = asyncio.create_task(_renew_gate_leases(state), name="bananaline-gate-leases")
        try:
            yield
        finally:
            renewer.cancel()
            await state.tasks.shutdown()
            runs = list(state.batch_runs.values())
            for run in runs:
                run.cancel()
            if runs:
                await asyncio.wait(runs, timeout=10)
            state.batches.close()
            await state.gates.release_all()
            if state.gates.shared is not None:
                LIVE_INSTANCES.discard(state.gates.shared.holder)
            await state.client.aclose()
            state.engine.dispose()
            log.info("service_stopped")

    app = FastAPI(
        title="bananaline",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # No Swagger UI: FastAPI's page loads its scripts from a CDN, which an offline or locked-down
        # deployment cannot reach and should not trust. /openapi.json is the contract; any viewer reads it.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (plugin, gateway_gemini, gateway_openai, batches, files, ops):
        app.include_router(module.router)
    app.include_router(plugin_document_router)
    _mount_mcp(app, settings)
    install_openapi(app, settings)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_upload_bytes,
        max_unauthenticated_body_bytes=settings.max_unauthenticated_body_bytes,
        trusted_proxies=settings.trusted_proxies,
    )
    app.add_middleware(PublicDocumentsCORS)  # Coze Studio fetches the documents from the browser
    return app


def _mount_mcp(app: FastAPI, settings: Settings) -> None:
    """``/mcp``: the MCP tools over streamable HTTP (imported here: the SDK is slow to import)."""
    from ..connectors.mcp import mount_mcp

    mount_mcp(app, settings)


async def _renew_gate_leases(state: AppState) -> None:
    """Keep this process's shared slots and reservations leased while it lives."""
    if state.gates.shared is None:
        return
    while True:
        await asyncio.sleep(state.gates.shared.lease_s / 3)
        try:
            await state.gates.renew()
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the renewals
            log.warning("gate_lease_renew_failed", error=type(exc).__name__)


def _build_state(settings: Settings, metrics: ServiceMetrics) -> AppState:
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    cipher = KeyCipher(settings.secret_key)
    store = ImageStore.from_url(settings.store_url, settings=settings) if settings.store_url else None
    if store is not None and store.local_root is not None:
        store.local_root.mkdir(parents=True, exist_ok=True)
    client = ImageClient(settings)
    usage = UsageRepository(engine)
    shared = None
    if settings.shares_limits:  # one set of caller limits for every worker process on this database
        holder = new_instance_id()
        LIVE_INSTANCES.add(holder)
        shared = Shared(GateLedger(engine), holder=holder, lease_s=settings.limits_lease_s)
    gates = CallerGates(shared=shared)
    state = AppState(
        settings=settings,
        engine=engine,
        cipher=cipher,
        callers=CallerRepository(engine, cipher),
        usage=usage,
        gates=gates,
        metrics=metrics,
        tasks=TaskRegistry(engine, interrupted={"plugin": plugin.interrupted_answer}),
        client=client,
        store=store,
        generation=GenerationService(settings, client, store, usage, gates, metrics),
        batches=BatchEngine(settings, jobs=JobStore(engine=engine), store=store),
    )
    return state


def _safe_db(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<db>"


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory`` and ``bananaline serve --workers N``: settings from the environment."""
    from ..logs import configure_logging

    configure_logging(json_output=True)
    return create_app(Settings())
