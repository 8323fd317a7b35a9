"""Service tokens and upstream keys at rest.

* A service token is ``bl_`` + 256 random bits. Only its SHA-256 digest is stored: with that
  much entropy a keyed hash adds nothing, and a plain digest survives a ``secret_key`` rotation.
* An upstream key is stored as a Fernet ciphertext. The Fernet key is derived (HKDF-SHA256) from
  ``settings.secret_key`` (``BANANALINE_SECRET_KEY``), which lives in the environment or config
  file, never in the database: a stolen database file yields neither tokens nor keys.
* A request authenticates with ``Authorization: Bearer``, ``x-goog-api-key`` (what google-genai
  sends), ``x-api-key`` or Gemini's ``?key=``. A value starting with ``bl_`` is a service token;
  any other value is the request's own upstream key, used for that call only.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr
from starlette.requests import HTTPConnection

from ..errors import register_secret

TOKEN_PREFIX = "bl_"


def new_token() -> str:
    """A fresh service token; shown once, stored only as :func:`hash_token`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_hint(token: str) -> str:
    """Enough to tell tokens apart in a listing, far too little to guess one."""
    return token[:7] + "…"


def is_service_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


class SecretKeyMissing(RuntimeError):
    """Storing an upstream key needs ``BANANALINE_SECRET_KEY``."""


class KeyCipher:
    """Encrypts upstream keys with a key derived from ``settings.secret_key``."""

    def __init__(self, secret_key: SecretStr | None) -> None:
        self._fernet: Fernet | None = None
        if secret_key is not None and secret_key.get_secret_value():
            derived = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=b"bananaline/service/v1", info=b"upstream-keys"
            ).derive(secret_key.get_secret_value().encode("utf-8"))
            self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, upstream_key: str) -> str:
        if self._fernet is None:
            raise SecretKeyMissing(
                "storing an upstream key needs BANANALINE_SECRET_KEY (any long random string, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), kept outside the database"
            )
        return self._fernet.encrypt(upstream_key.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> SecretStr | None:
        """``None`` when the key cannot be decrypted (no or another secret key)."""
        if self._fernet is None:
            return None
        try:
            value = self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            return None
        register_secret(value)
        return SecretStr(value)


def credential_from(connection: HTTPConnection) -> str | None:
    """The credential a request carries, from the first place that has one."""
    authorization = connection.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found = value.strip()
    else:
        found = (
            connection.headers.get("x-goog-api-key")
            or connection.headers.get("x-api-key")
            or connection.query_params.get("key")
            or ""
        ).strip()
    return found or None


@dataclass(frozen=True)
class Caller:
    """A caller as the service sees it after authentication. The key is decrypted on demand."""

    id: str
    name: str
    concurrency: int
    rpm: int | None
    budget_usd: float | None
    upstream_key: SecretStr | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling and with which upstream key.

    ``caller`` is ``None`` for a request that brought only its own upstream key. ``own_key`` says
    the key came with the request: it is used for this call only and the caller's budget (the
    team's money) is not charged.
    """

    caller: Caller | None
    upstream_key: SecretStr | None = field(default=None, repr=False)
    own_key: bool = False

    @property
    def owner(self) -> str | None:
        return self.caller.id if self.caller else None

    @property
    def label(self) -> str:
        return self.caller.name if self.caller else "anonymous"
