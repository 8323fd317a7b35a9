"""``bananaline mcp`` driven by the official MCP client over stdio, against the upstream simulator:
the tools, an image and its link, the task read back, and refusals as clear error results."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import CallToolResult, ImageContent, TextContent
from PIL import Image

from bananaline.connectors.mcp import INLINE_IMAGE_MAX_BYTES
from bananaline.simulator import key_id

OPERATOR_KEY = "operator-key-for-the-mcp-tests-1"


def _env(root: Path, sim: Any, **extra: str) -> dict[str, str]:
    return {
        "BANANALINE_BASE_URL": sim.base_url,
        "BANANALINE_API_KEY": OPERATOR_KEY,
        "BANANALINE_DB_URL": f"sqlite:///{root / 'mcp.db'}",
        "BANANALINE_STORE_URL": f"file://{root / 'images'}",
        "BANANALINE_SPOOL_DIR": str(root / "spool"),
        "BANANALINE_MAX_ATTEMPTS": "1",
        "BANANALINE_PLUGIN_WAIT_S": "30",
        "BANANALINE_MAKE_COMPRESSED": "false",
        **extra,
    }


@asynccontextmanager
async def mcp_session(root: Path, sim: Any, **extra: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "bananaline", "mcp"], env=_env(root, sim, **extra), cwd=root
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def _images(result: CallToolResult) -> list[ImageContent]:
    return [block for block in result.content if isinstance(block, ImageContent)]


def _size(block: ImageContent) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(block.data))) as image:
        return image.size


def _upstream_requests(sim: Any) -> int:
    return int(sim.stats()["keys"].get(key_id(OPERATOR_KEY), {}).get("requests", 0))


async def test_tools_image_link_task_and_running(tmp_path, sim):
    async with mcp_session(tmp_path, sim) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == {"generate_image", "get_task"}
        generate_schema = tools["generate_image"].input_schema
        assert generate_schema["required"] == ["prompt"]
        assert {"prompt", "references", "aspect_ratio", "size", "model"} <= set(generate_schema["properties"])
        assert tools["get_task"].input_schema["required"] == ["task_id"]

        result = await session.call_tool(
            "generate_image", {"prompt": "a banana on a marble desk", "aspect_ratio": "16:9", "size": "1K"}
        )
        assert result.is_error is False, _text(result)
        answer = result.structured_content
        assert answer is not None and answer["status"] == "done" and answer["error_kind"] == ""
        # the stored image's link: a file:// URL into the local store (no server serves /files here)
        assert answer["url"].startswith("file://") and answer["url"] in _text(result)
        stored = Path(url2pathname(urlsplit(answer["url"]).path))
        assert stored.is_file() and stored.is_relative_to(tmp_path / "images")
        with Image.open(stored) as original:
            assert original.size == (1376, 768)
        # the image itself, or (over 512 KiB, as here) a preview the model can look at
        [image] = _images(result)
        if len(stored.read_bytes()) <= INLINE_IMAGE_MAX_BYTES:
            assert base64.b64decode(image.data) == stored.read_bytes()
        else:
            assert image.mime_type in ("image/jpeg", "image/png")
            assert _size(image) == (1376, 768)  # already under the preview's long edge
            assert len(base64.b64decode(image.data)) < len(stored.read_bytes())

        again = await session.call_tool("get_task", {"task_id": answer["task_id"]})
        assert again.is_error is False
        assert again.structured_content == answer  # what HTTP get_task answers, too
        assert [block.data for block in _images(again)] == [image.data]

        # longer than the call may wait: running, with what to do next; get_task then has the image
        slow = {"prompt": "slow banana [sim latency=1.5]", "aspect_ratio": "1:1", "wait_s": 0.2}
        first = await session.call_tool("generate_image", slow)
        assert first.is_error is False
        running = first.structured_content
        assert running["status"] == "running" and _images(first) == []
        assert running["analysis"].startswith("图片生成中") and "get_task" in running["analysis"]
        for _ in range(100):
            polled = await session.call_tool("get_task", {"task_id": running["task_id"]})
            if polled.structured_content["status"] != "running":
                break
            await anyio.sleep(0.1)
        assert polled.structured_content["status"] == "done"
        assert len(_images(polled)) == 1
    assert _upstream_requests(sim) == 2


async def test_refusals_are_error_results_and_local_paths_are_references(tmp_path, sim):
    photo = tmp_path / "my photo.png"
    Image.new("RGB", (64, 48), (200, 180, 20)).save(photo)
    async with mcp_session(tmp_path, sim) as session:
        blocked = await session.call_tool("generate_image", {"prompt": "anything [sim fault=prompt_blocked]"})
        assert blocked.is_error is True
        assert blocked.structured_content is not None
        assert blocked.structured_content["error_kind"] == "prompt_blocked"
        assert "prompt_blocked" in _text(blocked) and "拦截" in _text(blocked)
        assert _images(blocked) == []

        invalid = await session.call_tool("generate_image", {"prompt": "x", "aspect_ratio": "7:3"})
        assert invalid.is_error is True and invalid.structured_content["error_kind"] == "invalid_input"
        assert "7:3" in _text(invalid)
        no_prompt = await session.call_tool("generate_image", {"aspect_ratio": "1:1"})
        assert no_prompt.is_error is True and no_prompt.structured_content["error_kind"] == "invalid_input"
        unknown = await session.call_tool("get_task", {"task_id": "task_doesnotexist"})
        assert unknown.is_error is True and unknown.structured_content["error_kind"] == "not_found"

        missing = await session.call_tool(
            "generate_image", {"prompt": "edit", "references": [str(tmp_path / "nope.png")]}
        )
        assert missing.is_error is True and missing.structured_content["error_kind"] == "reference_error"
        assert _upstream_requests(sim) == 1  # only the blocked prompt was sent

        # the server carries on; the local user may give paths and file:// URLs as references
        by_path = await session.call_tool("generate_image", {"prompt": "edit", "references": [str(photo)]})
        assert by_path.is_error is False and len(_images(by_path)) == 1, _text(by_path)
        by_uri = await session.call_tool("generate_image", {"prompt": "edit", "references": [photo.as_uri()]})
        assert by_uri.is_error is False, _text(by_uri)
    assert _upstream_requests(sim) == 3


async def test_public_base_url_gives_http_links(tmp_path, sim):
    public = {"BANANALINE_PUBLIC_BASE_URL": "https://img.example.com/banana"}
    async with mcp_session(tmp_path, sim, **public) as session:
        result = await session.call_tool("generate_image", {"prompt": "linked banana", "aspect_ratio": "1:1"})
    assert result.is_error is False
    assert result.structured_content["url"].startswith("https://img.example.com/banana/files/")
