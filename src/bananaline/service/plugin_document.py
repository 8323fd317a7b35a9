"""The plugin document: ``GET /plugin/openapi.json``, the two plugin tools as Coze Studio and Dify
import them, unedited. ``/openapi.json`` stays the full reference.

What the importers need, and why (their source files named in ``tests/service/test_plugin_document.py``):

* only ``generate_image`` and ``get_task``: Dify turns every operation into an agent tool, and
  Coze validates every operation (one it refuses sinks the whole import);
* responses ``200`` and ``default`` only, the same inline object schema in both (Coze accepts no
  other status; the 4xx meanings are told in the ``default`` text);
* every schema inline, no ``$ref``, no ``components``: Coze stores each tool alone and never
  resolves a reference; no ``additionalProperties`` anywhere: Coze's YAML round trip breaks it;
* exactly one absolute server: ``--public-base-url``, else the base this request reached us at as
  :func:`~bananaline.service.deps.files_base_url` decides it (trusted proxies only);
* the tool guidance in ``summary`` (what Coze shows the model) and ``description`` (what Dify
  shows), within Coze's 600 characters; every parameter described in Chinese and English;
* no ``apikey`` parameter: an agent would otherwise ask users to paste keys into the chat. The
  endpoint still accepts it from callers who know it.

``?wait_s=50`` sets the default of the ``wait_s`` parameter in the document, so a platform that
sends defaults (Dify) answers before its own read timeout without anyone editing the tool.

The document holds no secrets; :class:`PublicDocumentsCORS` lets a browser fetch it (Coze Studio's
import dialog fetches the URL from the page) and answers the preflight.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import files_base_url

router = APIRouter(include_in_schema=False)

PLUGIN_OPERATIONS = ("generate_image", "get_task")
PLUGIN_DOCUMENT_PATH = "/plugin/openapi.json"
PUBLIC_DOCUMENTS = frozenset({"/openapi.json", PLUGIN_DOCUMENT_PATH})
#: Body fields the document leaves out: the model must never fill in a key.
HIDDEN_FIELDS = ("apikey",)

TITLE = "bananaline"
DESCRIPTION = (
    "bananaline 图片生成插件（Nano Banana 模型）：generate_image 文生图或按参考图改图，返回图片链接；"
    "生成较久时返回 task_id，用 get_task 取结果。"
    "Image generation plugin (Nano Banana models): generate_image draws or edits an image and returns "
    "its URL; when it takes longer it returns a task_id to read with get_task."
)
DEFAULT_RESPONSE = (
    "其他状态码，同样的结构：401 未认证、402 预算用尽、404 任务不存在、413 请求过大、422 参数无效、"
    "429 调用过于频繁；error 说明原因，error_kind 为稳定的错误类型。"
    "Any other status, same shape: 401 no credentials, 402 budget exhausted, 404 unknown task, "
    "413 body too large, 422 invalid input, 429 rate limited; error says why, error_kind is stable."
)
OK_RESPONSE = (
    "status=done 成功（url 为图片）、failed 失败（error 说明原因）、running 仍在生成（用 get_task 查询）。"
    "status=done (url is the image), failed (error says why) or running (call get_task)."
)


def plugin_document(app: FastAPI, server_url: str, *, wait_s_default: float | None = None) -> dict[str, Any]:
    """The document for ``server_url``; the same inputs give the same document, byte for byte."""
    reference = app.openapi()  # the full 3.0.3 document (see .openapi): one source for both
    schemas: dict[str, Any] = reference.get("components", {}).get("schemas", {})
    paths: dict[str, Any] = {}
    for path, item in reference["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and operation.get("operationId") in PLUGIN_OPERATIONS:
                paths.setdefault(path, {})[method] = _operation(operation, schemas, wait_s_default)
    return {
        "openapi": "3.0.3",
        "info": {"title": TITLE, "description": DESCRIPTION, "version": app.version},
        "servers": [{"url": server_url.rstrip("/"), "description": "bananaline"}],
        "paths": paths,
    }


def _operation(operation: dict[str, Any], schemas: dict[str, Any], wait_s: float | None) -> dict[str, Any]:
    answer_schema = _inline(operation["responses"]["200"]["content"]["application/json"]["schema"], schemas)
    plain: dict[str, Any] = {
        "operationId": operation["operationId"],
        "summary": operation["summary"],
        "description": operation.get("description") or operation["summary"],
    }
    if operation.get("parameters"):
        plain["parameters"] = _inline(operation["parameters"], schemas)
    body = operation.get("requestBody")
    if body is not None:
        body_schema = _inline(body["content"]["application/json"]["schema"], schemas)
        properties = body_schema.get("properties", {})
        for name in HIDDEN_FIELDS:
            properties.pop(name, None)
        if "required" in body_schema:
            body_schema["required"] = [name for name in body_schema["required"] if name in properties]
        if wait_s is not None and "wait_s" in properties:
            properties["wait_s"]["default"] = int(wait_s) if float(wait_s).is_integer() else wait_s
        plain["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    plain["responses"] = {
        "200": {"description": OK_RESPONSE, "content": {"application/json": {"schema": answer_schema}}},
        "default": {
            "description": DEFAULT_RESPONSE,
            "content": {"application/json": {"schema": _inline(answer_schema, schemas)}},
        },
    }
    return plain


def _inline(node: Any, schemas: dict[str, Any], *, in_properties: bool = False) -> Any:
    """A copy with every ``$ref`` replaced by its schema, and without ``additionalProperties`` and
    schema titles (nothing a tool needs; Coze's YAML round trip breaks ``additionalProperties``)."""
    if isinstance(node, list):
        return [_inline(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    if in_properties:  # keys are field names here, never keywords
        return {name: _inline(value, schemas) for name, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = schemas[ref.rsplit("/", 1)[-1]]
        merged = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
        return _inline(merged, schemas)
    return {
        key: _inline(value, schemas, in_properties=key == "properties")
        for key, value in node.items()
        if key not in ("additionalProperties", "title")
    }


@router.get(PLUGIN_DOCUMENT_PATH)
async def plugin_openapi(
    request: Request,
    wait_s: float | None = Query(None, ge=0, le=3600, description="default of the wait_s parameter"),
) -> Response:
    """The plugin document (not listed in ``/openapi.json``)."""
    document = plugin_document(request.app, files_base_url(request), wait_s_default=wait_s)
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, media_type="application/json")


class PublicDocumentsCORS:
    """``Access-Control-Allow-Origin: *`` on the OpenAPI documents, and their preflight answered.

    Only these paths: they hold no secrets, and every other endpoint keeps the browser's
    same-origin protection.
    """

    def __init__(self, app: ASGIApp, paths: frozenset[str] = PUBLIC_DOCUMENTS) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            requested = _header(scope, b"access-control-request-headers")
            headers = [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                (b"access-control-allow-headers", requested or b"*"),
                (b"access-control-max-age", b"600"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"access-control-allow-origin"
                ]
                message = {**message, "headers": [*headers, (b"access-control-allow-origin", b"*")]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "")).rstrip("/")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None
