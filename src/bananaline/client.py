"""The async client: one request in, one classified result out.

The path is always the same: validate against the catalog, load references (SSRF-guarded),
encode for the configured wire protocol, send with retries and deadlines, decode the stream,
check the output. Nothing here raises for a failed generation: the error is a value on the
result (``result.error``), so a timeout and a safety refusal never look alike.

    async with ImageClient(Settings(api_key="sk-...")) as client:
        result = await client.generate(GenerationRequest(prompt="a banana on a desk"))
        if result.ok:
            open("banana.png", "wb").write(result.images[0].data)
        else:
            print(result.error.kind, result.error.message)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from . import catalog
from .checks import check_output, inspect_image
from .config import Settings, get_settings
from .errors import ErrorKind, GenerationError, register_secret
from .imaging import run_cpu
from .protocols import get_protocol
from .protocols.base import DecodedResponse, EncodedRequest, ReferencePart, WireCall, WireProtocolAdapter
from .references import guarded_fetch, load_references
from .transport_errors import classify_http_status, classify_transport_exception
from .types import GeneratedImage, GenerationRequest, GenerationResult, WireProtocol

#: Called with an event name and details: ``attempt``, ``retry_wait``, ``decoding``, ``done``.
EventHook = Callable[[str, dict[str, Any]], None]

_ERROR_BODY_LIMIT = 64 * 1024


class ImageClient:
    """Generate and edit images. Owns an ``httpx.AsyncClient`` unless one is passed in."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,
        )
        self._on_event = on_event

    async def __aenter__(self) -> ImageClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _emit(self, event: str, **details: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, details)

    async def generate(
        self,
        request: GenerationRequest,
        *,
        api_key: SecretStr | str | None = None,
        protocol: WireProtocol | str | None = None,
        base_url: str | None = None,
        on_upstream_done: Callable[[], None] | None = None,
        known_references: Mapping[str, bytes] | None = None,
    ) -> GenerationResult:
        """Run one generation. Never raises for generation failures; see ``result.error``.

        ``known_references`` maps reference sources to bytes the caller already holds (the
        service's own stored files): those are not fetched, and still sniffed and checked.

        ``on_upstream_done`` is called once the upstream exchange is over (answer read, or given
        up), before the output checks: a scheduler that limits requests in flight upstream can
        free the slot there instead of holding it through local CPU work.
        """
        started = time.monotonic()
        result = GenerationResult(request=request)
        try:
            await self._generate_into(
                result, request, api_key, protocol, base_url, started, on_upstream_done, known_references
            )
        except GenerationError as error:
            result.error = error
            if result.text is None and error.kind is ErrorKind.TEXT_RESPONSE:
                result.text = error.model_text or error.detail
        result.elapsed_s = time.monotonic() - started
        self._emit("done", ok=result.ok, elapsed_s=result.elapsed_s)
        return result

    async def _generate_into(
        self,
        result: GenerationResult,
        request: GenerationRequest,
        api_key: SecretStr | str | None,
        protocol: WireProtocol | str | None,
        base_url: str | None,
        started: float,
        on_upstream_done: Callable[[], None] | None,
        known_references: Mapping[str, bytes] | None = None,
    ) -> None:
        settings = self.settings
        resolved = catalog.validate(
            request.model, request.aspect_ratio, request.image_size, len(request.references)
        )
        result.warnings.extend(resolved.warnings)
        key = _secret_value(api_key) or _secret_value(settings.api_key)
        if not key:
            raise GenerationError(
                ErrorKind.NO_API_KEY,
                message=(
                    "No API key: pass api_key=, set BANANALINE_API_KEY, or add api_key to bananaline.toml"
                ),
                message_zh=(
                    "缺少 API 密钥：传入 api_key，或设置环境变量 BANANALINE_API_KEY，或写入 bananaline.toml"
                ),
                request_sent=False,
            )
        register_secret(key)
        references = await load_references(
            request.references, settings=settings, client=self._http, known=known_references
        )
        adapter = get_protocol(WireProtocol(protocol or settings.protocol))
        upstream = (base_url or settings.base_url).rstrip("/")
        call = WireCall(
            base_url=upstream,
            api_key=key,
            model=resolved.model,
            prompt=request.prompt,
            references=tuple(ReferencePart(data=ref.data, mime=ref.mime) for ref in references),
            aspect_ratio=resolved.aspect_ratio,
            image_size=resolved.image_size,
            google_auth=catalog_google_host(upstream),
        )
        encoded = adapter.encode(call)
        del references, call
        try:
            decoded = await self._send_with_retries(
                result, adapter, encoded, upstream, settings.timeout_for(resolved.image_size), started
            )
        finally:
            del encoded
            if on_upstream_done is not None:
                on_upstream_done()
        result.text = decoded.text
        result.usage = decoded.usage
        self._emit("decoding", images=len(decoded.images))
        strict = request.strict_checks or settings.strict_checks
        images: list[GeneratedImage] = []
        for raw in decoded.images:
            # CPU work in the process-wide pool sized to the cores (shared with the store's
            # derivatives): more threads than cores would not finish any sooner.
            image, codes = await run_cpu(
                _inspect_and_check, raw.data, raw.declared_mime, settings.max_image_pixels, resolved, strict
            )
            result.warnings.extend(code for code in codes if code not in result.warnings)
            images.append(image)
        result.images = images
        result.cost_usd = float(resolved.price_usd * Decimal(len(images)))

    async def _send_with_retries(
        self,
        result: GenerationResult,
        adapter: WireProtocolAdapter,
        encoded: EncodedRequest,
        upstream: str,
        attempt_timeout_s: float,
        started: float,
    ) -> DecodedResponse:
        settings = self.settings
        deadline_s = settings.deadline_s

        def remaining_s() -> float | None:
            if deadline_s is None:
                return None
            return deadline_s - (time.monotonic() - started)

        def wait_s(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            backoff = min(
                settings.backoff_max_s, settings.backoff_initial_s * (2 ** (state.attempt_number - 1))
            )
            backoff = random.uniform(backoff / 2, backoff)
            hinted = getattr(error, "retry_after_s", None)
            wait = max(backoff, hinted or 0.0)
            left = remaining_s()
            if left is not None:
                wait = min(wait, max(0.0, left))
            self._emit("retry_wait", wait_s=wait, error=getattr(error, "kind", None))
            return wait

        def should_retry(exc: BaseException) -> bool:
            if not isinstance(exc, GenerationError) or not exc.retryable:
                return False
            left = remaining_s()
            return left is None or left > 0.5

        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=wait_s,
            retry=retry_if_exception(should_retry),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result.attempts = attempt.retry_state.attempt_number
                self._emit("attempt", attempt=result.attempts)
                timeout_s = attempt_timeout_s
                left = remaining_s()
                if left is not None:
                    if left <= 0:
                        raise GenerationError(ErrorKind.TIMEOUT, detail="deadline exceeded", retryable=False)
                    timeout_s = min(timeout_s, left)
                return await self._attempt(adapter, encoded, upstream, timeout_s)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(
        self, adapter: WireProtocolAdapter, encoded: EncodedRequest, upstream: str, timeout_s: float
    ) -> DecodedResponse:
        timeout = httpx.Timeout(timeout_s, connect=min(self.settings.connect_timeout_s, timeout_s))

        async def fetch_url(url: str) -> bytes:
            return await self._fetch_result_url(url, upstream)

        try:
            async with asyncio.timeout(timeout_s):
                async with self._http.stream(
                    encoded.method,
                    encoded.url,
                    headers=encoded.headers,
                    content=encoded.body,
                    timeout=timeout,
                ) as response:
                    if response.status_code != 200:
                        body = await _read_bounded(response, _ERROR_BODY_LIMIT)
                        raise classify_http_status(response.status_code, response.headers, body)
                    return await adapter.decode(response, fetch_url)
        except GenerationError:
            raise
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise classify_transport_exception(exc) from exc

    async def _fetch_result_url(self, url: str, upstream: str) -> bytes:
        """Images the upstream answers with as URLs: same origin as the upstream is trusted,
        anything else goes through the SSRF guard like a user's reference."""
        if _same_origin(url, upstream):
            try:
                response = await self._http.get(url, timeout=self.settings.connect_timeout_s * 4)
            except httpx.HTTPError as exc:
                raise classify_transport_exception(exc) from exc
            if response.status_code != 200:
                raise GenerationError(
                    ErrorKind.MALFORMED_RESPONSE, detail=f"image URL answered {response.status_code}"
                )
            return response.content
        try:
            return await guarded_fetch(url, settings=self.settings, client=self._http)
        except GenerationError as error:
            raise GenerationError(
                ErrorKind.MALFORMED_RESPONSE, detail=f"image URL unusable: {error.detail}"
            ) from error


class SyncImageClient:
    """A thin blocking facade over :class:`ImageClient`, for scripts and notebooks."""

    def __init__(self, settings: Settings | None = None, *, on_event: EventHook | None = None) -> None:
        self._runner = asyncio.Runner()
        self._settings = settings
        self._on_event = on_event
        self._client: ImageClient | None = None

    def generate(self, request: GenerationRequest, **kwargs: Any) -> GenerationResult:
        return self._runner.run(self._generate(request, **kwargs))

    async def _generate(self, request: GenerationRequest, **kwargs: Any) -> GenerationResult:
        if self._client is None:
            self._client = ImageClient(self._settings, on_event=self._on_event)
        return await self._client.generate(request, **kwargs)

    def close(self) -> None:
        if self._client is not None:
            self._runner.run(self._client.aclose())
        self._runner.close()

    def __enter__(self) -> SyncImageClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _inspect_and_check(
    data: bytes, declared_mime: str | None, max_pixels: int, resolved: catalog.ResolvedParams, strict: bool
) -> tuple[GeneratedImage, list[str]]:
    image = inspect_image(data, declared_mime, max_pixels=max_pixels)
    codes = check_output(
        image, aspect_ratio=resolved.aspect_ratio, expected_pixels=resolved.expected_pixels, strict=strict
    )
    return image, codes


def catalog_google_host(base_url: str) -> bool:
    return urlsplit(base_url).hostname == "generativelanguage.googleapis.com"


def _secret_value(value: SecretStr | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
