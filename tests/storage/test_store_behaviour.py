"""The same behaviours on every backend: memory://, file:// and s3:// (moto over loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image
from storage_support import make_settings, noise_png, s3_client

from bananaline.config import Settings
from bananaline.storage import ImageStore
from bananaline.storage.backend import FS_TEMP_DIR

BACKENDS = ["memory", "fs", "s3"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    kind = request.param
    settings = make_settings(tmp_path)
    if kind == "memory":
        return ImageStore.from_url("memory://", settings=settings)
    if kind == "fs":
        return ImageStore.from_url(f"file://{tmp_path / 'images'}", settings=settings)
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return ImageStore.from_url(f"s3://{bucket}/gen/v1?endpoint={endpoint}", settings=settings)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_put_read_list_and_layout(store: ImageStore) -> None:
    png = noise_png(1)
    stored = await store.put_image(png, mime="image/png", metadata={"prompt": "a banana", "model": "m"})

    assert stored.status == "stored" and stored.error is None and stored.spool_path is None
    assert stored.sha256 == _sha(png) and stored.bytes == len(png) and not stored.deduplicated
    prefix = "gen/v1/" if store.location.scheme == "s3" else ""
    today = datetime.now(UTC)
    assert stored.key == f"{prefix}{today:%Y/%m/%d}/{stored.sha256}.png"
    assert await store.read(stored.key) == png
    assert await store.exists(stored.key)
    assert not await store.exists(stored.key.replace(".png", ".gif"))

    stem = stored.key.removesuffix(".png")
    assert stored.compressed_key == f"{stem}.compressed.jpg"
    assert stored.thumbnail_key == f"{stem}.thumb.webp"
    listed = await store.list()
    assert listed == sorted([stored.key, f"{stem}.json", stored.compressed_key, stored.thumbnail_key])
    assert await store.list(f"{today:%Y}/") == listed
    assert await store.list("1999/") == []

    meta = json.loads(await store.read(f"{stem}.json"))
    assert meta["prompt"] == "a banana" and meta["model"] == "m"
    assert meta["sha256"] == stored.sha256 and meta["key"] == stored.key and meta["mime"] == "image/png"
    assert (meta["width"], meta["height"]) == (64, 48)
    assert meta["compressed_key"] == stored.compressed_key and meta["thumbnail_key"] == stored.thumbnail_key


async def test_same_bytes_twice_are_stored_once(store: ImageStore) -> None:
    png = noise_png(2)
    first = await store.put_image(png, mime="image/png", metadata={"prompt": "first"})
    second = await store.put_image(png, mime="image/png", metadata={"prompt": "second"})

    assert not first.deduplicated and second.deduplicated
    assert second.key == first.key and second.thumbnail_key == first.thumbnail_key
    images = [key for key in await store.list() if key.endswith(".png")]
    assert images == [first.key]
    meta = json.loads(await store.read(first.key.replace(".png", ".json")))
    assert meta["prompt"] == "first", "the first metadata is kept"


async def test_concurrent_writers_of_the_same_bytes(store: ImageStore, tmp_path: Path) -> None:
    """Ten callers, two store objects (as two processes would have): one object, one key."""
    png = noise_png(3)
    other = ImageStore(store.location, store._operator, store.settings)  # separate in-process locks
    results = await asyncio.gather(
        *(s.put_image(png, mime="image/png", metadata={"n": i}) for i, s in enumerate([store, other] * 5))
    )
    assert {r.key for r in results} == {results[0].key}
    if store.location.scheme == "s3":
        # moto itself sometimes answers concurrent PUTs of one key with a 500 and keeps failing
        # that key (a closed-buffer race inside moto): then the image must be safe in the spool.
        assert all(
            r.status == "stored" or (r.status == "stored_locally" and r.spool_path and r.spool_path.exists())
            for r in results
        ), [(r.status, r.error) for r in results]
    else:
        assert all(r.status == "stored" for r in results), [(r.status, r.error) for r in results]
    assert sum(not r.deduplicated for r in results) >= 1
    assert [k for k in await store.list() if k.endswith(".png")] == [results[0].key]


async def test_pointer_race_across_midnight_leaves_one_copy(store: ImageStore) -> None:
    """Two writers of the same bytes on different UTC dates: the pointer decides, the loser's copy goes."""
    png = noise_png(4)
    sha = _sha(png)
    other = ImageStore(store.location, store._operator, store.settings)
    day1, day2 = datetime(2030, 1, 1, 23, 59, 59, tzinfo=UTC), datetime(2030, 1, 2, 0, 0, 1, tzinfo=UTC)
    results = await asyncio.gather(
        store._put(png, sha, "image/png", {"who": 1}, None, day1, spool=True),
        other._put(png, sha, "image/png", {"who": 2}, None, day2, spool=True),
    )
    assert results[0].key == results[1].key
    assert [k for k in await store.list() if k.endswith(".png")] == [results[0].key]
    meta = json.loads(await store.read(results[0].key.replace(".png", ".json")))
    assert meta["key"] == results[0].key


