"""The SSRF guard: every user-supplied URL is fetched through :func:`guarded_fetch`, nothing else.

What it enforces, hop by hop (redirects are followed by hand, at most :data:`MAX_REDIRECTS`):

* only ``http`` and ``https``; ``file:``, ``ftp:``, ``gopher:``... are ``blocked_address``;
* the host is resolved once (numeric tricks such as ``2130706433``, ``0x7f000001`` or ``0177.0.0.1``
  are normalised the way ``inet_aton`` reads them) and refused if ANY address is loopback, private,
  link-local (cloud metadata ``169.254.169.254``), CGNAT, unspecified, multicast, reserved or not
  globally routable, including IPv4 embedded in IPv6 (mapped, 6to4, NAT64, Teredo);
* the request then goes to the address that was checked, not to a second DNS answer: the URL is
  pinned to the IP while the ``Host`` header and the TLS SNI/certificate check keep the real name,
  so DNS rebinding between check and connect is closed;
* the body is streamed and abandoned past ``max_bytes`` (``too_large``).

``settings.allow_private_refs`` switches the address check off; ``settings.ref_allow_networks`` exempts
CIDRs (an internal CDN). Errors never carry the query string or userinfo of a URL: both carry tokens.

Residual risk: a proxy configured on a caller-supplied client still resolves names itself; the client
bananaline builds is created with ``trust_env=False``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx

from .errors import ErrorKind, GenerationError

if TYPE_CHECKING:
    from .config import Settings

Resolver = Callable[[str], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
#: Whole download, all hops: a server trickling one byte per read timeout cannot hold a slot forever.
DOWNLOAD_DEADLINE_S = 120.0
READ_TIMEOUT_S = 30.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Headers a shared client might carry for the upstream that must never reach a user's URL.
_PRIVATE_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-goog-api-key",
    "api-key",
    "x-api-key",
    "cookie",
)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` only: userinfo, query and fragment can carry credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme:
        return "<invalid URL>"
    text = urlunsplit((parts.scheme, host + port, parts.path, "", ""))
    return text if len(text) <= 200 else text[:197] + "..."


def reference_error(detail: str, where: str, reason: str) -> GenerationError:
    """A ``reference_error``; ``where`` must already be safe to show (see :func:`redact_url`)."""
    return GenerationError(
        ErrorKind.REFERENCE_ERROR,
        detail=detail,
        message=f"A reference image could not be used: {detail}: {where}: {reason}",
        message_zh=f"参考图无法使用：{detail}：{where}：{reason}",
        request_sent=False,
    )


def _url_error(detail: str, url: str | httpx.URL, reason: str) -> GenerationError:
    return reference_error(detail, redact_url(str(url)), reason)


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"ref_allow_networks: {cidr!r} is not a CIDR network") from exc
    return networks


def _embedded_ipv4(address: IPAddress) -> list[IPAddress]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    out: list[IPAddress] = []
    if address.ipv4_mapped is not None:
        out.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        out.append(address.sixtofour)
    if address.teredo is not None:
        out.extend(address.teredo)
    if address in _NAT64:
        out.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return out


def _not_public(address: IPAddress) -> bool:
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def is_blocked(address: IPAddress, allow_networks: Iterable[IPNetwork] = ()) -> bool:
    """True when ``address`` (or an IPv4 address hidden inside it) is not a public destination."""
    candidates = [address, *_embedded_ipv4(address)]
    allowed = list(allow_networks)
    if any(c in net for c in candidates for net in allowed if c.version == net.version):
        return False
    return any(_not_public(c) for c in candidates)


def literal_address(host: str) -> IPAddress | None:
    """The address a host *is*, without DNS: IP literals and the legacy numeric forms
    (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) that resolvers accept."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _describe(exc: BaseException | None, url: str | httpx.URL) -> str:
    """An exception's text without the URL's query or userinfo, which may carry tokens."""
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    parts = urlsplit(str(url))
    for secret in (parts.query, parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


async def system_resolve(host: str) -> list[str]:
    """``getaddrinfo`` through the running loop's executor, de-duplicated in answer order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


@dataclass(frozen=True)
class _Target:
    url: httpx.URL  # as the user wrote it (numeric hosts canonicalised): base for relative redirects
    addresses: tuple[str, ...]  # validated; the connection goes to one of these
    host_header: str
    sni_hostname: str | None

    def pinned(self, address: str) -> httpx.URL:
        return self.url.copy_with(host=address)


async def _validate(
    url: str, *, allow_all: bool, allow_networks: list[IPNetwork], resolver: Resolver | None
) -> _Target:
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError as exc:
        raise _url_error("download_failed", url, f"invalid URL ({_describe(exc, url)})") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise _url_error("blocked_address", url, f"scheme {parts.scheme or '(none)'!r} is not http(s)")
    if not host:
        raise _url_error("download_failed", url, "URL has no host")
    literal = literal_address(host)
    if literal is not None and str(literal) != host:
        netloc = f"[{literal}]" if literal.version == 6 else str(literal)
        if port is not None:
            netloc += f":{port}"
        if parts.username is not None or parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise _url_error("download_failed", url, f"invalid URL ({_describe(exc, url)})") from exc
    if literal is not None:
        addresses = [str(literal)]
    else:
        ascii_host = parsed.raw_host.decode("ascii")
        try:
            addresses = await (resolver or system_resolve)(ascii_host)
        except (OSError, UnicodeError) as exc:
            raise _url_error("download_failed", url, f"host does not resolve ({exc})") from exc
        if not addresses:
            raise _url_error("download_failed", url, "host resolves to no address")
    checked = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError as exc:
            raise _url_error("blocked_address", url, f"resolver answered {text!r}") from exc
        if not allow_all and is_blocked(address, allow_networks):
            raise _url_error("blocked_address", url, "the host is not a public address")
        checked.append(str(address))
    named_https = parsed.scheme == "https" and literal is None
    return _Target(
        url=parsed,
        addresses=tuple(checked),
        host_header=parsed.netloc.decode("ascii"),
        sni_hostname=parsed.raw_host.decode("ascii") if named_https else None,
    )


async def _open(client: httpx.AsyncClient, target: _Target, timeout: httpx.Timeout) -> httpx.Response:
    """Send to the validated addresses in order, falling to the next only when a connect fails."""
    last_error: Exception | None = None
    for address in target.addresses:
        request = client.build_request(
            "GET",
            target.pinned(address),
            headers={"Host": target.host_header, "Accept": "image/*,*/*;q=0.5", "User-Agent": "bananaline"},
            extensions={"sni_hostname": target.sni_hostname} if target.sni_hostname else None,
            timeout=timeout,
        )
        for name in _PRIVATE_HEADERS:
            request.headers.pop(name, None)
        try:
            return await client.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.ConnectError as exc:
            last_error = exc
    reason = f"connection failed ({_describe(last_error, target.url)})"
    raise _url_error("download_failed", str(target.url), reason)


async def _read_capped(response: httpx.Response, limit: int, url: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _url_error("too_large", url, f"{int(declared)} bytes announced, limit is {limit}")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _url_error("too_large", url, f"more than {limit} bytes")
    return bytes(body)


async def _fetch(
    url: str, client: httpx.AsyncClient, *, settings: Settings, limit: int, resolver: Resolver | None
) -> bytes:
    allow_networks = parse_networks(settings.ref_allow_networks)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=settings.connect_timeout_s)
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        target = await _validate(
            current, allow_all=settings.allow_private_refs, allow_networks=allow_networks, resolver=resolver
        )
        response = await _open(client, target, timeout)
        try:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                try:
                    current = str(target.url.join(location))
                except (httpx.InvalidURL, ValueError) as exc:
                    raise _url_error("download_failed", current, "redirect to an invalid URL") from exc
                continue
            if not 200 <= response.status_code < 300:
                raise _url_error("download_failed", current, f"HTTP {response.status_code}")
            return await _read_capped(response, limit, current)
        finally:
            await response.aclose()
    raise _url_error("download_failed", url, f"more than {MAX_REDIRECTS} redirects")


async def guarded_fetch(
    url: str,
    *,
    settings: Settings,
    client: httpx.AsyncClient | None = None,
    max_bytes: int | None = None,
    resolver: Resolver | None = None,
) -> bytes:
    """GET a user-supplied URL under the SSRF guard and return its body.

    Raises :class:`GenerationError` of kind ``reference_error`` with detail ``blocked_address``,
    ``download_failed`` (network errors, any non-2xx status including 404, too many redirects) or
    ``too_large``; ``request_sent`` is always ``False`` (nothing went to the image model). A shared
    ``client`` may be passed: its redirect setting, auth and credentials headers are not used.
    """
    limit = settings.reference_max_download_bytes if max_bytes is None else max_bytes
    own_client = client is None
    http = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
    try:
        async with asyncio.timeout(DOWNLOAD_DEADLINE_S):
            return await _fetch(url, http, settings=settings, limit=limit, resolver=resolver)
    except TimeoutError as exc:
        reason = f"no complete answer within {DOWNLOAD_DEADLINE_S:.0f} s"
        raise _url_error("download_failed", url, reason) from exc
    except httpx.HTTPError as exc:
        raise _url_error("download_failed", url, _describe(exc, url)) from exc
    finally:
        if own_client:
            await http.aclose()
