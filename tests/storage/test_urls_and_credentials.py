"""Store URL parsing, OSS configuration and URLs (no network), credential handling and redaction."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from storage_support import SECRET_ACCESS_KEY, make_settings, noise_png

from bananaline.errors import ErrorKind, GenerationError
from bananaline.storage import ImageStore, parse_store_url, redacted_store_url
from bananaline.storage.backend import operator_options, resolve_credentials
from bananaline.storage.layout import compressed_key, image_key, index_key, metadata_key, thumbnail_key

SHA = "ab" + "0" * 62


def test_file_urls(tmp_path: Path) -> None:
    assert parse_store_url("file://./data/images").root == (Path.cwd() / "data/images").resolve()
    assert parse_store_url(f"file://{tmp_path}/x").root == tmp_path / "x"
    assert parse_store_url("memory://").scheme == "memory"


def test_s3_url_defaults_and_options() -> None:
    loc = parse_store_url("s3://bucket/a/b/?endpoint=http://127.0.0.1:9000&virtual_host=false")
    assert (loc.scheme, loc.bucket, loc.prefix, loc.region) == ("s3", "bucket", "a/b", "us-east-1")
    assert loc.endpoint == "http://127.0.0.1:9000" and loc.virtual_host is False and loc.presign is None
    assert parse_store_url("s3://bucket?region=eu-west-1&presign=true").region == "eu-west-1"
    assert (
        parse_store_url("s3://bucket?endpoint=minio.internal:9000").endpoint == "https://minio.internal:9000"
    )


def test_oss_url_configuration() -> None:
    loc = parse_store_url("oss://pics/gen?endpoint=oss-cn-beijing.aliyuncs.com")
    assert (loc.scheme, loc.bucket, loc.prefix) == ("oss", "pics", "gen")
    assert loc.endpoint == "https://oss-cn-beijing.aliyuncs.com"
    assert loc.endpoint_host == "oss-cn-beijing.aliyuncs.com"
    scheme, options = operator_options(loc, resolve_credentials(loc, make_settings(Path("/tmp")), environ={}))
    assert scheme == "oss"
    assert options == {"bucket": "pics", "root": "/", "endpoint": "https://oss-cn-beijing.aliyuncs.com"}


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://x/y", "unsupported scheme"),
        ("s3://", "names no bucket"),
        ("oss://pics/gen", "need ?endpoint="),
        ("s3://b?regoin=us-east-1", "unknown store URL option 'regoin'"),
        ("s3://b?presign=maybe", "not a boolean"),
        ("s3://b/../x", "'..'"),
    ],
)
def test_bad_urls_are_invalid_input(url: str, needle: str) -> None:
    with pytest.raises(GenerationError) as caught:
        parse_store_url(url)
    assert caught.value.kind is ErrorKind.INVALID_INPUT and needle in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIDINURL:{SECRET_ACCESS_KEY}@bucket/prefix",
        f"oss://id:{SECRET_ACCESS_KEY}@bucket/p?endpoint=oss-cn-beijing.aliyuncs.com",
        f"s3://bucket/p?secret_access_key={SECRET_ACCESS_KEY}",
        "s3://bucket/p?access_key_id=AKIDINURL&endpoint=http://127.0.0.1:1",
    ],
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str, tmp_path: Path) -> None:
    with pytest.raises(GenerationError) as caught:
        ImageStore.from_url(url, settings=make_settings(tmp_path))
    text = f"{caught.value} {caught.value!r} {caught.value.to_dict()}"
    assert "credential" in text.lower()
    assert SECRET_ACCESS_KEY not in text and "AKIDINURL" not in text


def test_redacted_store_url() -> None:
    assert (
        redacted_store_url(f"s3://AKID:{SECRET_ACCESS_KEY}@bucket/p?region=x") == "s3://***@bucket/p?region=x"
    )
    shown = redacted_store_url(f"s3://bucket/p?secret_access_key={SECRET_ACCESS_KEY}&region=x")
    assert SECRET_ACCESS_KEY not in shown and "region=x" in shown
    assert redacted_store_url("file://./data/images") == "file://./data/images"


def test_credential_lookup_order(tmp_path: Path) -> None:
    s3 = parse_store_url("s3://b")
    oss = parse_store_url("oss://b?endpoint=e")
    bare = make_settings(tmp_path, s3_access_key_id=None, s3_secret_access_key=None)
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDFROMENV",
        "AWS_SECRET_ACCESS_KEY": "env-secret-123",
        "OSS_ACCESS_KEY_ID": "LTAIoss",
        "OSS_ACCESS_KEY_SECRET": "oss-secret-123",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIali",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "ali-secret-123",
    }
    assert resolve_credentials(s3, bare, env).access_key_id == "AKIDFROMENV"
    assert resolve_credentials(s3, make_settings(tmp_path), env).source == "settings"
    assert resolve_credentials(oss, bare, env).access_key_id == "LTAIoss"
    only_ali = {k: v for k, v in env.items() if k.startswith("ALIBABA")}
    assert resolve_credentials(oss, bare, only_ali).access_key_id == "LTAIali"
    from_settings = make_settings(
        tmp_path, oss_access_key_id=SecretStr("LTAIset"), oss_access_key_secret=SecretStr("set-secret-1")
    )
    creds = resolve_credentials(oss, from_settings, env)
    assert creds.access_key_id == "LTAIset" and "set-secret" not in repr(creds)
    assert resolve_credentials(s3, bare, {}).source == "none"
    _, options = operator_options(s3, resolve_credentials(s3, bare, env))
    assert options["disable_config_load"] == "true" and options["secret_access_key"] == "env-secret-123"


def test_layout_keys() -> None:
    from datetime import UTC, datetime

    key = image_key("gen/v1", SHA, "png", datetime(2031, 2, 3, 23, 0, tzinfo=UTC))
    assert key == f"gen/v1/2031/02/03/{SHA}.png"
    assert metadata_key(key) == f"gen/v1/2031/02/03/{SHA}.json"
    assert compressed_key(key) == f"gen/v1/2031/02/03/{SHA}.compressed.jpg"
    assert thumbnail_key(key) == f"gen/v1/2031/02/03/{SHA}.thumb.webp"
    assert index_key("gen/v1", SHA) == f"gen/v1/index/ab/{SHA}"
    assert image_key("", SHA, "jpg", datetime(2031, 2, 3, tzinfo=UTC)) == f"2031/02/03/{SHA}.jpg"


async def test_oss_urls_default_custom_domain_and_presigned(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        oss_access_key_id=SecretStr("LTAIexample"),
        oss_access_key_secret=SecretStr("oss-secret-xyz"),
    )
    key = f"gen/2031/02/03/{SHA}.png"
    default = ImageStore.from_url("oss://pics/gen?endpoint=oss-cn-beijing.aliyuncs.com", settings=settings)
    assert await default.url_for(key) == f"https://pics.oss-cn-beijing.aliyuncs.com/{key}"

    cdn = ImageStore.from_url(
        "oss://pics/gen?endpoint=oss-cn-beijing.aliyuncs.com&public_base_url=https://img.example.cn/{key}",
        settings=settings,
    )
    assert await cdn.url_for(key) == f"https://img.example.cn/{key}"

    private = ImageStore.from_url(
        "oss://pics/gen?endpoint=oss-cn-beijing.aliyuncs.com&presign=true",
        settings=settings.model_copy(update={"presign_expiry_s": 3600}),
    )
    url = await private.url_for(key)
    assert url is not None and url.startswith(f"https://pics.oss-cn-beijing.aliyuncs.com/{key}?")
    assert "oss-secret-xyz" not in url and re.search(r"(?i)signature", url)


async def test_oss_behaviour_through_memory_and_fs_layout(tmp_path: Path) -> None:
    """OSS shares every code path but the operator; the prefix layout is the same as on s3/fs."""
    store = ImageStore.from_url("memory://", settings=make_settings(tmp_path))
    stored = await store.put_image(noise_png(42), mime="image/png", metadata={})
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/[0-9a-f]{64}\.png", stored.key)


async def test_credentials_never_appear_in_errors_or_reprs(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that does not exist: the upload fails, is spooled, and no secret leaks anywhere."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENVONLY99")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-only-secret-0042")
    settings = make_settings(tmp_path, s3_access_key_id=None, s3_secret_access_key=None)
    store = ImageStore.from_url(f"s3://no-such-bucket-here/p?endpoint={moto_endpoint}", settings=settings)
    stored = await store.put_image(noise_png(77), mime="image/png", metadata={})
    assert stored.status == "stored_locally" and stored.error
    with pytest.raises(GenerationError) as caught:
        await store.check()
    texts = [stored.error, repr(stored), str(stored.to_dict()), repr(store)]
    texts += [str(caught.value), repr(caught.value)]
    for text in texts:
        assert "env-only-secret-0042" not in text and SECRET_ACCESS_KEY not in text
    assert "NoSuchBucket" in stored.error or "ConfigInvalid" in stored.error
