"""The plugin document (``GET /plugin/openapi.json``) against Coze Studio's and Dify's own import
rules, reproduced in Python from their source, over the served document.

Coze Studio (coze-dev/coze-studio @ 4f786d6a9, kin-openapi v0.118.0):
* ``backend/crossdomain/plugin/model/openapi.go``: ``Openapi3T.Validate`` (info title and
  description, exactly one server with a host, at most 512 characters), ``Openapi3Operation.Validate``
  (operationId, summary, ``validateOpenapi3RequestBody``, ``validateOpenapi3Parameters``,
  ``validateOpenapi3Responses``: only ``200`` or ``200`` + ``default``, one ``application/json``
  object schema) and ``ToEinoSchemaParameterInfo`` (body property types; arrays need ``items``);
* ``backend/domain/plugin/internal/openapi/convert_protocol.go`` and
  ``application/plugin/registration.go``: the document goes through ``yaml.Marshal`` and back,
  which kin-openapi 0.118 cannot do for ``additionalProperties``; each operation is stored alone
  (``dal/model/tool_draft.gen.go``), so a ``$ref`` is never resolved;
* frontend ``bot-plugin/export/src/component/file-import/plugin-info-confirm/{fields.tsx,utils.ts}``
  (plugin name ≤ 30 characters of ``[\\w\\s\\u4e00-\\u9fa5]``, description ≤ 600) and
  ``bot-plugin/tools/src/components/plugin_modal/base-info.tsx`` (tool name ``^[a-zA-Z0-9_]+$`` ≤ 30,
  tool description ≤ 600); the import dialog fetches the URL from the browser (``utils.ts``
  ``customService``), hence CORS.

Dify (langgenius/dify ``api/core/tools/utils/parser.py``, ``ApiBasedToolSchemaParser``, the
December 2025 version): every operation becomes a tool named by ``operationId`` at
``servers[0].url + path`` (joined as strings); the model reads ``description`` (else ``summary``);
parameter types map integer/number → number, boolean, string, array, ``format: binary`` → file, and
anything else falls back to string; body properties come from the one JSON schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator

from bananaline.config import Settings
from bananaline.service.openapi import to_openapi_30
from bananaline.service.routers.plugin import wait_for

from .conftest import RunningService, service_settings
from .helpers import poll_task

PLUGIN_DOC = "/plugin/openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
COZE_BODY_MEDIA_TYPES = (
    "application/json",
    "application/problem+json",
    "application/x-www-form-urlencoded",
    "application/x-yaml",
    "application/yaml",
)
COZE_BODY_TYPES = {"string", "integer", "number", "boolean", "object", "array"}


# ---- Coze Studio's rules ---------------------------------------------------------------------------


def coze_problems(doc: dict[str, Any]) -> list[str]:
    """Every rule of Coze Studio's import path that Python can check, as messages like Coze's."""
    problems: list[str] = []
    info = doc.get("info") or {}
    title, description = info.get("title") or "", info.get("description") or ""
    if not title:
        problems.append("the title of info is required")
    if not description:
        problems.append("the description of info is required")
    if len(title) > 30 or not re.fullmatch(r"[\w\s\u4e00-\u9fa5]+", title):
        problems.append(f"plugin name {title!r}: at most 30 letters, digits, spaces or CJK")
    if len(description) > 600:
        problems.append(f"plugin description is {len(description)} characters, at most 600")
    servers = doc.get("servers") or []
    if len(servers) != 1:
        problems.append("server is required and only one server is allowed")
    else:
        url = servers[0].get("url", "")
        if not urlsplit(url).netloc:
            problems.append(f"invalid server url '{url}'")
        if len(url) > 512:
            problems.append(f"server url '{url}' is too long")
    if "additionalProperties" in json.dumps(doc):
        problems.append("additionalProperties does not survive the YAML round trip (extra sibling fields)")
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                problems += [f"{method.upper()} {path}: {p}" for p in _coze_operation(item[method])]
    return problems


def _coze_operation(op: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    operation_id, summary = op.get("operationId") or "", op.get("summary") or ""
    if not operation_id:
        problems.append("operationID is required")
    elif len(operation_id) > 30 or not re.fullmatch(r"[a-zA-Z0-9_]+", operation_id):
        problems.append(f"tool name {operation_id!r}: at most 30 of [a-zA-Z0-9_]")
    if not summary:
        problems.append("summary is required")
    elif len(summary) > 600:
        problems.append(f"tool description (summary) is {len(summary)} characters, at most 600")
    if "$ref" in json.dumps(op):
        problems.append("a stored tool keeps its $ref unresolved")
    body = op.get("requestBody")
    if body is not None:
        content = body.get("content") or {}
        if len(content) != 1:
            problems.append("request body only supports one media type")
        media = next((content[ct] for ct in COZE_BODY_MEDIA_TYPES if ct in content), None)
        if media is None:
            problems.append("invalid media type")
        elif (media.get("schema") or {}).get("type") != "object":
            problems.append("request body only supports 'object' type")
        else:
            for name, prop in media["schema"].get("properties", {}).items():
                problems += [f"body {name}: {p}" for p in _coze_body_property(prop)]
    for param in op.get("parameters") or []:
        schema = param.get("schema")
        if not schema:
            problems.append("parameter schema is required")
            continue
        if not param.get("in"):
            problems.append("parameter location is required")
        if param.get("in") == "body":
            problems.append(f"the location of parameter '{param['name']}' cannot be 'body'")
        if not schema.get("type"):
            problems.append(f"the type of parameter '{param['name']}' is required")
        if schema.get("type") == "object":
            problems.append(f"the type of parameter '{param['name']}' cannot be 'object'")
        if param.get("in") == "path" and schema.get("type") == "array":
            problems.append(f"the type of parameter '{param['name']}' cannot be 'array'")
    responses = op.get("responses") or {}
    if responses:
        others = set(responses) - {"200", "default"}
        if others or "200" not in responses:
            problems.append("response only supports '200' status")
        else:
            content = responses["200"].get("content") or {}
            if len(content) != 1 or "application/json" not in content:
                problems.append("response only supports 'application/json' media type")
            elif (content["application/json"].get("schema") or {}).get("type") != "object":
                problems.append("response body only supports 'object' type")
    return problems


def _coze_body_property(schema: dict[str, Any]) -> list[str]:
    if schema.get("x-global-disable") or schema.get("x-local-disable"):
        return []
    kind = schema.get("type")
    if kind not in COZE_BODY_TYPES:
        return [f"unsupported json type '{kind}'"]
    if kind == "array":
        items = schema.get("items")
        return ["array without items"] if not items else _coze_body_property(items)
    if kind == "object":
        return [p for prop in schema.get("properties", {}).values() for p in _coze_body_property(prop)]
    return []


# ---- Dify's parser ---------------------------------------------------------------------------------


def dify_tools(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``ApiBasedToolSchemaParser.parse_openapi_to_tool_bundle``, reduced to what a tool keeps."""
    if not doc["servers"]:
        raise ValueError("No server found in the openapi yaml.")
    server_url = doc["servers"][0]["url"]
    tools = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            parameters = [
                _dify_parameter(p["name"], p.get("schema", {}), p.get("description"), p.get("required"))
                for p in op.get("parameters", [])
            ]
            for media in op.get("requestBody", {}).get("content", {}).values():
                schema = media.get("schema", {})
                required = schema.get("required", [])
                for name, prop in schema.get("properties", {}).items():
                    description = prop.get("description", "")
                    parameters.append(_dify_parameter(name, prop, description, name in required))
            tools.append(
                {
                    "name": op.get("operationId") or f"{path}_{method}",
                    "url": server_url + path,
                    "method": method,
                    "llm_description": op.get("description") or op.get("summary"),
                    "parameters": parameters,
                }
            )
    return tools


