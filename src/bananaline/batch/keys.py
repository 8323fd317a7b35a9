"""Who pays for which row: a keys file maps each caller to an API key and their limits.

    # keys.toml
    [default]                 # rows with no caller
    api_key_env = "BANANALINE_API_KEY"
    concurrency = 4

    [callers.alice]
    api_key_env = "ALICE_KEY"  # or api_key = "..." (keep the file private)
    concurrency = 2
    rpm = 30

Keys are ``SecretStr`` from the moment they are read and registered with the redactor, so no log
line, error message, database row or output cell ever carries one. A caller the file does not
know, or whose environment variable is unset, has no key: its rows fail with ``no_api_key``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..admission import CallerLimits
from ..errors import register_secret


@dataclass(frozen=True)
class CallerKey:
    """One caller's key (inline or by environment variable name) and limits (``None`` = no limit)."""

    api_key: SecretStr | None = field(default=None, repr=False)
    api_key_env: str | None = None
    concurrency: int | None = None
    rpm: float | None = None

    def resolve(self) -> SecretStr | None:
        if self.api_key is not None and self.api_key.get_secret_value():
            register_secret(self.api_key.get_secret_value())
            return self.api_key
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "")
            if value:
                register_secret(value)
                return SecretStr(value)
        return None


class KeyRing:
    """Caller name -> key and limits. ``fallback_to_default`` sends unknown callers to the default
    entry (used when no keys file was given at all: one key pays for every row)."""

    def __init__(
        self,
        entries: dict[str, CallerKey] | None = None,
        default: CallerKey | None = None,
        *,
        fallback_to_default: bool = False,
    ) -> None:
        self.entries = dict(entries or {})
        self.default = default
        self.fallback_to_default = fallback_to_default
        for entry in [*self.entries.values(), default]:
            if entry is not None and entry.api_key is not None:
                register_secret(entry.api_key.get_secret_value())

    def __repr__(self) -> str:
        return f"KeyRing(callers={sorted(self.entries)}, default={self.default is not None})"

    @classmethod
    def single(cls, api_key: SecretStr | None, *, concurrency: int | None = None) -> KeyRing:
        """Everything paid by one key (the settings' key): what a run without ``--keys`` uses."""
        return cls({}, CallerKey(api_key=api_key, concurrency=concurrency), fallback_to_default=True)

    @classmethod
    def from_toml(cls, path: str | Path) -> KeyRing:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        callers = data.get("callers", {})
        if not isinstance(callers, dict):
            raise ValueError("[callers] must be a table of tables: [callers.NAME]")
        entries = {str(name): _entry(str(name), body) for name, body in callers.items()}
        default = _entry("default", data["default"]) if "default" in data else None
        return cls(entries, default)

    def entry_for(self, caller: str | None) -> CallerKey | None:
        name = (caller or "").strip()
        if not name:
            return self.default
        entry = self.entries.get(name)
        if entry is None and self.fallback_to_default:
            return self.default
        return entry

    def key_for(self, caller: str | None) -> SecretStr | None:
        entry = self.entry_for(caller)
        return entry.resolve() if entry is not None else None

    def limits_for(self, caller: str | None) -> CallerLimits:
        entry = self.entry_for(caller)
        if entry is None:
            return CallerLimits()
        return CallerLimits(entry.concurrency, entry.rpm)

    def explain_missing(self, caller: str | None) -> tuple[str, str]:
        """Why ``caller`` has no key, in English and Chinese, naming what to fix (never a key)."""
        name = (caller or "").strip()
        entry = self.entry_for(name)
        who = f"caller {name!r}" if name else "rows with no caller"
        who_zh = f"调用方 {name!r}" if name else "未填写调用方的行"
        if entry is None:
            section = f"[callers.{name}]" if name else "[default]"
            return (
                f"no API key for {who}: add {section} to the keys file",
                f"{who_zh}没有 API 密钥：请在密钥文件中添加 {section}",
            )
        if entry.api_key_env:
            return (
                f"no API key for {who}: environment variable {entry.api_key_env} is not set",
                f"{who_zh}没有 API 密钥：环境变量 {entry.api_key_env} 未设置",
            )
        return (
            f"no API key for {who}: its entry has neither api_key nor api_key_env",
            f"{who_zh}没有 API 密钥：配置中既没有 api_key 也没有 api_key_env",
        )


def _entry(name: str, body: Any) -> CallerKey:
    if not isinstance(body, dict):
        raise ValueError(f"keys file: {name} must be a table")
    unknown = set(body) - {"api_key", "api_key_env", "concurrency", "rpm"}
    if unknown:
        raise ValueError(f"keys file: {name} has unknown settings {sorted(unknown)}")
    concurrency = body.get("concurrency")
    rpm = body.get("rpm")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"keys file: {name}.concurrency must be a positive integer")
    if rpm is not None and (not isinstance(rpm, int | float) or rpm <= 0):
        raise ValueError(f"keys file: {name}.rpm must be a positive number")
    inline = body.get("api_key")
    return CallerKey(
        api_key=SecretStr(str(inline)) if inline else None,
        api_key_env=body.get("api_key_env"),
        concurrency=concurrency,
        rpm=float(rpm) if rpm is not None else None,
    )
