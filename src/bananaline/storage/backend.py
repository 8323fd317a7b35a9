"""OpenDAL operator construction: a parsed store location plus credentials -> ``AsyncOperator``.

Credentials are looked up in a fixed order, at call time, never from the URL:

* s3: ``BANANALINE_S3_ACCESS_KEY_ID``/``BANANALINE_S3_SECRET_ACCESS_KEY`` (settings or config file),
  then ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``). With none found,
  OpenDAL's own AWS config loading (profiles, instance roles) is left on.
* oss: ``BANANALINE_OSS_ACCESS_KEY_ID``/``BANANALINE_OSS_ACCESS_KEY_SECRET``, then
  ``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``, then ``ALIBABA_CLOUD_ACCESS_KEY_ID``/``..._SECRET``.

Every secret found is registered with :func:`bananaline.errors.register_secret` so that no error
message can carry it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import opendal
from opendal.layers import TimeoutLayer
from pydantic import SecretStr

from ..config import Settings
from ..errors import register_secret
from .urls import StoreLocation

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
        return (f"{prefix}_*", env.get(f"{prefix}_ACCESS_KEY_ID"), env.get(f"{prefix}_{secret_name}"),
                env.get(token_name))

    if location.scheme == "s3":
        candidates: list[Candidate] = [
            ("settings", _secret(settings.s3_access_key_id), _secret(settings.s3_secret_access_key),
             _secret(settings.s3_session_token)),
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


def build_operator(location: StoreLocation, settings: Settings) -> opendal.AsyncOperator:
    """An operator whose every call is bounded by ``store_op_timeout_s``."""
    credentials = resolve_credentials(location, settings)
    scheme, options = operator_options(location, credentials)
    if location.scheme == "fs":
        assert location.root is not None
        (location.root / FS_TEMP_DIR).mkdir(parents=True, exist_ok=True)
    operator = opendal.AsyncOperator(scheme, **options)
    timeout_s = float(settings.store_op_timeout_s)
    return operator.layer(TimeoutLayer(timeout=timeout_s, io_timeout=timeout_s))