def _dify_parameter(name: str, schema: dict[str, Any], description: str | None, required: Any) -> dict:
    kind = schema.get("type")
    if schema.get("format") == "binary":
        mapped = "file"
    else:
        mapped = {"integer": "number", "number": "number", "boolean": "boolean", "string": "string"}.get(
            kind, "array" if kind == "array" else None
        )
    default = schema.get("default")
    return {
        "name": name,
        "type": mapped,  # None: Dify falls back to string, the schema said nothing it understands
        "required": bool(required),
        "llm_description": description,
        "default": None if isinstance(default, list | dict) else default,
    }


def _bilingual(text: str | None) -> bool:
    text = text or ""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text) and bool(re.search(r"[A-Za-z]{3,}", text))


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema object in a document (anything with a schema keyword)."""
    if isinstance(node, dict):
        if {"type", "nullable", "anyOf", "oneOf", "allOf", "$ref", "properties"} & set(node):
            yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


# ---- tests -----------------------------------------------------------------------------------------


def test_the_plugin_document_passes_coze_studios_import_rules(service):
    with service.client() as http:
        plugin = http.get(PLUGIN_DOC).json()
        reference = http.get("/openapi.json").json()
    assert coze_problems(plugin) == []
    assert set(plugin["paths"]) == {"/v1/plugin/generate", "/v1/tasks/{task_id}"}
    assert "components" not in plugin
    # the rules are live: the full reference document breaks several of them
    assert any("response only supports '200' status" in problem for problem in coze_problems(reference))


def test_the_plugin_document_is_two_described_tools_in_dify(service):
    with service.client() as http:
        plugin = http.get(PLUGIN_DOC).json()
    tools = {tool["name"]: tool for tool in dify_tools(plugin)}
    assert set(tools) == {"generate_image", "get_task"}
    assert tools["generate_image"]["url"] == f"{service.base_url}/v1/plugin/generate"
    assert tools["get_task"]["url"] == f"{service.base_url}/v1/tasks/{{task_id}}"
    assert "get_task" in tools["generate_image"]["llm_description"]
    for tool in tools.values():
        assert _bilingual(tool["llm_description"]), tool["name"]
        for parameter in tool["parameters"]:
            assert parameter["type"] is not None, (tool["name"], parameter["name"])
            assert _bilingual(parameter["llm_description"]), (tool["name"], parameter["name"])
    generate = {p["name"]: p for p in tools["generate_image"]["parameters"]}
    assert set(generate) == {"cleantext", "fileurls", "aspect_ratio", "resolution", "model", "wait_s"}
    assert "apikey" not in generate  # the model must never be asked for a key
    assert generate["cleantext"]["required"] and generate["fileurls"]["type"] == "array"
    assert generate["wait_s"]["type"] == "number"
    assert [p["name"] for p in tools["get_task"]["parameters"] if p["required"]] == ["task_id"]


def test_both_documents_are_valid_openapi_30_and_declare_nullable_the_303_way(service):
    with service.client() as http:
        documents = [http.get(path).json() for path in (PLUGIN_DOC, "/openapi.json")]
    for document in documents:
        assert document["openapi"] == "3.0.3"
        assert list(OpenAPIV30SpecValidator(document).iter_errors()) == []
        for schema in _schemas(document):
            if "nullable" in schema:
                assert "type" in schema, schema


def test_to_openapi_30_declares_null_where_303_reads_it():
    components = {"components": {"schemas": {"Config": {"type": "object"}}}}
    converted = to_openapi_30(
        {
            **components,
            "a": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}], "description": "d"},
            "b": {"anyOf": [{"$ref": "#/components/schemas/Config"}, {"type": "null"}]},
            "c": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        }
    )
    assert converted["a"] == {"type": "string", "maxLength": 40, "nullable": True, "description": "d"}
    config = {"$ref": "#/components/schemas/Config"}
    assert converted["b"] == {"allOf": [config], "type": "object", "nullable": True}
    assert converted["c"] == {
        "anyOf": [{"type": "string", "nullable": True}, {"type": "integer", "nullable": True}]
    }


def test_both_documents_are_fetchable_cross_origin(service):
    origin = {"Origin": "https://www.coze.cn"}
    preflight = {**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-foo"}
    with service.client() as http:
        for path in (PLUGIN_DOC, "/openapi.json"):
            got = http.get(path, headers=origin)
            assert got.status_code == 200 and got.headers["access-control-allow-origin"] == "*", path
            options = http.options(path, headers=preflight)
            assert options.status_code in (200, 204), path
            assert options.headers["access-control-allow-origin"] == "*"
            assert "GET" in options.headers["access-control-allow-methods"]
        # nothing else is opened to other origins
        assert "access-control-allow-origin" not in http.get("/healthz", headers=origin).headers


def test_the_server_is_absolute_and_the_document_stable_across_starts(service, simulator, tmp_path_factory):
    with service.client() as http:
        derived = http.get(PLUGIN_DOC).json()["servers"]
    assert derived == [{"url": service.base_url, "description": "bananaline"}]
    bodies = []
    for _ in range(2):
        settings = service_settings(
            tmp_path_factory.mktemp("plugin-doc"),
            simulator.base_url,
            public_base_url="https://img.example.com/banana/",
        )
        running = RunningService(settings).start()
        try:
            with running.client() as http:
                bodies.append(http.get(PLUGIN_DOC).content)
        finally:
            running.stop()
    assert bodies[0] == bodies[1]
    servers = json.loads(bodies[0])["servers"]
    assert servers == [{"url": "https://img.example.com/banana", "description": "bananaline"}]


def test_wait_s_query_sets_the_default_dify_sends(service):
    with service.client() as http:
        for_dify = http.get(PLUGIN_DOC, params={"wait_s": 50}).json()
        plain = http.get(PLUGIN_DOC).json()  # the query changed nothing for later readers
        assert http.get(PLUGIN_DOC, params={"wait_s": -1}).status_code == 422

    def wait_property(doc: dict) -> dict:
        body = doc["paths"]["/v1/plugin/generate"]["post"]["requestBody"]
        return body["content"]["application/json"]["schema"]["properties"]["wait_s"]

    assert "default" not in wait_property(plain)
    assert wait_property(for_dify)["default"] == 50
    generate = next(tool for tool in dify_tools(for_dify) if tool["name"] == "generate_image")
    assert {p["name"]: p["default"] for p in generate["parameters"]}["wait_s"] == 50


def test_wait_s_empty_or_zero_is_the_limit_and_more_is_capped():
    state = SimpleNamespace(settings=Settings(plugin_wait_s=30))
    asked = [None, 0, 0.0, -1, 0.2, 12.5, 30, 31, 1000]
    assert [wait_for(state, wait_s) for wait_s in asked] == [30, 30, 30, 30, 0.2, 12.5, 30, 30, 30]


@pytest.mark.parametrize("asked_s", [0.2, 100])
def test_wait_s_is_bounded_and_running_says_what_to_do_next(short_wait_service, sim, asked_s):
    """``short_wait_service`` waits at most 0.5 s: asking 100 s is capped."""
    token = short_wait_service.add_caller()
    with short_wait_service.client(token) as http:
        response = http.post(
            "/v1/plugin/generate",
            json={"cleantext": f"slow banana {asked_s} [sim latency=1.2]", "wait_s": asked_s},
        )
        assert response.status_code == 200 and response.elapsed.total_seconds() < 1.1
        body = response.json()
        assert body["status"] == "running"
        assert body["analysis"].startswith("图片生成中") and "get_task" in body["analysis"]
        assert body["task_id"].startswith("task_") and body["url"] == ""
        assert poll_task(http, body["task_id"])["status"] == "done"
