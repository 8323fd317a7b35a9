"""One configuration object, read lazily: flags > environment (``BANANALINE_*``) > config file > defaults.

The config file is TOML, found at ``$BANANALINE_CONFIG`` or ``./bananaline.toml``::

    base_url = "https://api.apiyi.com"
    protocol = "gemini"
    model = "gemini-3-pro-image-preview"
    max_attempts = 3
    store_url = "s3://my-bucket/images?region=us-east-1"

Nothing is read at import time: call :func:`get_settings` (cached) or build ``Settings(...)``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .catalog import DEFAULT_MODEL
from .types import WireProtocol

DEFAULT_BASE_URL = "https://api.apiyi.com"
GOOGLE_HOST = "generativelanguage.googleapis.com"


def _config_file() -> Path | None:
    explicit = os.environ.get("BANANALINE_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("bananaline.toml")
    return local if local.exists() else None


class Settings(BaseSettings):
    """Everything bananaline can be told. Secrets are ``SecretStr`` end to end."""

    model_config = SettingsConfigDict(env_prefix="BANANALINE_", extra="ignore", validate_default=True)

    # upstream
    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    protocol: WireProtocol = WireProtocol.GEMINI
    model: str = DEFAULT_MODEL

    # retries and time
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_initial_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    timeout_s: float | None = Field(None, gt=0, description="overrides the per-size timeouts")
    timeout_by_size_s: dict[str, float] = Field(
        default_factory=lambda: {"512": 360.0, "1K": 360.0, "2K": 600.0, "4K": 1200.0}
    )
    deadline_s: float | None = Field(None, gt=0, description="total time budget over all attempts")
    connect_timeout_s: float = 15.0

    # references
    allow_private_refs: bool = False
    #: CIDRs exempt from the SSRF block list (an internal CDN), e.g. ``["10.20.0.0/16"]``.
    ref_allow_networks: list[str] = Field(default_factory=list)
    reference_max_download_bytes: int = 30 * 1024 * 1024
    reference_long_edge_px: int = 3072
    inline_request_limit_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 8192 * 8192

    # output
    strict_checks: bool = False
    out_dir: Path = Path("out")

    # storage
    store_url: str = "file://./data/images"
    spool_dir: Path = Path("data/spool")
    #: URL template for a store's objects ({bucket}, {endpoint}, {key}), e.g. a CDN domain;
    #: the store URL's own ``?public_base_url=`` wins over it.
    store_public_url: str | None = None
    presign_expiry_s: int = 7 * 24 * 3600
    make_compressed: bool = True
    compressed_long_edge_px: int = 4500
    compressed_jpeg_quality: int = 95
    make_thumbnail: bool = True
    thumbnail_px: int = 512
    store_upload_attempts: int = Field(4, ge=1, le=20)
    store_backoff_initial_s: float = Field(0.5, ge=0)
    store_backoff_max_s: float = Field(8.0, ge=0)
    store_op_timeout_s: float = Field(120.0, gt=0, description="per object operation")
    # store credentials (else AWS_* / OSS_* / ALIBABA_CLOUD_* from the environment)
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_session_token: SecretStr | None = None
    oss_access_key_id: SecretStr | None = None
    oss_access_key_secret: SecretStr | None = None

    # batch / service
    db_url: str = "sqlite:///bananaline.db"
    #: Where per-caller limits live. ``auto``: in the database when it is shared (PostgreSQL), so
    #: every process and machine on it enforces one concurrency, rpm, slow-down and budget per
    #: caller; in this process for SQLite (one machine, zero setup). ``database`` / ``process``
    #: force either.
    limits_scope: Literal["auto", "database", "process"] = "auto"
    #: Lease of a shared slot or reservation: a process killed with SIGKILL frees them after this.
    limits_lease_s: float = Field(60.0, gt=1.0)
    concurrency: int = Field(8, ge=1)
    secret_key: SecretStr | None = None
    #: The service's own public address behind a proxy: absolute links and the OpenAPI ``servers``.
    public_base_url: str | None = None
    plugin_wait_s: float = 150.0
    #: Request body limit for callers with a service token (``bl_…``): uploads, data URIs, JSON.
    max_upload_bytes: int = 50 * 1024 * 1024
    #: The lower body limit for every other request (an own upstream key, or no credential): no
    #: caller limits or budget apply to them, so a big ``data:`` URI is refused at the door (413).
    max_unauthenticated_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Direct peers (IPs or CIDRs) whose ``X-Forwarded-Proto/-For/-Host/-Prefix`` are believed; from
    #: anyone else those headers are ignored. Loopback by default (a proxy on the same host).
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    #: ``Host`` header values (``img.example.com`` or ``host:port``) that may choose the base of the
    #: links the service returns and stores when ``public_base_url`` is unset; any other Host header
    #: is ignored and the address the server is bound to is used instead.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: When set, ``/metrics`` needs ``Authorization: Bearer <metrics_token>``; when unset it answers
    #: loopback peers only (it shows per-caller spend).
    metrics_token: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def timeout_for(self, image_size: str | None) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return self.timeout_by_size_s.get(image_size or "1K", self.timeout_by_size_s.get("1K", 360.0))

    @property
    def shares_limits(self) -> bool:
        """Whether caller limits are kept in the database (see ``limits_scope``)."""
        if self.limits_scope != "auto":
            return self.limits_scope == "database"
        return not self.db_url.startswith("sqlite")

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the non-``None`` overrides applied (CLI flags)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "api_key" in clean and isinstance(clean["api_key"], str):
            clean["api_key"] = SecretStr(clean["api_key"])
        return self.model_copy(update=clean)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
