"""Never lose an image: the store dies mid-batch, everything unconfirmed lands in the spool, and
``flush_spool`` uploads it once the store is back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from storage_support import SECRET_ACCESS_KEY, make_settings, noise_png, s3_client

from bananaline.storage import ImageStore, StoredImage
from bananaline.storage.spool import RECORD_NAME, Spool


class MotoProcess:
    """moto_server as a child process, so that killing it really drops every connection and object."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto_server exited during start-up")
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("moto_server did not come up within 30 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    server = MotoProcess()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_spool_entry_complete(stored: StoredImage, data: bytes, metadata: dict[str, object]) -> None:
    assert stored.spool_path is not None and stored.spool_path.read_bytes() == data
    record = json.loads((stored.spool_path.parent / RECORD_NAME).read_text())
    assert record["sha256"] == _sha(data) and record["metadata"] == metadata and record["mime"] == "image/png"
    assert stored.error and SECRET_ACCESS_KEY not in stored.error
    assert SECRET_ACCESS_KEY not in json.dumps(record)


async def test_store_killed_mid_batch_then_flushed(moto_process: MotoProcess, tmp_path: Path) -> None:
    bucket = "kill-test"
    client = s3_client(moto_process.endpoint)
    client.create_bucket(Bucket=bucket)
    settings = make_settings(tmp_path, store_op_timeout_s=5.0)
    url = f"s3://{bucket}/run?endpoint={moto_process.endpoint}"
    store = ImageStore.from_url(url, settings=settings)
    images = [noise_png(1000 + i, (96, 64)) for i in range(20)]
    metadata = [{"prompt": f"banana {i}", "row": i} for i in range(20)]

    confirmed: list[StoredImage] = []
    verified_before_kill: set[str] = set()
    enough_confirmed = asyncio.Event()
    killed = asyncio.Event()
    in_flight = asyncio.Semaphore(3)

    async def put(i: int) -> StoredImage:
        if i >= 10:  # the second half is certain to meet a dead server, however fast the first was
            await killed.wait()
        async with in_flight:
            stored = await store.put_image(images[i], mime="image/png", metadata=metadata[i])
        if stored.status == "stored":
            confirmed.append(stored)
            if len(confirmed) >= 5:
                enough_confirmed.set()
        return stored

    async def kill_part_way() -> None:
        await asyncio.wait_for(enough_confirmed.wait(), timeout=60)
        for stored in list(confirmed):  # what the server holds for every confirmed image, just before death
            body = await asyncio.to_thread(client.get_object, Bucket=bucket, Key=stored.key)
            assert _sha(body["Body"].read()) == stored.sha256
            verified_before_kill.add(stored.sha256)
        moto_process.kill()
        killed.set()

    killer = asyncio.create_task(kill_part_way())
    results = await asyncio.gather(*(put(i) for i in range(20)))
    await killer

    spooled = [r for r in results if r.status == "stored_locally"]
    stored_ok = [r for r in results if r.status == "stored"]
    assert len(stored_ok) + len(spooled) == 20
    assert len(verified_before_kill) >= 5 and spooled, (len(stored_ok), len(spooled))
    print(f"stored before/while killing: {len(stored_ok)}, spooled: {len(spooled)}")
    for index, stored in enumerate(results):
        assert stored.sha256 == _sha(images[index])
        if stored.status == "stored_locally":
            _assert_spool_entry_complete(stored, images[index], metadata[index])
    spool = Spool(settings.spool_dir)
    assert {entry.sha256 for entry in spool.entries()} == {r.sha256 for r in spooled}
    assert spool.leftovers() == []

    # The store comes back empty (a new moto process): flush uploads the spool.
    moto_process.start()
    client.create_bucket(Bucket=bucket)
    revived = ImageStore.from_url(url, settings=settings)
    report = await revived.flush_spool()
    assert (report.uploaded, report.failed, report.remaining) == (len(spooled), 0, 0), report.errors
    assert spool.entries() == [] and spool.leftovers() == []
    for stored in spooled:
        index = results.index(stored)
        assert _sha(await revived.read(stored.key)) == stored.sha256
        meta = json.loads(await revived.read(stored.key.replace(".png", ".json")))
        assert meta["prompt"] == metadata[index]["prompt"] and meta["thumbnail_key"]
        assert await revived.exists(meta["thumbnail_key"])

    # Nothing half-written: every image object's bytes hash to its name.
    for key in await revived.list():
        if key.endswith(".png"):
            assert _sha(await revived.read(key)) == key.rsplit("/", 1)[1].removesuffix(".png")

    again = await revived.flush_spool()
    assert (again.uploaded, again.failed, again.remaining) == (0, 0, 0)


async def test_unavailable_bucket_spools_then_flush_after_bucket_appears(
    moto_endpoint: str, tmp_path: Path
) -> None:
    bucket = f"late-{uuid.uuid4().hex[:10]}"
    settings = make_settings(tmp_path)
    store = ImageStore.from_url(f"s3://{bucket}?endpoint={moto_endpoint}", settings=settings)
    png = noise_png(2024)
    first = await store.put_image(png, mime="image/png", metadata={"prompt": "late"})
    second = await store.put_image(png, mime="image/png", metadata={"prompt": "late again"})
    assert first.status == second.status == "stored_locally"
    assert first.spool_path == second.spool_path, "the same bytes are spooled once"

    early = await store.flush_spool()
    assert (early.uploaded, early.failed, early.remaining) == (0, 1, 1)

    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    report = await store.flush_spool()
    assert (report.uploaded, report.failed, report.remaining) == (1, 0, 0)
    assert await store.read(first.key) == png
    assert not first.spool_path.exists()


async def test_flush_leaves_other_stores_entries_unless_asked(moto_endpoint: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    broken = ImageStore.from_url(f"s3://never-created-bucket?endpoint={moto_endpoint}", settings=settings)
    stored = await broken.put_image(noise_png(55), mime="image/png", metadata={"prompt": "x"})
    assert stored.status == "stored_locally"

    other = ImageStore.from_url(f"file://{tmp_path / 'other'}", settings=settings)
    report = await other.flush_spool()
    assert (report.uploaded, report.skipped_other_store, report.remaining) == (0, 1, 1)
    report = await other.flush_spool(all_stores=True)
    assert (report.uploaded, report.remaining) == (1, 0)
    assert await other.read(stored.key) == noise_png(55)


def test_spool_entry_is_all_or_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = noise_png(9)
    sha = _sha(data)
    path = spool.put(sha, "png", data, {"mime": "image/png"})
    assert path.read_bytes() == data and [e.sha256 for e in spool.entries()] == [sha]
    # Debris of a crashed writer (staging dir) or a half-made entry is never listed as an entry.
    (tmp_path / "spool" / ".incoming" / "crashed").mkdir(parents=True)
    (tmp_path / "spool" / ("f" * 64)).mkdir()
    (tmp_path / "spool" / ("f" * 64) / "image.png").write_bytes(b"partial")
    assert [e.sha256 for e in spool.entries()] == [sha]
    entry = spool.entries()[0]
    path.write_bytes(b"corrupted")
    assert spool.verify(entry) is None
    spool.remove(entry)
    assert spool.entries() == [] and not (tmp_path / "spool" / sha).exists()
