"""The MCP door: tools ``generate_image`` and ``get_task`` over the Model Context Protocol, on the
official ``mcp`` SDK (its low-level server: the tools' schemas and answers are ours).

One set of tools, two transports, and the service's one admission path behind both
(:func:`~bananaline.service.routers.plugin.start_plugin_task`: ``GenerationService.admit`` then
``run`` inside a task, the same answer as the plugin node):

* ``bananaline mcp`` (stdio): a local single user, who is the operator. It runs the service's own
  lifespan without a socket (same database, store, client and task registry), calls use the
  configured upstream key (``BANANALINE_API_KEY``), references may be local paths or ``file://``
  URLs, and links to a local store are ``file://`` URLs unless ``public_base_url`` is set.
* ``/mcp`` inside ``bananaline serve`` (streamable HTTP, stateless, so any worker answers): every
  request needs a service token (``Authorization: Bearer bl_…``), exactly like the batches API;
  references must be http(s) URLs or data URIs.

A tool answer carries the image (as MCP image content; a preview when the original is large), the
plugin answer as text and as structured content (``url``, ``task_id``, ``status``, ``error_kind``…),
and ``isError`` when it failed, with the error kind and message. A refusal is an answer, never a
protocol error or a crash.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import mcp_types as types
from fastapi import FastAPI
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import ErrorKind, GenerationError
from ..imaging import reencode
from ..logs import get_logger
from ..service.auth import Principal
from ..service.deps import AppState, files_base_url, get_state, require_caller
from ..service.generation import build_request
from ..service.http_errors import ServiceError, render
from ..service.routers.plugin import (
    PluginResponse,
    find_task,
    start_plugin_task,
    wait_for,
)
from ..types import GeneratedImage, GenerationResult

log = get_logger("bananaline.mcp")

MCP_PATH = "/mcp"
SOURCE = "mcp"
#: Images up to this size go to the client as they are; larger ones as a preview (long edge
#: ``PREVIEW_LONG_EDGE_PX``, JPEG or PNG), which is what a model can look at anyway. The full image is
#: at the answer's URL. (The official client refuses an SSE event over 1 MiB by default.)
INLINE_IMAGE_MAX_BYTES = 512 * 1024
PREVIEW_LONG_EDGE_PX = 1568
_INLINE_MIMES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
_PRINCIPAL_SCOPE_KEY = "bananaline.mcp.principal"

INSTRUCTIONS = (
    "Image generation and editing with Google's Nano Banana models. Call generate_image with a "
    "prompt (and reference images to edit them); it returns the image and its URL. If the answer "
    "says status 'running', call get_task with its task_id until status is 'done' or 'failed'."
)


class GenerateArgs(BaseModel):
    """``generate_image``'s arguments; the same meaning as the plugin node's fields."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(
        min_length=1,
        max_length=20000,
        description="What to draw, or how to change the reference images. 提示词。",
    )
    references: list[str] = Field(
        default_factory=list,
        max_length=14,
        description="Reference images to edit or combine: http(s) URLs or data: URIs (and, for a local "
        "stdio server, file paths or file:// URLs). Empty = text-to-image. 参考图。",
    )
    aspect_ratio: str = Field(
        "", max_length=16, description="e.g. 1:1, 16:9, 9:16, 21:9; empty = the model's default. 宽高比。"
    )
    size: str = Field("", max_length=16, description="512, 1K, 2K or 4K (depends on the model); empty = 1K.")
    model: str = Field(
        "",
        max_length=200,
        description="e.g. gemini-3-pro-image-preview, gemini-2.5-flash-image; empty = the service default.",
    )
    wait_s: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Seconds to wait before answering status 'running' with a task_id; empty or 0 = "
        "the service's limit (plugin_wait_s), never more.",
    )


class TaskArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(min_length=1, max_length=200, description="The task_id generate_image returned.")


def _input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


