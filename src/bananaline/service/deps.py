"""What routers depend on: the app's state (built by the lifespan) and who is calling.

Authentication rules, in one place:

* ``Authorization: Bearer bl_…`` (or ``x-goog-api-key: bl_…``): a service token. The caller's
  upstream key, limits and budget apply; the caller sees only its own tasks, batches, files, usage.
  An unknown or revoked token is a 401.
* Any other credential value, or the plugin's ``apikey`` field: the request's own upstream key,
  used for this call only, never stored or logged. A token and an ``apikey`` together: the token
  says who owns the task, the key pays (the caller's budget is not charged).
* Nothing at all: 401 on every generation and listing endpoint (the service never lends the
  operator's key to strangers). ``/healthz``, ``/readyz``, ``/openapi.json`` and ``/files/{key}``
  (content-addressed, unguessable keys) are public; ``/metrics`` (per-caller spend) needs
  ``metrics_token`` or, without one, a loopback peer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from pydantic import SecretStr
from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from ..admission import CallerGates
from ..client import ImageClient
from ..config import Settings
from ..errors import ErrorKind
from ..storage import ImageStore
from .auth import Caller, KeyCipher, Principal, credential_from, is_service_token
from .callers import CallerRepository
from .generation import GenerationService
from .http_errors import ServiceError
from .metrics import ServiceMetrics
from .middleware import FORWARDED_SCOPE_KEY
from .tasks import TaskRegistry
from .usage import UsageRepository

if TYPE_CHECKING:
    from ..batch import BatchEngine


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    cipher: KeyCipher
    callers: CallerRepository
    usage: UsageRepository
    gates: CallerGates
    metrics: ServiceMetrics
    tasks: TaskRegistry
    client: ImageClient
    store: ImageStore | None
    generation: GenerationService
    batches: BatchEngine
    #: Batch runs of this process, by batch id (asyncio tasks owned by the app).
    batch_runs: dict[str, asyncio.Task[Any]] = field(default_factory=dict)


def get_state(request: HTTPConnection) -> AppState:
    """The app's state, built by the lifespan. Routes take it as :data:`StateDep`."""
    return request.app.state.bananaline  # type: ignore[no-any-return]


def files_base_url(request: Request) -> str:
    """The service's public base, the one function that decides it: every link handed out or
    stored (``{base}/files/{key}``) starts with it. In order:

    1. ``public_base_url`` when configured (``--public-base-url``): always right, always preferred.
    2. A trusted proxy's ``X-Forwarded-Host`` (+ ``X-Forwarded-Proto``, ``X-Forwarded-Prefix``):
       honoured only when the direct peer is in ``trusted_proxies`` (see the middleware).
    3. The request's ``Host`` header, only when it is listed in ``allowed_hosts``.
    4. The address the server is bound to and the request arrived on (``--host``/``--port``).

    A client can therefore never make the service store links to a host of its choosing.
    The root path (``--root-path``) is kept unless a trusted proxy sends ``X-Forwarded-Prefix``.
    """
    settings = get_state(request).settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scope = request.scope
    scheme = str(scope.get("scheme") or "http")
    forwarded: dict[str, str] = scope.get(FORWARDED_SCOPE_KEY) or {}
    prefix = forwarded.get("prefix", str(scope.get("root_path") or "")).rstrip("/")
    host = forwarded.get("host")
    if host is None:
        header_host = request.headers.get("host", "").strip().lower()
        if header_host and header_host in {allowed.strip().lower() for allowed in settings.allowed_hosts}:
            host = header_host
    if host is None:
        host = _bound_authority(scope.get("server"), scheme)
    return f"{scheme}://{host}{prefix}"


def _bound_authority(server: Any, scheme: str) -> str:
    """``host[:port]`` of the socket the request came in on (uvicorn's ``scope["server"]``)."""
    if not server or not isinstance(server[0], str) or server[1] is None:
        return "127.0.0.1"
    host, port = server[0], int(server[1])
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if scheme == "https" else 80
    return host if port == default_port else f"{host}:{port}"


def unauthorized(message: str | None = None) -> ServiceError:
    return ServiceError(
        401,
        ErrorKind.UNAUTHORIZED,
        message
        or "authentication required: send Authorization: Bearer <service token> (or your own upstream key "
        "in the apikey field / x-goog-api-key header)",
        "需要认证：请在 Authorization: Bearer 中携带服务令牌"
        "（或在 apikey 字段 / x-goog-api-key 头中携带自己的上游密钥）",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def optional_principal(request: Request, body_key: str | None = None) -> Principal | None:
    """Who is calling, or ``None`` when the request carries no credential at all."""
    state = get_state(request)
    credential = credential_from(request)
    if credential and is_service_token(credential):
        caller = await asyncio.to_thread(state.callers.by_token, credential)
        if caller is None:
            raise unauthorized("the service token is unknown or revoked")
        if body_key:
            return Principal(caller=caller, upstream_key=SecretStr(body_key), own_key=True)
        return Principal(caller=caller, upstream_key=caller.upstream_key, own_key=False)
    key = body_key or credential
    if key:
        return Principal(caller=None, upstream_key=SecretStr(key), own_key=True)
    return None


async def resolve_principal(request: Request, body_key: str | None = None) -> Principal:
    """Who is calling; a request with no credential at all is a 401."""
    principal = await optional_principal(request, body_key)
    if principal is None:
        raise unauthorized()
    return principal


async def _principal(request: Request) -> Principal:
    return await resolve_principal(request)


async def require_caller(request: Request) -> Principal:
    """A caller with a service token: listings and usage are per caller, never anonymous."""
    principal = await resolve_principal(request)
    if principal.caller is None:
        raise unauthorized("this endpoint needs a service token (Authorization: Bearer bl_…)")
    return principal


async def current_caller(request: Request) -> Caller:
    """The caller behind a service token (what listings, usage and the batches API are about)."""
    principal = await require_caller(request)
    assert principal.caller is not None  # require_caller refused every other principal
    return principal.caller


#: Dependencies as types (FastAPI's ``Annotated`` style): handlers never fetch state by hand.
StateDep = Annotated[AppState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(_principal)]
CallerDep = Annotated[Caller, Depends(current_caller)]
