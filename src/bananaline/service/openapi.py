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


def to_openapi_30(node: Any, components: dict[str, Any] | None = None) -> Any:
    """Rewrite a JSON-Schema 2020-12 / OpenAPI 3.1 fragment into OpenAPI 3.0.3.

    Nullable is declared the 3.0.3 way: ``nullable`` only ever next to a ``type`` (under the
    3.0.3 clarification it means nothing without one). ``anyOf: [X, null]`` becomes ``X`` with
    ``nullable: true``; a nullable reference becomes ``allOf: [ref]`` with the referenced
    schema's ``type``; several non-null options each become nullable. The null option is found
    before the children are rewritten, which is what the previous version got wrong.
    """
    if components is None and isinstance(node, dict):
        schemas = node.get("components", {}).get("schemas", {})
        components = schemas if isinstance(schemas, dict) else {}
    return _to_30(node, components or {})


def _is_null(option: Any) -> bool:
    return isinstance(option, dict) and option.get("type") == "null"


def _referenced_type(ref: str, components: dict[str, Any]) -> str:
    target = components.get(ref.rsplit("/", 1)[-1], {}) if ref.startswith("#/components/schemas/") else {}
    kind = target.get("type") if isinstance(target, dict) else None
    return kind if isinstance(kind, str) else "object"


def _nullable(option: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """``option`` that also accepts null, declared with a sibling ``type``."""
    if "$ref" in option:
        return {"allOf": [option], "type": _referenced_type(option["$ref"], components), "nullable": True}
    if "type" not in option:
        return option  # no type: it already accepts null
    return {**option, "nullable": True}


def _to_30(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_to_30(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for combinator in ("anyOf", "oneOf"):
        options = node.get(combinator)
        if not (isinstance(options, list) and any(_is_null(option) for option in options)):
            continue
        rest = [option for option in options if not _is_null(option)]
        del node[combinator]
        if len(rest) == 1:
            node = {**_nullable(rest[0], components), **node}
        elif rest:
            node[combinator] = [_nullable(option, components) for option in rest]
        else:
            node.update({"type": "string", "nullable": True, "enum": [None]})
    node = {key: _to_30(value, components) for key, value in node.items()}
    if node.get("type") == "null":
        node.update({"type": "string", "nullable": True, "enum": [None]})
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
