"""OpenDAL behind one small interface: a parsed store location plus credentials -> :class:`StoreBackend`.

Credentials are looked up in a fixed order, at call time, never from the URL:

* s3: ``BANANALINE_S3_ACCESS_KEY_ID``/``BANANALINE_S3_SECRET_ACCESS_KEY`` (settings or config file),
  then ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``). With none found,
  OpenDAL's own AWS config loading (profiles, instance roles) is left on.
* oss: ``BANANALINE_OSS_ACCESS_KEY_ID``/``BANANALINE_OSS_ACCESS_KEY_SECRET``, then
  ``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``, then ``ALIBABA_CLOUD_ACCESS_KEY_ID``/``..._SECRET``.

Every secret found is registered with :func:`bananaline.errors.register_secret` so that no error
message can carry it.

Why not ``opendal.AsyncOperator`` for everything: its awaitables are completed from OpenDAL's tokio
worker threads, which attach to the interpreter to call ``loop.call_soon_threadsafe``. That call
releases the GIL inside ``socket.send``; the awaiting coroutine can resume, finish, and the
interpreter can start finalizing before the worker thread takes the GIL back. CPython (3.11 here)
then ends that thread with ``pthread_exit``, whose forced unwind cannot cross Rust frames, and
glibc aborts the process: SIGABRT with nothing on stderr, after the result was printed. A core
dump of a process whose last act was an OpenDAL await shows it: the aborting thread is a tokio
worker in ``take_gil`` <- ``sock_send`` <- ``call_soon_threadsafe``, the main thread in
``Py_FinalizeEx`` (``tests/storage/test_exit_stress.py`` reproduces it, 12 of 100 before).
So every object operation runs OpenDAL's *blocking* operator in a thread of our own pool (it
releases the GIL while it waits; the pool is joined before the interpreter finalizes), and no
Rust thread ever runs Python code for them. Only ``presign_read`` and listing have no usable
blocking form (the blocking lister holds the GIL through its network calls); those await the
async operator and then :func:`_opendal_threads_settled` before returning.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import opendal
from opendal.layers import TimeoutLayer
from pydantic import SecretStr

from ..config import Settings
from ..errors import ErrorKind, GenerationError, register_secret
from .urls import StoreLocation

T = TypeVar("T")

#: Temp directory for atomic fs writes; inside the root so the final rename never crosses filesystems.
FS_TEMP_DIR = ".tmp"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = "none"

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def resolve_credentials(
    location: StoreLocation, settings: Settings, environ: Mapping[str, str] | None = None
) -> Credentials:
    env = os.environ if environ is None else environ
    Candidate = tuple[str, str | None, str | None, str | None]

    def from_env(prefix: str, secret_name: str, token_name: str) -> Candidate:
        return (
            f"{prefix}_*",
            env.get(f"{prefix}_ACCESS_KEY_ID"),
            env.get(f"{prefix}_{secret_name}"),
            env.get(token_name),
        )

    if location.scheme == "s3":
        candidates: list[Candidate] = [
            (
                "settings",
                _secret(settings.s3_access_key_id),
                _secret(settings.s3_secret_access_key),
                _secret(settings.s3_session_token),
            ),
            from_env("AWS", "SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
        ]
    elif location.scheme == "oss":
        candidates = [
            ("settings", _secret(settings.oss_access_key_id), _secret(settings.oss_access_key_secret), None),
            from_env("OSS", "ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"),
            from_env("ALIBABA_CLOUD", "ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN"),
        ]
    else:
        return Credentials()
    for source, key_id, secret, token in candidates:
        if key_id and secret:
            for value in (key_id, secret, token):
                register_secret(value)
            return Credentials(key_id, secret, token or None, source)
    return Credentials()


def operator_options(location: StoreLocation, credentials: Credentials) -> tuple[str, dict[str, str]]:
    """The OpenDAL scheme and options. Kept separate from construction so tests can inspect it."""
    if location.scheme == "memory":
        return "memory", {}
    if location.scheme == "fs":
        assert location.root is not None
        return "fs", {"root": str(location.root), "atomic_write_dir": str(location.root / FS_TEMP_DIR)}
    options: dict[str, str] = {"bucket": location.bucket or "", "root": "/"}
    if location.endpoint:
        options["endpoint"] = location.endpoint
    if location.scheme == "s3":
        options["region"] = location.region or "us-east-1"
        if location.virtual_host:
            options["enable_virtual_host_style"] = "true"
        if credentials.access_key_id and credentials.secret:
            options["access_key_id"] = credentials.access_key_id
            options["secret_access_key"] = credentials.secret
            options["disable_config_load"] = "true"
            options["disable_ec2_metadata"] = "true"
            if credentials.session_token:
                options["session_token"] = credentials.session_token
        return "s3", options
    if credentials.access_key_id and credentials.secret:
        options["access_key_id"] = credentials.access_key_id
        options["access_key_secret"] = credentials.secret
        if credentials.session_token:
            options["security_token"] = credentials.session_token
    return "oss", options


def build_operator(location: StoreLocation, settings: Settings) -> StoreBackend:
    """A backend whose every call is bounded by ``store_op_timeout_s``.

    Raises ``invalid_input`` when OpenDAL refuses the configuration or an fs root cannot be made
    (a file in the way, no permission): both are known before any image is paid for.
    """
    credentials = resolve_credentials(location, settings)
    scheme, options = operator_options(location, credentials)
    if location.scheme == "fs":
        assert location.root is not None
        try:
            (location.root / FS_TEMP_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GenerationError(
                ErrorKind.INVALID_INPUT,
                detail=f"store directory {location.root} cannot be used: {exc.strerror or exc}",
                request_sent=False,
            ) from None
    try:
        operator = opendal.Operator(scheme, **options)
    except Exception as exc:  # noqa: BLE001 - OpenDAL's ConfigInvalid and friends share no base class
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GenerationError(
            ErrorKind.INVALID_INPUT,
            detail=f"store {location.display or location.scheme!r} is misconfigured: {first_line}",
            request_sent=False,
        ) from None
    timeout_s = float(settings.store_op_timeout_s)
    return StoreBackend(operator.layer(TimeoutLayer(timeout=timeout_s, io_timeout=timeout_s)))


#: Threads for blocking OpenDAL calls, shared by every store in the process. They wait on the
#: network with the GIL released; a slow store never takes the default executor's threads from
#: image decoding. ``concurrent.futures`` joins them before the interpreter finalizes.
STORE_IO_THREADS = 32
_io_pool: ThreadPoolExecutor | None = None
_io_pool_lock = threading.Lock()


def _store_io_pool() -> ThreadPoolExecutor:
    global _io_pool
    with _io_pool_lock:
        if _io_pool is None:
            _io_pool = ThreadPoolExecutor(max_workers=STORE_IO_THREADS, thread_name_prefix="bananaline-store")
        return _io_pool


#: How long to wait for OpenDAL's threads to leave the interpreter after an async call; they
#: need microseconds, so this bound only matters if the analysis in the docstring is ever wrong.
SETTLE_BOUND_S = 2.0


def _foreign_threads_in_python() -> bool:
    """Whether a thread the ``threading`` module did not start is running Python code now.

    Such a thread is one of OpenDAL's tokio workers completing an awaitable. While it is inside
    Python it has a frame; it only gives the GIL up inside a call that has one (``socket.send``
    in ``call_soon_threadsafe``), so a caller holding the GIL that sees no such frame knows the
    worker is not, and will not again be, waiting for the interpreter on that awaitable's behalf.
    """
    started_here = (t for t in threading.enumerate() if not isinstance(t, threading._DummyThread))
    ours = {thread.ident for thread in started_here}
    # CPython < 3.12 can deadlock in sys._current_frames() when the frame objects it creates start
    # a collection that frees a threading.local (gh-106883); no collection, no deadlock.
    collecting = gc.isenabled()
    gc.disable()
    try:
        running = set(sys._current_frames())
    finally:
        if collecting:
            gc.enable()
    return bool(running - ours)


async def _opendal_threads_settled() -> None:
    """Yield the GIL until OpenDAL's workers have left Python (see the module docstring)."""
    give_up = time.monotonic() + SETTLE_BOUND_S
    while _foreign_threads_in_python() and time.monotonic() < give_up:
        await asyncio.sleep(0.001)


