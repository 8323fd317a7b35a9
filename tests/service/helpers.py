"""Small helpers shared by the service tests."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
from PIL import Image

from bananaline.simulator import key_id


def png_data_uri(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 180, 20)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def poll_task(http: httpx.Client, task_id: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """GET the task until it is no longer running (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, "task still running after the bound"
        time.sleep(0.1)


def upstream_requests(sim: Any, key: str) -> int:
    return int(sim.stats()["keys"].get(key_id(key), {}).get("requests", 0))