async def test_metadata_is_json_with_everything(store: ImageStore) -> None:
    metadata = {
        "prompt": "香蕉 on a plate",
        "model": "gemini-3-pro-image-preview",
        "parameters": {"aspect_ratio": "16:9", "image_size": "2K"},
        "caller": "batch:7",
        "timings": {"upstream_s": 12.5},
        "usage": {"prompt_tokens": 10, "candidates_tokens": 1290},
        "warnings": ["aspect_mismatch"],
    }
    stored = await store.put_image(noise_png(5), mime="image/png", metadata=metadata)
    meta = json.loads(await store.read(stored.key.replace(".png", ".json")))
    for name, value in metadata.items():
        assert meta[name] == value
    assert meta["compressed"]["width"] == 64 and meta["thumbnail"]["height"] == 48
    assert meta["stored_at"].startswith(datetime.now(UTC).strftime("%Y-%m-%d"))


async def test_read_missing_key_and_traversal(store: ImageStore) -> None:
    with pytest.raises(FileNotFoundError):
        await store.read("2030/01/01/" + "0" * 64 + ".png")
    for bad in ("../etc/passwd", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(FileNotFoundError):
            await store.read(bad)
        assert not await store.exists(bad)


async def test_check_passes_on_a_reachable_store(store: ImageStore) -> None:
    await store.check()


async def test_jpeg_original_small_enough_gets_no_compressed_copy(store: ImageStore) -> None:
    image = Image.new("RGB", (800, 600), (200, 180, 20))
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    stored = await store.put_image(buffer.getvalue(), mime="image/jpeg", metadata={})
    assert stored.key.endswith(".jpg")
    assert stored.compressed_key is None and stored.compressed_url is None
    assert stored.thumbnail_key is not None
    with Image.open(__import__("io").BytesIO(await store.read(stored.thumbnail_key))) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (512, 384)


async def test_settings_turn_derivatives_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, make_compressed=False, make_thumbnail=False)
    store = ImageStore.from_url("memory://", settings=settings)
    stored = await store.put_image(noise_png(6), mime="image/png", metadata={})
    assert stored.compressed_key is None and stored.thumbnail_key is None
    assert len(await store.list()) == 2  # image + metadata


async def test_dedup_repairs_a_missing_derivative(tmp_path: Path) -> None:
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path, make_thumbnail=False))
    png = noise_png(7)
    first = await store.put_image(png, mime="image/png", metadata={"prompt": "p"})
    assert first.thumbnail_key is None
    store.settings = make_settings(tmp_path, make_thumbnail=True)
    second = await store.put_image(png, mime="image/png", metadata={})
    assert second.deduplicated and second.thumbnail_key is not None
    assert await store.exists(second.thumbnail_key)
    meta = json.loads(await store.read(first.key.replace(".png", ".json")))
    assert meta["thumbnail_key"] == second.thumbnail_key and meta["prompt"] == "p"


