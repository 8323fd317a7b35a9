"""The local spool: where an image goes when the store cannot take it, so that it is never lost.

One entry is one directory ``<spool_dir>/<sha256>/`` holding ``image.<ext>`` and ``record.json``
(mime, metadata, intended date, store, error). An entry is built in ``<spool_dir>/.incoming/``,
both files fsynced, and renamed into place with one ``os.rename`` of the directory: a reader sees
a complete entry or none. The same bytes spooled twice keep the first entry (content-addressed).
Removal renames the entry into ``.trash/`` first, so a crash never leaves a half-deleted entry
that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomicfile import fsync_path
from .layout import is_sha256

RECORD_NAME = "record.json"
_INCOMING = ".incoming"
_TRASH = ".trash"


@dataclass(frozen=True)
class SpoolEntry:
    sha256: str
    directory: Path
    image_path: Path
    record: dict[str, Any]

    def read_image(self) -> bytes:
        return self.image_path.read_bytes()


def _write_synced(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser().resolve()

    def put(self, sha256: str, extension: str, data: bytes, record: dict[str, Any]) -> Path:
        """Durably store one entry and return the image path. Blocking (run in a thread)."""
        if not is_sha256(sha256):
            raise ValueError("spool entries are named by sha256")
        final = self.directory / sha256
        image_name = f"image.{extension}"
        if (final / RECORD_NAME).exists():
            return final / image_name
        incoming = self.directory / _INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        staging = incoming / uuid.uuid4().hex
        staging.mkdir()
        try:
            _write_synced(staging / image_name, data)
            body = json.dumps({**record, "image": image_name}, ensure_ascii=False, default=str, indent=1)
            _write_synced(staging / RECORD_NAME, body.encode())
            fsync_path(staging)
            try:
                os.rename(staging, final)
            except OSError:
                if not (final / RECORD_NAME).exists():
                    raise
                # Another writer spooled the same bytes first: theirs is complete, keep it.
                shutil.rmtree(staging, ignore_errors=True)
                return final / image_name
            fsync_path(self.directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final / image_name

    def entries(self) -> list[SpoolEntry]:
        """Complete entries whose bytes still match their name; anything else is left untouched."""
        if not self.directory.is_dir():
            return []
        found: list[SpoolEntry] = []
        for directory in sorted(self.directory.iterdir()):
            if not is_sha256(directory.name) or not directory.is_dir():
                continue
            try:
                record = json.loads((directory / RECORD_NAME).read_text())
                image_path = directory / str(record["image"])
            except (OSError, ValueError, KeyError):
                continue
            if image_path.parent != directory or not image_path.is_file():
                continue
            found.append(SpoolEntry(directory.name, directory, image_path, record))
        return found

    def verify(self, entry: SpoolEntry) -> bytes | None:
        """The entry's bytes if their sha256 matches the entry name, else ``None``."""
        data = entry.read_image()
        return data if hashlib.sha256(data).hexdigest() == entry.sha256 else None

    def remove(self, entry: SpoolEntry) -> None:
        trash = self.directory / _TRASH
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{entry.sha256}-{uuid.uuid4().hex}"
        os.rename(entry.directory, target)
        with contextlib.suppress(OSError):
            fsync_path(self.directory)
        shutil.rmtree(target, ignore_errors=True)

    def leftovers(self) -> list[Path]:
        """Staging or trash debris (for tests and ``doctor`` style checks)."""
        found: list[Path] = []
        for name in (_INCOMING, _TRASH):
            folder = self.directory / name
            if folder.is_dir():
                found.extend(folder.iterdir())
        return found
