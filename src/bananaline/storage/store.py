"""``ImageStore``: put paid-for images somewhere durable, and never lose one.

``put_image`` writes, in this order, each with retries (tenacity, ``store_upload_attempts``):

1. the image under its content-addressed key (skipped when that object already exists),
2. the derivatives (compressed JPEG, WebP thumbnail) that the settings ask for and that are missing,
3. the metadata JSON beside the image,
4. the index pointer ``index/<sha[:2]>/<sha>``, with ``if_not_exists`` where the backend has it.

The pointer is the commit mark: when it exists, the whole set exists. A later put of the same
bytes, on any day, finds the pointer and returns the existing key (``deduplicated=True``), repairing
any missing derivative on the way. Two processes racing on the same bytes across midnight both
write complete sets; the loser of the pointer write deletes its own copy and returns the winner's
key. Where the backend cannot write conditionally the race can leave a harmless duplicate, never
a loss.

If any step still fails after the retries, the bytes and metadata go to the local spool and the
result says ``stored_locally`` with the (redacted) error; ``flush_spool`` replays the same steps
later. Each object write is atomic: S3 and OSS PUTs are all-or-nothing, and the fs backend writes
to ``<root>/.tmp/`` and renames.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from opendal import exceptions as dal_errors
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..atomicfile import fsync_path
from ..config import Settings
from ..errors import ErrorKind, GenerationError, redact
from ..imaging import run_cpu
from ..types import MIME_EXTENSIONS
from . import layout
from .backend import StoreBackend, build_operator
from .derivatives import Derivatives, ImageHeader, make_derivatives, probe, wants_compressed, wants_thumbnail
from .fsatomic import create_exclusive
from .results import FlushReport, StoredImage
from .spool import Spool
from .urls import StoreLocation, parse_store_url, public_url, url_template

T = TypeVar("T")

_PERMANENT = (
    dal_errors.NotFound,
    dal_errors.ConditionNotMatch,
    dal_errors.AlreadyExists,
    dal_errors.Unsupported,
    dal_errors.IsADirectory,
    dal_errors.NotADirectory,
    dal_errors.IsSameFile,
    dal_errors.ConfigInvalid,
    dal_errors.PermissionDenied,
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, dal_errors.Error | OSError | TimeoutError)


def describe_error(exc: BaseException) -> str:
    """One redacted line: OpenDAL errors are multi-line and carry request context."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return redact(f"{type(exc).__name__}: {first_line}"[:400])