async def test_undecodable_bytes_are_still_stored(store: ImageStore) -> None:
    """Paid-for bytes that Pillow cannot read are kept as delivered, without derivatives."""
    junk = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10
    stored = await store.put_image(junk, mime="image/png", metadata={})
    assert stored.status == "stored" and await store.read(stored.key) == junk
    assert stored.compressed_key is None and stored.thumbnail_key is None
    meta = json.loads(await store.read(stored.key.replace(".png", ".json")))
    assert meta["storage_warnings"]


async def test_fs_writes_leave_no_temp_files_and_urls_are_absolute(tmp_path: Path) -> None:
    root = tmp_path / "images"
    store = ImageStore.from_url(f"file://{root}", settings=make_settings(tmp_path))
    results = await asyncio.gather(
        *(store.put_image(noise_png(100 + i), mime="image/png", metadata={}) for i in range(6))
    )
    assert store.local_root == root.resolve()
    assert list((root / FS_TEMP_DIR).iterdir()) == []
    for stored in results:
        assert stored.url == (root / stored.key).resolve().as_uri()
        assert Path(stored.url.removeprefix("file://")).read_bytes() == await store.read(stored.key)


async def test_relative_file_url_resolves_against_working_directory(tmp_path: Path) -> None:
    store = ImageStore.from_url("file://./data/images", settings=make_settings(tmp_path))
    assert store.local_root == (Path.cwd() / "data" / "images").resolve()


async def test_memory_store_has_no_urls(tmp_path: Path) -> None:
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path))
    stored = await store.put_image(noise_png(8), mime="image/png", metadata={})
    assert stored.url is None and stored.thumbnail_url is None


async def test_s3_presigned_urls_serve_the_bytes(moto_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = ImageStore.from_url(
        f"s3://{s3_bucket}/p?endpoint={moto_endpoint}", settings=make_settings(tmp_path, presign_expiry_s=600)
    )
    png = noise_png(9)
    stored = await store.put_image(png, mime="image/png", metadata={})
    assert stored.url is not None and "X-Amz-Signature=" in stored.url and "X-Amz-Expires=600" in stored.url
    async with httpx.AsyncClient() as client:
        got = await client.get(stored.url)
        assert got.status_code == 200 and got.content == png
        assert stored.thumbnail_url is not None
        thumb = await client.get(stored.thumbnail_url)
        assert thumb.status_code == 200 and thumb.content[8:12] == b"WEBP"
    body = s3_client(moto_endpoint).get_object(Bucket=s3_bucket, Key=stored.key)
    assert body["ContentType"] == "image/png"


async def test_s3_public_base_url_template(moto_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = ImageStore.from_url(
        f"s3://{s3_bucket}/p?endpoint={moto_endpoint}&public_base_url=https://cdn.example.com/{{key}}",
        settings=make_settings(tmp_path),
    )
    stored = await store.put_image(noise_png(10), mime="image/png", metadata={})
    assert stored.url == f"https://cdn.example.com/{stored.key}"
    assert stored.thumbnail_url == f"https://cdn.example.com/{stored.thumbnail_key}"


async def test_s3_settings_public_base_url_and_presign_override(
    moto_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, store_public_url="https://{bucket}.cdn.test/{key}")
    plain = ImageStore.from_url(f"s3://{s3_bucket}?endpoint={moto_endpoint}", settings=settings)
    assert await plain.url_for("a/b.png") == f"https://{s3_bucket}.cdn.test/a/b.png"
    forced = ImageStore.from_url(f"s3://{s3_bucket}?endpoint={moto_endpoint}&presign=true", settings=settings)
    url = await forced.url_for("a/b.png")
    assert url is not None and url.startswith(f"{moto_endpoint}/{s3_bucket}/a/b.png?")
    assert "X-Amz-Signature" in url


async def test_unusual_settings_are_not_shared(settings: Settings) -> None:
    """The fixture's short retry settings are a copy: the process-wide defaults stay untouched."""
    assert settings.store_upload_attempts == 2
    assert Settings().store_upload_attempts != settings.store_upload_attempts
