"""What routers depend on: the app's state (built by the lifespan) and who is calling.

Authentication rules, in one place:

* ``Authorization: Bearer bl_…`` (or ``x-goog-api-key: bl_…``): a service token. The caller's
  upstream key, limits and budget apply; the caller sees only its own tasks, batches, files, usage.
  An unknown or revoked token is a 401.
* Any other credential value, or the plugin's ``apikey`` field: the request's own upstream key,
  used for this call only, never stored or logged. A token and an ``apikey`` together: the token
  says who owns the task, the key pays (the caller's budget is not charged).
* Nothing at all: 401 on every generation and listing endpoint (the service never lends the
  operator's key to strangers). ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and
  ``/files/{key}`` (content-addressed, unguessable keys) are public.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import SecretStr
from sqlalchemy import Engine

from ..client import ImageClient
from ..config import Settings
from ..errors import ErrorKind
from ..storage import ImageStore
from .auth import KeyCipher, Principal, credential_from, is_service_token
from .callers import CallerRepository
from .generation import GenerationService
from .http_errors import ServiceError
from .limits import CallerLimiter
from .metrics import ServiceMetrics
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
    limiter: CallerLimiter
    metrics: ServiceMetrics
    tasks: TaskRegistry
    client: ImageClient
    store: ImageStore | None
    generation: GenerationService
    batches: BatchEngine | None = None
    batch_runs: dict[str, asyncio.Task[Any]] | None = None


def get_state(request: Request) -> AppState:
    return request.app.state.bananaline  # type: ignore[no-any-return]


def files_base_url(request: Request) -> str:
    """Absolute base for links we hand out: the configured public URL behind a proxy, else the
    URL this request reached us at (root path included)."""
    state = get_state(request)
    if state.settings.public_base_url:
        return state.settings.public_base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


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


async def resolve_principal(
    request: Request, body_key: str | None = None, *, required: bool = True
) -> Principal | None:
    """Who is calling. ``required=False`` returns ``None`` instead of a 401 for no credential."""
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
    if required:
        raise unauthorized()
    return None


async def require_caller(request: Request) -> Principal:
    """A caller with a service token: listings and usage are per caller, never anonymous."""
    principal = await resolve_principal(request)
    assert principal is not None
    if principal.caller is None:
        raise unauthorized("this endpoint needs a service token (Authorization: Bearer bl_…)")
    return principal