TOOLS = [
    types.Tool(
        name="generate_image",
        title="Generate or edit an image",
        description="Generate an image from a prompt, or edit/combine reference images. Returns the image, "
        "its stored URL and a task_id. If status is 'running', call get_task with the task_id. "
        "On failure the answer is an error with a stable error_kind (e.g. prompt_blocked, "
        "rate_limited, invalid_input) and a message in English and Chinese.",
        input_schema=_input_schema(GenerateArgs),
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True),
    ),
    types.Tool(
        name="get_task",
        title="Get a generation task",
        description="The result of a generate_image call that answered status 'running': the same "
        "answer shape, with the image once status is 'done'. Ask again in about 10 s while it is running.",
        input_schema=_input_schema(TaskArgs),
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    ),
]


@dataclass(frozen=True)
class DoorCall:
    """Who is calling through which door: everything a tool needs besides its arguments."""

    state: AppState
    principal: Principal
    #: Base of ``/files/…`` links; ``None``: no server serves them, the store's own URLs are used.
    files_base: str | None
    #: stdio: the user is on this machine (paths allowed, ``file://`` links to a local store).
    local: bool


Door = Callable[[Any], Awaitable[DoorCall]]


def build_server(door: Door) -> Server[Any]:
    """The MCP server: list the two tools, call them through ``door``."""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        try:
            call = await door(ctx)
            if params.name == "generate_image":
                return await _generate(call, GenerateArgs.model_validate(arguments))
            if params.name == "get_task":
                return await _get_task(call, TaskArgs.model_validate(arguments))
            unknown = f"unknown tool {params.name!r}"
            refusal = PluginResponse.failed(ErrorKind.INVALID_INPUT.value, unknown, f"没有该工具：{unknown}")
            return _result(refusal)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.errors()[:5]
            )
            return _result(
                PluginResponse.failed(
                    ErrorKind.INVALID_INPUT.value, f"invalid arguments: {problems}", f"参数无效：{problems}"
                )
            )
        except (GenerationError, ServiceError) as error:
            return _result(PluginResponse.from_error(error))

    return Server(
        "bananaline",
        version=_version(),
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _generate(call: DoorCall, args: GenerateArgs) -> types.CallToolResult:
    state = call.state
    references = [_local_reference(text) for text in args.references] if call.local else args.references
    request = build_request(
        prompt=args.prompt,
        references=references,
        model=args.model.strip() or state.settings.model,
        aspect_ratio=args.aspect_ratio,
        image_size=args.size,
    )
    made: list[GeneratedImage] = []

    async def on_result(result: GenerationResult) -> None:
        made[:] = [image for image in result.images if image.url]

    answer = await start_plugin_task(
        state,
        call.principal,
        request,
        files_base=call.files_base,
        wait_s=wait_for(state, args.wait_s),
        source=SOURCE,
        remote=not call.local,
        on_result=on_result,
    )
    images = [(image.data, image.mime) for image in made] if answer.status == "done" else []
    return _result(answer, await _image_blocks(images, state.settings))


async def _get_task(call: DoorCall, args: TaskArgs) -> types.CallToolResult:
    record = await find_task(call.state, args.task_id, call.principal)
    answer = PluginResponse.from_task(record)
    images = await _stored_images(record.id, call) if answer.status == "done" else []
    return _result(answer, await _image_blocks(images, call.state.settings))


def _result(answer: PluginResponse, images: list[types.ImageContent] | None = None) -> types.CallToolResult:
    if answer.status == "done":
        headline = f"{answer.analysis}. Full-size image: {answer.url}"
    elif answer.status == "failed":
        headline = f"{answer.analysis} [{answer.error_kind}] {answer.error}"
    else:
        headline = answer.analysis
    text = headline + "\n" + json.dumps(answer.stored(), ensure_ascii=False)
    content: list[types.ContentBlock] = [*(images or []), types.TextContent(type="text", text=text)]
    return types.CallToolResult(
        content=content, structured_content=answer.stored(), is_error=answer.status == "failed"
    )


async def _image_blocks(images: list[tuple[bytes, str]], settings: Settings) -> list[types.ImageContent]:
    blocks = []
    for data, mime in images:
        if len(data) > INLINE_IMAGE_MAX_BYTES or mime not in _INLINE_MIMES:
            try:
                preview = await asyncio.to_thread(
                    reencode, data, long_edge_px=PREVIEW_LONG_EDGE_PX, max_pixels=settings.max_image_pixels
                )
            except Exception as exc:  # noqa: BLE001 - the link is still in the answer
                log.warning("mcp_preview_failed", error=type(exc).__name__)
                continue
            data, mime = preview.data, preview.mime
        encoded = base64.b64encode(data).decode("ascii")
        blocks.append(types.ImageContent(type="image", data=encoded, mime_type=mime))
    return blocks


async def _stored_images(task_id: str, call: DoorCall) -> list[tuple[bytes, str]]:
    """A finished task's images, read back from the store by the keys its usage recorded."""
    store = call.state.store
    if store is None:
        return []
    images = []
    for key, mime in await asyncio.to_thread(call.state.usage.task_files, task_id):
        try:
            images.append((await store.read(key), mime))
        except (FileNotFoundError, GenerationError, ValueError):
            continue  # still in the spool, or gone: the answer's links say the rest
    return images


def _local_reference(text: str) -> str:
    """A ``file://`` URL as the path it names; anything else unchanged (paths are read by the client)."""
    if text[:7].lower() == "file://":
        return url2pathname(urlsplit(text).path)
    return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bananaline")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


# ---- stdio: `bananaline mcp` --------------------------------------------------------------------------


async def serve_stdio(settings: Settings) -> None:
    """Serve the tools on stdin/stdout for a local MCP client, with the service's own state."""
    from ..service.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state: AppState = app.state.bananaline
        call = DoorCall(
            state=state,
            principal=Principal(caller=None, upstream_key=settings.api_key, own_key=False),
            # no server answers /files/ here: without a public base the store's own (file://) links
            files_base=settings.public_base_url.rstrip("/") if settings.public_base_url else None,
            local=True,
        )

        async def local_door(ctx: Any) -> DoorCall:
            return call

        server = build_server(local_door)
        log.info("mcp_stdio_started", store=repr(state.store))
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


# ---- streamable HTTP: /mcp inside `bananaline serve` -------------------------------------------------


async def _http_door(ctx: Any) -> DoorCall:
    request = getattr(ctx, "request", None)
    if not isinstance(request, Request):
        raise ServiceError(401, ErrorKind.UNAUTHORIZED, "this MCP transport carries no credentials")
    principal = request.scope.get(_PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        principal = await require_caller(request)
    return DoorCall(get_state(request), principal, files_base_url(request), local=False)


class _ServiceTokenGate:
    """Every ``/mcp`` request needs a service token, checked before the MCP session sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            scope[_PRINCIPAL_SCOPE_KEY] = await require_caller(request)
        except ServiceError as error:
            await render(request.url.path, error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mount_mcp(app: FastAPI, settings: Settings) -> None:
    """Serve the tools at ``/mcp`` (streamable HTTP) and run the MCP session manager with the app."""
    manager = StreamableHTTPSessionManager(
        app=build_server(_http_door),
        stateless=True,  # any worker answers any request: nothing to share between processes
        json_response=True,  # one JSON answer per call: no SSE event-size limits for the image
        max_request_body_size=settings.max_upload_bytes,
    )
    app.router.routes.append(
        Route(
            MCP_PATH,
            endpoint=_ServiceTokenGate(StreamableHTTPASGIApp(manager)),
            methods=["GET", "POST", "DELETE"],
            include_in_schema=False,
        )
    )
    service_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        async with service_lifespan(served) as value, manager.run():
            yield value

    app.router.lifespan_context = lifespan
