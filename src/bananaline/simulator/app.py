"""The simulator's ASGI app: Gemini ``generateContent``, OpenAI ``chat/completions``, files,
and the ``/_sim`` control API.

Every API request goes: count it -> check the key -> parse -> validate against the catalog ->
choose a fault -> wait the latency (ending early if the client leaves) -> answer, with the
image spliced in from the encoded-payload cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import gemini_shapes, openai_shapes
from .answer import Sizing, build_outcome, size_output
from .calls import BadRequest, ParsedCall, parse_gemini, parse_openai
from .config import OPENAI_STYLES, SimulatorConfig
from .faults import Directive, DirectiveError, QueuedFault, http_status, parse_directive
from .state import SimulatorState
from .stats import key_id
from .wire import ChunkedResponse, wait_unless_gone

#: What a route hands back: Starlette's responses, or our chunked one.
Answer = Response | ChunkedResponse

NOT_JSON_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
_RETRY_STATUSES = (429, 503)


def request_key(headers: Any, query: Any) -> str:
    """The API key as Google (``x-goog-api-key``, ``?key=``) or relays (Bearer) send it."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return str(auth[7:]).strip()
    return str(headers.get("x-goog-api-key") or query.get("key") or "").strip()


class CountingMiddleware:
    """Counts requests and in-flight calls from arrival to the end of the response."""

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        counted = path.startswith("/v1")
        request = Request(scope)
        kid = key_id(request_key(request.headers, request.query_params))
        status: list[int] = []
        ended = False
        stats = self.state.stats

        async def send_and_note(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Count the call as finished before its last byte leaves, so a client that has
                # read the whole response never sees it still in flight.
                ended = True
                stats.end(kid, counted, status[0] if status else None)
            await send(message)

        stats.begin(kid, "/files" if path.startswith("/files/") else path, counted)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not ended:
                stats.end(kid, counted, status[0] if status else None)


def _error(
    protocol: str,
    status: int,
    message: str | None = None,
    *,
    model: str = "",
    retry_after_s: float | None = None,
) -> Response:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    if protocol == "gemini":
        body = gemini_shapes.error_document(status, message, model=model, retry_after_s=retry_after_s)
    else:
        body = openai_shapes.error_document(status, message)
    return JSONResponse(body, status_code=status, headers=headers)


def _quota_zero(protocol: str, model: str, retry_after_s: float) -> Response:
    """Google's 429 for a tier with no quota for the model: RetryInfo and all, as a trap for retries."""
    if protocol == "gemini":
        body = gemini_shapes.quota_zero_document(model, retry_after_s)
    else:
        body = openai_shapes.quota_zero_document(gemini_shapes.quota_zero_message(model, retry_after_s))
    return JSONResponse(body, status_code=429)


class Simulator:
    """Route handlers bound to one :class:`SimulatorState`."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def gemini(self, request: Request) -> Answer:
        model, _, action = request.path_params["model_call"].partition(":")
        if action != "generateContent":
            return _error("gemini", 404, f"Method {action!r} is not supported by the simulator.")
        return await self._serve(request, "gemini", model)

    async def openai(self, request: Request) -> Answer:
        return await self._serve(request, "openai", None)

    async def _serve(self, request: Request, protocol: str, model: str | None) -> Answer:
        state = self.state
        config = state.config
        key = request_key(request.headers, request.query_params)
        if not key or (config.valid_keys is not None and key not in config.valid_keys):
            message = "API key not valid. Please pass a valid API key." if key else "Missing API key."
            return _error(protocol, 401, message, model=model or "")
        raw_body = await request.body()
        try:
            body = json.loads(raw_body)
            call = parse_gemini(model or "", body) if protocol == "gemini" else parse_openai(body)
            directive = parse_directive(call.prompt)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(protocol, 400, "Invalid JSON payload received.")
        except (BadRequest, DirectiveError) as exc:
            return _error(protocol, 400, str(exc))
        try:
            sizing = size_output(call)
        except BadRequest as exc:
            state.stats.call(protocol, call.model, call.prompt, None)
            return _error(protocol, 400, str(exc), model=call.model)
        chosen = state.faults.choose(directive, key_id(key), call.prompt, protocol)
        state.stats.call(protocol, call.model, call.prompt, chosen.name, call_details(call))
        delay_s = config.hang_s if chosen.name == "hang" else chosen.latency_s
        if delay_s is None:
            delay_s = config.latency_s
        if not await wait_unless_gone(request, delay_s, state.stopping):
            return Response(status_code=499)
        return await self._answer(request, call, sizing, directive, chosen.name, chosen.retry_after_s)

    async def _answer(
        self,
        request: Request,
        call: ParsedCall,
        sizing: Sizing,
        directive: Directive,
        fault: str | None,
        retry_after_s: float,
    ) -> Answer:
        protocol = call.protocol
        status = http_status(fault or "")
        if status is not None:
            retry = retry_after_s if status in _RETRY_STATUSES else None
            return _error(protocol, status, model=call.model, retry_after_s=retry)
        if fault == "quota_zero":
            return _quota_zero(protocol, call.model, retry_after_s)
        if fault == "hang":
            return _error(protocol, 504, "The simulator hung for its whole hang_s and gave up.")
        if fault == "not_json":
            return ChunkedResponse([NOT_JSON_PAGE], media_type="text/html; charset=utf-8")
        content_fault = None if fault in ("reset_mid_body", "truncated_json") else fault
        response_id = uuid.uuid4().hex[:22]
        outcome = await build_outcome(
            call, sizing, content_fault, self.state.config, self.state.images, response_id
        )
        if protocol == "gemini":
            chunks = gemini_shapes.answer_chunks(outcome, snake_case=directive.snake_case)
        else:
            style = directive.style or self.state.config.default_openai_style
            if style not in OPENAI_STYLES:
                return _error(protocol, 400, f"unknown simulator style {style!r}")
            file_url = None
            if style == "url" and outcome.image is not None:
                file_id = self.state.files.add(outcome.image, outcome.declared_mime)
                file_url = f"{str(request.base_url).rstrip('/')}/files/{file_id}.{outcome.image.ext}"
            chunks = openai_shapes.answer_chunks(outcome, style, int(time.time()), file_url)
        mode = {"reset_mid_body": "drop", "truncated_json": "truncate"}.get(fault or "", "full")
        return ChunkedResponse(chunks, mode=mode)  # type: ignore[arg-type]

    async def file(self, request: Request) -> Answer:
        file_id = request.path_params["name"].split(".", 1)[0]
        found = self.state.files.get(file_id)
        if found is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        data, mime = found
        return ChunkedResponse([data], media_type=mime)

    # --- control API -----------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        snapshot = self.state.stats.snapshot()
        snapshot["cache"] = self.state.images.stats()
        snapshot["queued_faults"] = self.state.faults.queued()
        return JSONResponse(snapshot)

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"ok": True})

    async def faults(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"faults": self.state.faults.queued()})
        if request.method == "DELETE":
            self.state.faults.clear()
            return JSONResponse({"ok": True})
        try:
            spec = await request.json()
            queued = self.state.faults.add(queued_fault_from(spec))
        except (ValueError, TypeError, KeyError, DirectiveError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(queued.as_dict())

    async def config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.state.update_config(await request.json())
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        config = self.state.config
        return JSONResponse(
            {
                "latency_s": config.latency_s,
                "image_format": config.image_format,
                "realistic": config.realistic,
                "default_openai_style": config.default_openai_style,
                "palette_size": config.palette_size,
                "hang_s": config.hang_s,
                "restricted_keys": config.valid_keys is not None,
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


def queued_fault_from(spec: Any) -> QueuedFault:
    """Build a queued fault from the control API's JSON (``times`` null = until reset)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("fault"), str):
        raise ValueError('expected {"fault": NAME, "times"?: N, "match"?: TEXT, ...}')
    times = spec.get("times", 1)
    return QueuedFault(
        fault=spec["fault"],
        times=None if times is None else int(times),
        match=spec.get("match"),
        retry_after_s=None if spec.get("retry_after") is None else float(spec["retry_after"]),
        latency_s=None if spec.get("latency") is None else float(spec["latency"]),
        protocol=spec.get("protocol"),
    )


def create_app(config: SimulatorConfig | None = None, state: SimulatorState | None = None) -> Starlette:
    """The simulator as an ASGI app. Pass ``state`` to keep a handle on counters and faults."""
    state = state or SimulatorState.create(config or SimulatorConfig())
    sim = Simulator(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        state.stopping = asyncio.Event()
        yield
        state.stopping.set()

    routes = [
        Route("/v1beta/models/{model_call}", sim.gemini, methods=["POST"]),
        Route("/v1/models/{model_call}", sim.gemini, methods=["POST"]),
        Route("/v1/chat/completions", sim.openai, methods=["POST"]),
        Route("/files/{name}", sim.file, methods=["GET"]),
        Route("/_sim/stats", sim.stats, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
        Route("/_sim/faults", sim.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/config", sim.config, methods=["GET", "POST"]),
        Route("/_sim/health", sim.health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(CountingMiddleware, state=state)]
    )
    app.state.simulator = state
    return app


def call_details(call: ParsedCall) -> dict[str, Any]:
    """What a test may want to verify about a request it made: each reference's declared mime,
    real format and size, and the image options, exactly as they reached the upstream."""
    return {
        "aspect_ratio": call.aspect_ratio,
        "image_size": call.image_size,
        "references": [
            {
                "mime": ref.mime,
                "format": ref.image_format,
                "bytes": ref.size_bytes,
                "pixels": list(ref.pixels) if ref.pixels else None,
            }
            for ref in call.references
        ],
    }
