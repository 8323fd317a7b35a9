"""Callers and their tokens: who may use the service, with which upstream key, limits and budget."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from . import tables
from .auth import Caller, KeyCipher, hash_token, new_token, token_hint


class CallerExists(ValueError):
    pass


class CallerNotFound(LookupError):
    pass


@dataclass(frozen=True)
class CallerInfo:
    """A caller as listed to an operator: never the key or the token, only whether a key is set."""

    id: str
    name: str
    has_upstream_key: bool
    concurrency: int
    rpm: int | None
    budget_usd: float | None
    spent_usd: float
    tokens: int
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CallerRepository:
    """Synchronous on purpose: callers are few and small; async code runs these in a thread."""

    def __init__(self, engine: Engine, cipher: KeyCipher) -> None:
        self._engine = engine
        self._cipher = cipher

    def add(
        self,
        name: str,
        *,
        upstream_key: str | None = None,
        concurrency: int = 4,
        rpm: int | None = None,
        budget_usd: float | None = None,
    ) -> tuple[CallerInfo, str]:
        """Create a caller and its first token. The token is returned once and never again."""
        name = name.strip()
        if not name:
            raise ValueError("caller name is empty")
        encrypted = self._cipher.encrypt(upstream_key) if upstream_key else None
        caller_id = secrets.token_hex(8)
        token = new_token()
        now = time.time()
        with self._engine.begin() as conn:
            if conn.execute(select(tables.callers.c.id).where(tables.callers.c.name == name)).first():
                raise CallerExists(f"caller {name!r} already exists")
            conn.execute(
                insert(tables.callers).values(
                    id=caller_id,
                    name=name,
                    upstream_key_enc=encrypted,
                    concurrency=max(1, concurrency),
                    rpm=rpm,
                    budget_usd=budget_usd,
                    created_at=now,
                    disabled=False,
                )
            )
            conn.execute(
                insert(tables.tokens).values(
                    token_hash=hash_token(token), caller_id=caller_id, hint=token_hint(token), created_at=now
                )
            )
        return self.get(name), token

    def issue_token(self, name: str) -> str:
        """Another token for an existing caller (rotation: revoke the old one afterwards)."""
        info = self.get(name)
        token = new_token()
        with self._engine.begin() as conn:
            conn.execute(
                insert(tables.tokens).values(
                    token_hash=hash_token(token),
                    caller_id=info.id,
                    hint=token_hint(token),
                    created_at=time.time(),
                )
            )
        return token

    def revoke_tokens(self, name: str) -> int:
        info = self.get(name)
        with self._engine.begin() as conn:
            result = conn.execute(
                update(tables.tokens)
                .where(tables.tokens.c.caller_id == info.id, tables.tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return int(result.rowcount or 0)

    def get(self, name: str) -> CallerInfo:
        for info in self.list():
            if info.name == name:
                return info
        raise CallerNotFound(f"no caller named {name!r}")

    def list(self) -> list[CallerInfo]:
        c, t, u = tables.callers, tables.tokens, tables.usage
        token_count = (
            select(func.count()).where(t.c.caller_id == c.c.id, t.c.revoked_at.is_(None)).scalar_subquery()
        )
        spent = (
            select(func.coalesce(func.sum(u.c.cost_usd), 0.0))
            .where(u.c.caller_id == c.c.id, u.c.own_key.is_(False))
            .scalar_subquery()
        )
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c, token_count.label("tokens"), spent.label("spent")).order_by(c.c.name)
            )
            return [
                CallerInfo(
                    id=row.id,
                    name=row.name,
                    has_upstream_key=row.upstream_key_enc is not None,
                    concurrency=row.concurrency,
                    rpm=row.rpm,
                    budget_usd=row.budget_usd,
                    spent_usd=float(row.spent or 0.0),
                    tokens=int(row.tokens or 0),
                    created_at=row.created_at,
                )
                for row in rows
            ]

    def by_token(self, token: str) -> Caller | None:
        """The caller a live token belongs to, with its upstream key decrypted; else ``None``."""
        c, t = tables.callers, tables.tokens
        query = (
            select(c)
            .join(t, t.c.caller_id == c.c.id)
            .where(t.c.token_hash == hash_token(token), t.c.revoked_at.is_(None), c.c.disabled.is_(False))
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        key = self._cipher.decrypt(row.upstream_key_enc) if row.upstream_key_enc else None
        return Caller(
            id=row.id,
            name=row.name,
            concurrency=row.concurrency,
            rpm=row.rpm,
            budget_usd=row.budget_usd,
            upstream_key=key,
        )
