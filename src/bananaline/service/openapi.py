"""An OpenAPI 3.0 document that Coze and Dify import as a custom plugin / tool.

FastAPI writes OpenAPI 3.1 with pydantic's JSON-Schema idioms; the workflow platforms' importers
expect 3.0. This rewrites the few 3.1-only forms (``anyOf`` with ``null`` becomes ``nullable``,
``const`` becomes a one-value ``enum``, list ``examples`` become one ``example``, numeric
``exclusiveMinimum``/``exclusiveMaximum`` become the boolean form) and sets ``servers`` to the
configured public base URL, so an imported tool calls the right host behind a proxy.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..config import Settings


def to_openapi_30(node: Any) -> Any:
    if isinstance(node, list):
        return [to_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: to_openapi_30(value) for key, value in node.items()}
    for combinator in ("anyOf", "oneOf"):
        options = node.get(combinator)
        if isinstance(options, list) and any(
            isinstance(o, dict) and o.get("type") == "null" for o in options
        ):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            del node[combinator]
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            elif len(rest) == 1:
                node["allOf"] = rest
            elif rest:
                node[combinator] = rest
            node["nullable"] = True
    if node.get("type") == "null":
        node.pop("type")
        node["nullable"] = True
    if "const" in node and not isinstance(node.get("const"), dict):
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("examples"), list) and "type" in node:
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = value
            node[bound] = True
    if node.get("contentMediaType") == "application/octet-stream" and node.get("type") == "string":
        node.pop("contentMediaType")
        node["format"] = "binary"
    return node


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        server = settings.public_base_url.rstrip("/") if settings.public_base_url else (app.root_path or "/")
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            servers=[{"url": server, "description": "bananaline"}],
        )
        schema = to_openapi_30(schema)
        schema["openapi"] = "3.0.3"
        schema.setdefault("components", {})["securitySchemes"] = {
            "serviceToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "服务令牌 bl_…（bananaline callers add 生成）。"
                "Service token from `bananaline callers add`.",
            }
        }
        schema["security"] = [{"serviceToken": []}, {}]
        app.openapi_schema = schema
        return dict(schema)

    app.openapi = build  # type: ignore[method-assign]
