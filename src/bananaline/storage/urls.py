"""Store URLs: one string says where images go.

Accepted forms::

    file://./data/images                   relative to the working directory
    file:///srv/images                     absolute
    memory://                              in-process, for tests
    s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1
    oss://bucket/prefix?endpoint=oss-cn-beijing.aliyuncs.com

Query options: ``endpoint``, ``region`` (s3, default ``us-east-1``), ``public_base_url`` (a template
with ``{bucket}``, ``{endpoint}``, ``{key}``), ``presign`` (true/false), ``virtual_host`` (s3
addressing style, default path-style for custom endpoints).

Credentials never live in the URL: userinfo (``s3://KEY:SECRET@bucket``) and credential-looking
query options are refused, because URLs end up in logs, configs and process lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ErrorKind, GenerationError

Scheme = Literal["fs", "s3", "oss", "memory"]

_SCHEMES: dict[str, Scheme] = {"file": "fs", "fs": "fs", "s3": "s3", "oss": "oss", "memory": "memory"}
_KNOWN_OPTIONS = {"endpoint", "region", "public_base_url", "presign", "virtual_host"}
_SECRET_OPTION = re.compile(r"(?i)(access|secret|token|password|credential|signature|key_id)")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

OSS_DEFAULT_PUBLIC_TEMPLATE = "https://{bucket}.{endpoint}/{key}"


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store URL. ``prefix`` has no leading or trailing slash; ``root`` is set for fs only."""

    scheme: Scheme
    bucket: str | None = None
    prefix: str = ""
    root: Path | None = None
    endpoint: str | None = None
    region: str | None = None
    public_base_url: str | None = None
    presign: bool | None = None
    virtual_host: bool | None = None
    display: str = ""

    @property
    def endpoint_host(self) -> str | None:
        """The endpoint without scheme, as used in public URL templates."""
        if not self.endpoint:
            return None
        parts = urlsplit(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
        return parts.netloc or None


def _invalid(detail: str) -> GenerationError:
    return GenerationError(ErrorKind.INVALID_INPUT, detail=detail, request_sent=False)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _invalid(f"store URL option {name}={value!r} is not a boolean (use true or false)")


def redacted_store_url(url: str) -> str:
    """The URL safe for logs: userinfo and credential-looking query values become ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_OPTION.search(k) else v) for k, v in pairs], safe="/:{}")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_store_url(url: str, *, public_base_url: str | None = None) -> StoreLocation:
    """Parse and validate a store URL; raise ``invalid_input`` with a fix-it message otherwise.

    ``public_base_url`` is the settings-level default, used when the URL has none.
    """
    shown = redacted_store_url(url)
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise _invalid(f"store URL {shown!r} cannot be parsed") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise _invalid(
            f"store URL {shown!r} has unsupported scheme {parts.scheme!r}; use file://, s3://, oss:// or memory://"
        )
    if "@" in parts.netloc:
        raise _invalid(
            "credentials in the store URL are refused; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(or BANANALINE_S3_ACCESS_KEY_ID/BANANALINE_S3_SECRET_ACCESS_KEY) for s3, "
            "OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET for oss, in the environment or config file"
        )
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_OPTION.search(name):
            raise _invalid(
                f"store URL option {name!r} looks like a credential and is refused; "
                "pass credentials through the environment or config file"
            )
        if name not in _KNOWN_OPTIONS:
            raise _invalid(f"unknown store URL option {name!r}; known: {', '.join(sorted(_KNOWN_OPTIONS))}")
        options[name] = value
    presign = _parse_bool("presign", options["presign"]) if "presign" in options else None
    virtual_host = _parse_bool("virtual_host", options["virtual_host"]) if "virtual_host" in options else None
    public = options.get("public_base_url") or public_base_url

    if scheme == "memory":
        return StoreLocation(scheme="memory", public_base_url=public, display=shown)
    if scheme == "fs":
        raw = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not raw:
            raise _invalid(f"store URL {shown!r} names no directory")
        root = Path(raw).expanduser().resolve()
        return StoreLocation(scheme="fs", root=root, public_base_url=public, display=shown)

    bucket = parts.netloc
    if not bucket:
        raise _invalid(f"store URL {shown!r} names no bucket ({parts.scheme}://BUCKET/prefix)")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    if any(segment in {".", ".."} for segment in prefix.split("/")):
        raise _invalid(f"store URL {shown!r} has a '.' or '..' path segment")
    endpoint = options.get("endpoint")
    if scheme == "oss":
        if not endpoint:
            raise _invalid(
                "oss store URLs need ?endpoint=, e.g. oss://bucket/prefix?endpoint=oss-cn-beijing.aliyuncs.com"
            )
        return StoreLocation(
            scheme="oss",
            bucket=bucket,
            prefix=prefix,
            endpoint=endpoint if "://" in endpoint else f"https://{endpoint}",
            public_base_url=public,
            presign=presign,
            display=shown,
        )
    return StoreLocation(
        scheme="s3",
        bucket=bucket,
        prefix=prefix,
        endpoint=(endpoint if "://" in endpoint else f"https://{endpoint}") if endpoint else None,
        region=options.get("region") or "us-east-1",
        public_base_url=public,
        presign=presign,
        virtual_host=virtual_host,
        display=shown,
    )


def public_url(template: str, *, bucket: str | None, endpoint: str | None, key: str) -> str:
    """Fill a public base URL template. A template without ``{key}`` gets the key appended."""
    quoted = quote(key, safe="/")
    if "{key}" not in template:
        template = template.rstrip("/") + "/{key}"
    return template.format(bucket=bucket or "", endpoint=endpoint or "", key=quoted)


def url_template(location: StoreLocation) -> str | None:
    """How object URLs are made for this store: a template, ``"presign"``, or ``None`` (no URL).

    Order: ``?presign=true`` wins; then a public base URL; then per scheme: s3 presigns unless
    ``?presign=false`` (then the bucket's plain URL), oss uses ``https://{bucket}.{endpoint}/{key}``.
    fs stores are handled by the caller (absolute file URL).
    """
    if location.presign is True and location.scheme in {"s3", "oss"}:
        return "presign"
    if location.public_base_url:
        return location.public_base_url
    if location.scheme == "oss":
        return OSS_DEFAULT_PUBLIC_TEMPLATE
    if location.scheme != "s3":
        return None
    if location.presign is None:
        return "presign"
    if location.endpoint:
        return location.endpoint.rstrip("/") + "/{bucket}/{key}"
    return f"https://{{bucket}}.s3.{location.region}.amazonaws.com/{{key}}"
