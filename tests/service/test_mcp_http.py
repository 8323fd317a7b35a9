"""``/mcp`` inside the service: streamable HTTP with the official MCP client, a service token
required like every other door, remote rules for references, callers kept apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp_types import ImageContent

from .helpers import png_data_uri, upstream_requests


@asynccontextmanager
async def mcp_session(base_url: str, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(f"{base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def test_mcp_needs_a_service_token(service, sim):
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    with httpx.Client(base_url=service.base_url, trust_env=False) as http:
        anonymous = http.post("/mcp", json=initialize)
        own_key_only = http.post("/mcp", json=initialize, headers={"Authorization": "Bearer sk-upstream-1"})
        revoked = http.post("/mcp", json=initialize, headers={"Authorization": "Bearer bl_not-a-real-token"})
    for response in (anonymous, own_key_only, revoked):
        assert response.status_code == 401
        assert response.json()["error"]["kind"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert sim.stats()["requests_total"] == 0


async def test_mcp_over_http_generates_with_the_callers_key_and_keeps_callers_apart(service, sim):
    upstream_key = "upstream-key-for-the-mcp-http-test"
    token = service.add_caller(upstream_key=upstream_key)
    async with mcp_session(service.base_url, token) as session:
        assert {tool.name for tool in (await session.list_tools()).tools} == {"generate_image", "get_task"}
        arguments = {"prompt": "an http banana", "aspect_ratio": "1:1", "references": [png_data_uri()]}
        result = await session.call_tool("generate_image", arguments)
        assert result.is_error is False
        answer = result.structured_content
        assert answer["status"] == "done" and answer["url"].startswith(f"{service.base_url}/files/")
        assert len([block for block in result.content if isinstance(block, ImageContent)]) == 1
        again = await session.call_tool("get_task", {"task_id": answer["task_id"]})
        assert again.structured_content == answer
        assert len([block for block in again.content if isinstance(block, ImageContent)]) == 1

        # a remote caller never reads this server's files
        local = await session.call_tool("generate_image", {"prompt": "x", "references": ["/etc/hostname"]})
        assert local.is_error is True and local.structured_content["error_kind"] == "reference_error"
    assert upstream_requests(sim, upstream_key) == 1

    with service.client(token) as http:  # the same task over the plugin door answers the same
        assert http.get(f"/v1/tasks/{answer['task_id']}").json() == answer

    other = service.add_caller()
    async with mcp_session(service.base_url, other) as session:
        hidden = await session.call_tool("get_task", {"task_id": answer["task_id"]})
    assert hidden.is_error is True and hidden.structured_content["error_kind"] == "not_found"
