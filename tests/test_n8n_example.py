"""The n8n example workflow: it parses, is wired, and names only endpoints, fields and statuses
that the service has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bananaline.config import Settings
from bananaline.service.app import create_app
from bananaline.service.routers.plugin import PluginRequest, PluginResponse

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "n8n" / "bananaline-generate-image.json"
_EXPRESSION = re.compile(r"\{\{.*?\}\}")


def _routes(tmp_path: Path) -> dict[str, set[str]]:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'n8n.db'}", store_url=f"file://{tmp_path / 'images'}")
    paths = create_app(settings).openapi()["paths"]
    return {path: {method.upper() for method in item} for path, item in paths.items()}


def _matches(template: str, path: str) -> bool:
    pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
    return re.match(pattern, path) is not None


def test_the_workflow_parses_and_is_wired():
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    names = [node["name"] for node in workflow["nodes"]]
    assert len(names) == len(set(names))
    assert len({node["id"] for node in workflow["nodes"]}) == len(names)
    for source, outputs in workflow["connections"].items():
        assert source in names
        for branch in outputs["main"]:
            for link in branch:
                assert link["node"] in names and link["type"] == "main"
    for node in workflow["nodes"]:
        assert node["type"].startswith("n8n-nodes-base.") and isinstance(node["typeVersion"], int | float)


def test_the_workflow_names_only_endpoints_fields_and_statuses_that_exist(tmp_path):
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    routes = _routes(tmp_path)
    called = []
    for node in workflow["nodes"]:
        if node["type"] != "n8n-nodes-base.httpRequest":
            continue
        parameters = node["parameters"]
        url = parameters["url"].removeprefix("=")
        base, _, rest = url.partition("}}")  # "{{ …base_url }}" then the path
        assert "base_url" in base, url
        path = _EXPRESSION.sub("x", rest)
        method = parameters.get("method", "GET")
        matching = [template for template in routes if _matches(template, path)]
        assert matching and method in routes[matching[0]], (method, path)
        called.append((method, matching[0]))
        body = parameters.get("jsonBody")
        if body:
            fields = set(re.findall(r"(\w+):", body.split("JSON.stringify(", 1)[1]))
            assert fields <= set(PluginRequest.model_fields), fields - set(PluginRequest.model_fields)
    assert sorted(called) == [("GET", "/v1/tasks/{task_id}"), ("POST", "/v1/plugin/generate")]

    statuses = set(PluginResponse.model_fields["status"].annotation.__args__)
    answer_fields = set(PluginResponse.model_fields)
    text = json.dumps(workflow)
    for condition in re.findall(r'"rightValue": "(\w+)"', text):
        assert condition in statuses, condition
    for field in re.findall(r"\$json\.(\w+)", text):
        assert field in answer_fields or field in {"base_url", "prompt", "aspect_ratio", "resolution"}, field
