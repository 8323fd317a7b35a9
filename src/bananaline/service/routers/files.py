"""Files: the app serves a ``file://`` store under ``/files/{key}`` and lists a caller's own images.

``/files/{key}`` is public on purpose: workflow platforms show the returned URL to people and
cannot send a token. Keys are content-addressed (date + SHA-256 of the image), so a URL cannot
be guessed without the image. Only image files are served (not the metadata JSON beside them, which
holds prompts), and a key can never leave the store's root (``..``, absolute paths, symlinks out).
``GET /v1/files`` lists only the calling caller's images.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from ..deps import CallerDep, StateDep
from ..http_errors import not_found

router = APIRouter(tags=["files"])

_SERVED_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


def safe_path(root: Path, key: str) -> Path | None:
    """The file for ``key`` inside ``root``, or ``None`` if the key is odd or escapes the root."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/") or len(key) > 512:
        return None
    parts = key.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    if parts[0] == "index":
        return None
    base = root.resolve()
    candidate = (base / key).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in _SERVED_TYPES:
        return None
    return candidate


@router.get(
    "/files/{key:path}",
    operation_id="get_file",
    summary="下载图片 / Download a stored image",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        404: {"description": "not found"},
    },
)
async def get_file(key: str, state: StateDep) -> FileResponse:
    root = state.store.local_root if state.store is not None else None
    path = safe_path(root, key) if root is not None else None
    if path is None:
        raise not_found("file")
    return FileResponse(
        path,
        media_type=_SERVED_TYPES[path.suffix.lower()],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=31536000, immutable"},
    )


class FileItem(BaseModel):
    url: str | None
    thumbnail_url: str | None
    mime: str
    width: int
    height: int
    bytes: int
    sha256: str
    source: str
    task_id: str | None
    created_at: float


class FileList(BaseModel):
    files: list[FileItem]
    limit: int
    offset: int


@router.get(
    "/v1/files",
    operation_id="list_files",
    summary="我的图片 / List my images",
    response_model=FileList,
    responses={401: {"description": "service token required"}},
)
async def list_files(
    state: StateDep,
    caller: CallerDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    files = await asyncio.to_thread(state.usage.files, caller.id, limit=limit, offset=offset)
    return {"files": files, "limit": limit, "offset": offset}