def _check_key(key: str) -> str:
    """Keys come from HTTP paths too: no absolute paths, no traversal, no empty segments."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise FileNotFoundError(key)
    if any(segment in {"", ".", ".."} for segment in key.split("/")):
        raise FileNotFoundError(key)
    return key


class _KeyedLocks:
    """One asyncio lock per sha256, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def run(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                return await work()
        finally:
            lock, users = self._locks[name]
            if users <= 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class ImageStore:
    """One storage interface over OpenDAL (fs, s3, oss, memory), configured by one URL."""

    def __init__(self, location: StoreLocation, operator: StoreBackend, settings: Settings) -> None:
        self.location = location
        self.settings = settings
        self._operator = operator
        self._conditional_writes = operator.conditional_writes
        self._presign_capable = operator.presign_capable
        self.local_root: Path | None = location.root if location.scheme == "fs" else None
        self.spool = Spool(settings.spool_dir)
        self._locks = _KeyedLocks()

    @classmethod
    def from_url(cls, url: str | None = None, *, settings: Settings) -> ImageStore:
        """The store a URL names (``settings.store_url`` by default). Nothing is sent anywhere yet.

        Raises ``GenerationError(invalid_input)`` for a URL that cannot name a store (unknown
        scheme, credentials in it, no bucket, a file where the fs root should be...), so a door
        can refuse the request before any image is paid for.
        """
        location = parse_store_url(url or settings.store_url, public_base_url=settings.store_public_url)
        return cls(location, build_operator(location, settings), settings)

    def __repr__(self) -> str:
        return f"ImageStore({self.location.display!r})"

    @property
    def identity(self) -> str:
        """A credential-free name for this store, recorded in spool entries."""
        loc = self.location
        if loc.scheme == "fs":
            assert loc.root is not None
            return loc.root.as_uri()
        if loc.scheme == "memory":
            return "memory://"
        return f"{loc.scheme}://{loc.bucket}/{loc.prefix}" + (f"@{loc.endpoint_host}" if loc.endpoint else "")

    # ---- low-level, retried ------------------------------------------------------------------

    async def _retry(self, work: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.store_upload_attempts),
            wait=wait_exponential(
                multiplier=self.settings.store_backoff_initial_s, max=self.settings.store_backoff_max_s
            ),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await work()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, key: str, payload: bytes, content_type: str) -> None:
        await self._retry(lambda: self._operator.write(key, payload, content_type=content_type))
        if self.local_root is not None:
            # OpenDAL's fs rename makes the write atomic; fsync makes it survive a power cut.
            await asyncio.to_thread(fsync_path, self.local_root / key)

    async def _exists(self, key: str) -> bool:
        async def stat() -> bool:
            try:
                await self._operator.stat(key)
            except dal_errors.NotFound:
                return False
            return True

        return await self._retry(stat)

    async def _read_optional(self, key: str) -> bytes | None:
        async def read() -> bytes | None:
            try:
                return await self._operator.read(key)
            except dal_errors.NotFound:
                return None

        return await self._retry(read)

    async def _read_json(self, key: str) -> dict[str, Any] | None:
        raw = await self._read_optional(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def _write_pointer(self, index: str, pointer: dict[str, Any]) -> dict[str, Any]:
        """Write the pointer unless one exists; return the pointer that won."""
        body = json.dumps(pointer).encode()
        if self.local_root is not None:
            created = await asyncio.to_thread(create_exclusive, self.local_root, index, body)
            if created:
                return pointer
            winner = await self._read_json(index)
            return winner if winner and winner.get("key") else pointer
        if not self._conditional_writes:
            existing = await self._read_json(index)
            if existing and existing.get("key"):
                return existing
            await self._write(index, body, "application/json")
            return pointer
        try:
            await self._retry(
                lambda: self._operator.write(index, body, content_type="application/json", if_not_exists=True)
            )
        except dal_errors.ConditionNotMatch:
            winner = await self._read_json(index)
            if winner and winner.get("key"):
                return winner
            await self._write(index, body, "application/json")
        return pointer

    # ---- put ---------------------------------------------------------------------------------

    async def put_image(
        self, data: bytes, *, mime: str, metadata: dict[str, Any], sha256: str | None = None
    ) -> StoredImage:
        """Store one image with its derivatives and metadata; spool it locally if the store fails.

        ``sha256``: the bytes' digest when the caller already has it (``GeneratedImage.sha256``),
        so 20 MB are not hashed twice. Raises ``GenerationError(invalid_image,
        detail="decompression_bomb")`` for images larger than ``max_image_pixels``, and
        ``GenerationError(storage)`` only if even the spool failed.
        """
        if not data:
            raise GenerationError(ErrorKind.INVALID_IMAGE, detail="empty image bytes", retryable=False)
        info, digest = await run_cpu(_probe_and_hash, data, self.settings.max_image_pixels, sha256)
        return await self._locks.run(
            digest, lambda: self._put(data, digest, mime, metadata, info, datetime.now(UTC), spool=True)
        )

    async def _put(
        self,
        data: bytes,
        sha256: str,
        mime: str,
        metadata: dict[str, Any],
        info: ImageHeader | None,
        when: datetime,
        *,
        spool: bool,
    ) -> StoredImage:
        extension = MIME_EXTENSIONS.get(mime, "bin")
        planned_key = layout.image_key(self.location.prefix, sha256, extension, when)
        try:
            return await self._upload(data, sha256, mime, extension, metadata, info, when)
        except Exception as exc:  # noqa: BLE001 - every failure must end in the spool, not in a loss
            error = describe_error(exc)
            if not spool:
                raise GenerationError(ErrorKind.STORAGE, detail=error) from None
            record = {
                "sha256": sha256,
                "mime": mime,
                "bytes": len(data),
                "intended_key": planned_key,
                "intended_at": when.isoformat(),
                "store": self.identity,
                "error": error,
                "spooled_at": datetime.now(UTC).isoformat(),
                "metadata": metadata,
            }
            try:
                spool_path = await asyncio.to_thread(self.spool.put, sha256, extension, data, record)
            except Exception as spool_exc:  # noqa: BLE001
                raise GenerationError(
                    ErrorKind.STORAGE, detail=f"{error}; local spool failed too: {describe_error(spool_exc)}"
                ) from None
            return StoredImage(
                key=planned_key,
                sha256=sha256,
                bytes=len(data),
                mime=mime,
                status="stored_locally",
                error=error,
                spool_path=spool_path,
            )

    async def _upload(
        self,
        data: bytes,
        sha256: str,
        mime: str,
        extension: str,
        metadata: dict[str, Any],
        info: ImageHeader | None,
        when: datetime,
    ) -> StoredImage:
        prefix = self.location.prefix
        index = layout.index_key(prefix, sha256)
        pointer = await self._read_json(index)
        if pointer and isinstance(pointer.get("key"), str):
            key, mime = pointer["key"], str(pointer.get("mime") or mime)
        else:
            pointer = None
            key = layout.image_key(prefix, sha256, extension, when)
        already_there = await self._exists(key)
        if not already_there:
            await self._write(key, data, mime)

        derivative_keys, derivative_info, warnings = await self._ensure_derivatives(key, data, info)
        meta_key = layout.metadata_key(key)
        existing_meta = await self._read_json(meta_key) if already_there else None
        stale = existing_meta is None or any(existing_meta.get(k) != v for k, v in derivative_keys.items())
        if stale:
            document = {
                **(existing_meta or metadata),
                "sha256": sha256,
                "bytes": len(data),
                "mime": mime,
                "width": info.width if info else None,
                "height": info.height if info else None,
                "key": key,
                "stored_at": (existing_meta or {}).get("stored_at") or when.isoformat(),
                **derivative_keys,
                **derivative_info,
                "storage_warnings": warnings,
            }
            body = json.dumps(document, ensure_ascii=False, default=str, indent=1).encode()
            await self._write(meta_key, body, "application/json")

        deduplicated = already_there
        if pointer is None:
            mine = {"key": key, "sha256": sha256, "mime": mime, "created_at": when.isoformat()}
            winner = await self._write_pointer(index, mine)
            if winner["key"] != key:
                await self._discard(key)
                return await self._upload(data, sha256, mime, extension, metadata, info, when)
        else:
            deduplicated = True
        return await self._result(key, sha256, len(data), mime, derivative_keys, deduplicated)

    async def _ensure_derivatives(
        self, key: str, data: bytes, info: ImageHeader | None
    ) -> tuple[dict[str, str | None], dict[str, Any], list[str]]:
        keys = {"compressed_key": layout.compressed_key(key), "thumbnail_key": layout.thumbnail_key(key)}
        present = {name: await self._exists(value) for name, value in keys.items()}
        need_compressed = wants_compressed(info, self.settings) and not present["compressed_key"]
        need_thumbnail = wants_thumbnail(info, self.settings) and not present["thumbnail_key"]
        extra: dict[str, Any] = {}
        warnings: list[str] = []
        if info is None:
            warnings.append("not_decodable: no derivatives")
        if info is not None and (need_compressed or need_thumbnail):
            started = asyncio.get_running_loop().time()
            made = await self._make(data, info, need_compressed, need_thumbnail, warnings)
            extra["derivatives_s"] = round(asyncio.get_running_loop().time() - started, 3)
            if made.compressed is not None and made.compressed_size:
                await self._write(keys["compressed_key"], made.compressed, "image/jpeg")
                present["compressed_key"] = True
                extra["compressed"] = _size_doc(made.compressed_size, len(made.compressed))
            if made.thumbnail is not None and made.thumbnail_size:
                await self._write(keys["thumbnail_key"], made.thumbnail, "image/webp")
                present["thumbnail_key"] = True
                extra["thumbnail"] = _size_doc(made.thumbnail_size, len(made.thumbnail))
        return {name: (value if present[name] else None) for name, value in keys.items()}, extra, warnings

    async def _make(
        self, data: bytes, info: ImageHeader, compressed: bool, thumbnail: bool, warnings: list[str]
    ) -> Derivatives:
        try:  # the process-wide CPU pool (imaging.run_cpu), shared with the output checks
            return await run_cpu(
                make_derivatives, data, info, self.settings, compressed=compressed, thumbnail=thumbnail
            )
        except (OSError, ValueError, SyntaxError) as exc:
            # A corrupt image is still stored as delivered; only its derivatives are missing.
            warnings.append(f"derivatives_failed: {describe_error(exc)}")
            return Derivatives()

    async def _discard(self, key: str) -> None:
        """Remove our copy after losing the pointer race (the winner's copy holds the same bytes)."""
        for victim in (key, layout.compressed_key(key), layout.thumbnail_key(key), layout.metadata_key(key)):
            await self._retry(functools.partial(self._operator.delete, victim))

    async def _result(
        self, key: str, sha256: str, size: int, mime: str, derivative_keys: dict[str, str | None], dedup: bool
    ) -> StoredImage:
        compressed, thumbnail = derivative_keys["compressed_key"], derivative_keys["thumbnail_key"]
        return StoredImage(
            key=key,
            sha256=sha256,
            bytes=size,
            mime=mime,
            url=await self.url_for(key),
            compressed_key=compressed,
            compressed_url=await self.url_for(compressed) if compressed else None,
            thumbnail_key=thumbnail,
            thumbnail_url=await self.url_for(thumbnail) if thumbnail else None,
            deduplicated=dedup,
        )

    # ---- read side ---------------------------------------------------------------------------

    async def read(self, key: str) -> bytes:
        """The object's bytes. Raises ``FileNotFoundError`` if absent, ``GenerationError(storage)`` else."""
        _check_key(key)
        try:
            data = await self._read_optional(key)
        except Exception as exc:  # noqa: BLE001
            raise GenerationError(ErrorKind.STORAGE, detail=describe_error(exc)) from None
        if data is None:
            raise FileNotFoundError(key)
        return data

    async def exists(self, key: str) -> bool:
        try:
            _check_key(key)
        except FileNotFoundError:
            return False
        try:
            return await self._exists(key)
        except Exception as exc:  # noqa: BLE001
            raise GenerationError(ErrorKind.STORAGE, detail=describe_error(exc)) from None

    async def list(self, prefix: str = "") -> list[str]:
        """Full keys of objects under ``prefix`` (relative to the store's own prefix), sorted.

        Index pointers and temp files are bookkeeping and are left out.
        """
        store_prefix = self.location.prefix
        wanted = f"{store_prefix}/{prefix}" if store_prefix else prefix
        base = f"{store_prefix}/" if store_prefix else ""

        async def collect() -> list[str]:
            return await self._operator.list(base)

        try:
            paths = await self._retry(collect)
        except dal_errors.NotFound:
            return []
        except Exception as exc:  # noqa: BLE001
            raise GenerationError(ErrorKind.STORAGE, detail=describe_error(exc)) from None
        keys = {
            path.lstrip("/")
            for path in paths
            if not path.endswith("/") and path.lstrip("/").startswith(wanted)
        }
        return sorted(key for key in keys if not layout.is_internal(key, store_prefix))

    async def url_for(self, key: str) -> str | None:
        """A URL for the object: file URL (fs), public template, presigned GET, or ``None`` (memory)."""
        _check_key(key)
        if self.local_root is not None:
            return (self.local_root / key).as_uri()
        template = url_template(self.location)
        if template is None:
            return None
        if template == "presign":
            if not self._presign_capable:
                return None
            return await self._operator.presign_read(key, int(self.settings.presign_expiry_s))
        loc = self.location
        return public_url(template, bucket=loc.bucket, endpoint=loc.endpoint_host, key=key)

    # ---- spool and health --------------------------------------------------------------------

    async def flush_spool(self, *, all_stores: bool = False) -> FlushReport:
        """Upload spooled images; an entry is removed only after its image, metadata and pointer landed.

        Entries spooled for another store are left alone unless ``all_stores``.
        """
        report = FlushReport()
        for entry in await asyncio.to_thread(self.spool.entries):
            if not all_stores and entry.record.get("store") != self.identity:
                report.skipped_other_store += 1
                continue
            data = await asyncio.to_thread(self.spool.verify, entry)
            if data is None:
                report.failed += 1
                report.errors.append(f"{entry.sha256}: spooled bytes do not match their sha256")
                continue
            try:
                info = await run_cpu(probe, data, self.settings.max_image_pixels)
                when = datetime.fromisoformat(str(entry.record.get("intended_at")))
                mime = str(entry.record.get("mime") or "application/octet-stream")
                metadata = entry.record.get("metadata") or {}
                put = functools.partial(self._put, data, entry.sha256, mime, metadata, info, when)
                await self._locks.run(entry.sha256, functools.partial(put, spool=False))
            except Exception as exc:  # noqa: BLE001
                report.failed += 1
                report.errors.append(f"{entry.sha256}: {describe_error(exc)}")
                continue
            await asyncio.to_thread(self.spool.remove, entry)
            report.uploaded += 1
        report.remaining = len(await asyncio.to_thread(self.spool.entries))
        return report

    async def check(self) -> None:
        """Readiness probe: raise ``GenerationError(storage)`` when the store cannot be reached."""
        if self.location.scheme == "fs":
            assert self.local_root is not None
            if not (self.local_root.is_dir() and os.access(self.local_root, os.W_OK | os.X_OK)):
                detail = f"store directory is not writable: {self.local_root}"
                raise GenerationError(ErrorKind.STORAGE, detail=detail)
            return
        try:
            await self._operator.check()
        except Exception as exc:  # noqa: BLE001
            raise GenerationError(
                ErrorKind.STORAGE, detail=f"{self.location.display}: {describe_error(exc)}"
            ) from None


def _probe_and_hash(data: bytes, max_pixels: int, sha256: str | None) -> tuple[ImageHeader | None, str]:
    """Header probe (bomb guard) and digest in one trip to the CPU pool; the digest is computed
    only when the caller did not bring one."""
    info = probe(data, max_pixels)
    return info, sha256 or hashlib.sha256(data).hexdigest()


def _size_doc(size: tuple[int, int], length: int) -> dict[str, int]:
    return {"width": size[0], "height": size[1], "bytes": length}