class StoreBackend:
    """The object operations :class:`~bananaline.storage.ImageStore` needs, as coroutines.

    Object calls run OpenDAL's blocking operator in the store I/O pool; ``presign_read`` and
    ``list`` use the async operator and wait for its threads to settle (see the module docstring).
    OpenDAL's exceptions pass through unchanged (``opendal.exceptions.NotFound``, ...).
    """

    def __init__(self, operator: opendal.Operator) -> None:
        self._blocking = operator
        self._async = operator.to_async_operator()
        capability = operator.capability()
        self.conditional_writes = bool(capability.write_with_if_not_exists)
        self.presign_capable = bool(capability.presign_read)

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_store_io_pool(), functools.partial(call, *args, **kwargs))

    async def write(
        self, path: str, payload: bytes, *, content_type: str, if_not_exists: bool = False
    ) -> None:
        options: dict[str, Any] = {"content_type": content_type}
        if if_not_exists:
            options["if_not_exists"] = True
        await self._run(self._blocking.write, path, payload, **options)

    async def stat(self, path: str) -> None:
        """Raises ``opendal.exceptions.NotFound`` when the object is absent."""
        await self._run(self._blocking.stat, path)

    async def read(self, path: str) -> bytes:
        return bytes(await self._run(self._blocking.read, path))

    async def delete(self, path: str) -> None:
        await self._run(self._blocking.delete, path)

    async def check(self) -> None:
        await self._run(self._blocking.check)

    async def list(self, path: str) -> list[str]:
        """Every path under ``path``, recursively."""
        try:
            lister = await self._async.list(path, recursive=True)
            return [entry.path async for entry in lister]
        finally:
            await _opendal_threads_settled()

    async def presign_read(self, path: str, expire_s: int) -> str:
        try:
            request = await self._async.presign_read(path, expire_s)
            return str(request.url)
        finally:
            await _opendal_threads_settled()
