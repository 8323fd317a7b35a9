"""Filesystem primitives the fs backend needs beyond OpenDAL: durable and exclusive creation."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .backend import FS_TEMP_DIR


def create_exclusive(root: Path, key: str, body: bytes) -> bool:
    """Create ``root/key`` with ``body`` unless it exists, atomically and complete (fsync + link).

    OpenDAL's fs ``if_not_exists`` checks and then renames, which two processes can both pass;
    ``link()`` refuses an existing target, so exactly one writer wins.
    """
    target = root / key
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = root / FS_TEMP_DIR / f"pointer-{uuid.uuid4().hex}"
    with open(temp, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    finally:
        temp.unlink()
    return True
