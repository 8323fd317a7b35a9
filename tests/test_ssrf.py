"""The SSRF guard against real HTTP servers on 127.0.0.1 and 127.0.0.2 (loopback only)."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from bananaline.config import Settings
from bananaline.errors import ErrorKind, GenerationError
from bananaline.references import guarded_fetch, load_references
from bananaline.ssrf import is_blocked, literal_address

PUBLIC_HOST = "images.example.test"


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.server.hits.append((self.path, dict(self.headers.items())))
        path, _, query = self.path.partition("?")
        if path == "/image.png":
            self._send(200, PNG, "image/png")
        elif path == "/redirect":
            self._send(302, b"", "text/plain", Location=parse_qs(query)["to"][0])
        elif path == "/loop":
            self._send(302, b"", "text/plain", Location="/loop")
        elif path == "/page.html":
            self._send(200, b"<!doctype html><html><body>not an image</body></html>", "image/png")
        elif path == "/missing":
            self._send(404, b"no", "text/plain")
        elif path == "/announced-big":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif path == "/stream":  # no Content-Length: HTTP/1.0 body until close, far over the limit
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(160):
                    self.wfile.write(b"\x89" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path.startswith("/secret"):
            self._send(200, b"the secret", "text/plain")
        else:
            self._send(404, b"?", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((host, 0), _Handler)
        self.hits: list[tuple[str, dict[str, str]]] = []
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.host = host
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]


def _stop(server: _Server) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def inner() -> Iterator[_Server]:
    """The 'internal' service an attacker wants to reach: 127.0.0.1."""
    server = _Server("127.0.0.1")
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def outer() -> Iterator[_Server]:
    """The 'public' image host, reachable as images.example.test -> 127.0.0.2 (allow-listed)."""
    server = _Server("127.0.0.2")
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def tls_pair() -> Iterator[tuple[_Server, ssl.SSLContext]]:
    """An HTTPS image host on 127.0.0.2 whose certificate names only images.example.test."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bananaline test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_HOST)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(PUBLIC_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder, "leaf.pem"), Path(folder, "leaf.key")
        cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_path, key_path)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    client_context = ssl.create_default_context(cadata=ca_pem)
    server = _Server("127.0.0.2", tls=server_context)
    yield server, client_context
    _stop(server)


def _settings(**overrides: object) -> Settings:
    return Settings(connect_timeout_s=2.0, ref_allow_networks=["127.0.0.2/32"], **overrides)


class RecordingResolver:
    """The injected DNS: a fixed table, and a log of every name asked for."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return self.table[host]


@pytest.fixture
def sent_requests() -> list[httpx.Request]:
    return []


@pytest.fixture
async def client(sent_requests: list[httpx.Request]) -> httpx.AsyncClient:
    async def record(request: httpx.Request) -> None:
        sent_requests.append(request)

    async with httpx.AsyncClient(trust_env=False, event_hooks={"request": [record]}) as http:
        yield http


async def _fetch_error(url: str, **kwargs: object) -> GenerationError:
    with pytest.raises(GenerationError) as info:
        await guarded_fetch(url, **kwargs)  # type: ignore[arg-type]
    assert info.value.kind is ErrorKind.REFERENCE_ERROR
    assert info.value.request_sent is False
    return info.value


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/a.png",
        "http://0.0.0.0/a.png",
        "http://[::1]/a.png",
        "http://[::]/a.png",
        "http://[fe80::1]/a.png",
        "http://[fc00::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:169.254.169.254]/a.png",
        "http://[2002:7f00:1::]/a.png",
        "http://224.0.0.1/a.png",
        "http://240.0.0.1/a.png",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "HTTP://127.0.0.1./a.png",
        "file:///etc/passwd",
        "ftp://files.example.test/a.png",
        "gopher://example.test:70/_GET",
        "data:text/plain,hi",
    ],
)
async def test_blocked_without_any_connection(
    url: str, client: httpx.AsyncClient, sent_requests: list[httpx.Request]
) -> None:
    resolver = RecordingResolver({})
    error = await _fetch_error(url, settings=_settings(), client=client, resolver=resolver)
    assert error.detail == "blocked_address"
    assert sent_requests == [] and resolver.asked == []


async def test_direct_loopback_url_is_blocked_and_server_sees_nothing(
    inner: _Server, client: httpx.AsyncClient
) -> None:
    url = inner.url("/secret-direct")
    error = await _fetch_error(url, settings=_settings(), client=client)
    assert error.detail == "blocked_address"
    assert "/secret-direct" not in inner.paths()


async def test_allow_private_refs_lets_loopback_through(inner: _Server) -> None:
    body = await guarded_fetch(inner.url("/image.png"), settings=_settings(allow_private_refs=True))
    assert body == PNG


async def test_name_resolving_to_private_is_blocked(client: httpx.AsyncClient) -> None:
    for answer in (["10.1.2.3"], ["127.0.0.2", "10.1.2.3"], ["93.184.216.34", "::1"]):
        resolver = RecordingResolver({"cdn.example.test": answer})
        error = await _fetch_error(
            "http://cdn.example.test/a.png", settings=_settings(), client=client, resolver=resolver
        )
        assert error.detail == "blocked_address", answer
        assert resolver.asked == ["cdn.example.test"]


async def test_system_resolver_localhost_is_blocked(client: httpx.AsyncClient) -> None:
    error = await _fetch_error("http://localhost:9/a.png", settings=_settings(), client=client)
    assert error.detail == "blocked_address"


async def test_allow_listed_host_is_fetched_pinned_with_host_header(outer: _Server) -> None:
    resolver = RecordingResolver({PUBLIC_HOST: ["127.0.0.2"]})
    url = outer.url("/image.png?sig=abc", host=PUBLIC_HOST)
    body = await guarded_fetch(url, settings=_settings(), resolver=resolver)
    assert body == PNG
    path, headers = outer.hits[-1]
    assert path == "/image.png?sig=abc"
    assert headers["Host"] == f"{PUBLIC_HOST}:{outer.port}"


async def test_dns_rebinding_after_check_cannot_redirect_the_connection(
    inner: _Server, outer: _Server
) -> None:
    """The first answer is checked and used; a second, hostile answer is never asked for."""
    answers = iter([["127.0.0.2"], ["127.0.0.1"], ["127.0.0.1"]])
    asked: list[str] = []

    async def rebinding(host: str) -> list[str]:
        asked.append(host)
        return next(answers)

    port_inner_before = len(inner.hits)
    url = f"http://{PUBLIC_HOST}:{outer.port}/image.png"
    assert await guarded_fetch(url, settings=_settings(), resolver=rebinding) == PNG
    assert asked == [PUBLIC_HOST]
    assert len(inner.hits) == port_inner_before


async def test_redirect_to_loopback_is_blocked_and_secret_unseen(inner: _Server, outer: _Server) -> None:
    resolver = RecordingResolver({PUBLIC_HOST: ["127.0.0.2"]})
    secret = inner.url("/secret-redirected")
    url = outer.url(f"/redirect?to={secret}", host=PUBLIC_HOST)
    error = await _fetch_error(url, settings=_settings(), resolver=resolver)
    assert error.detail == "blocked_address"
    assert any(path.startswith("/redirect") for path in outer.paths())
    assert "/secret-redirected" not in inner.paths()


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://2130706433/x", "file:///etc/passwd"]
)
async def test_redirect_to_forbidden_targets_is_blocked(outer: _Server, target: str) -> None:
    resolver = RecordingResolver({PUBLIC_HOST: ["127.0.0.2"]})
    url = outer.url(f"/redirect?to={target}", host=PUBLIC_HOST)
    error = await _fetch_error(url, settings=_settings(), resolver=resolver)
    assert error.detail == "blocked_address"


async def test_redirect_within_allowed_host_is_followed(outer: _Server) -> None:
    resolver = RecordingResolver({PUBLIC_HOST: ["127.0.0.2"]})
    url = outer.url("/redirect?to=/image.png", host=PUBLIC_HOST)
    assert await guarded_fetch(url, settings=_settings(), resolver=resolver) == PNG
    assert resolver.asked == [PUBLIC_HOST, PUBLIC_HOST]  # every hop is checked again


async def test_redirect_loop_stops_after_five_hops(outer: _Server) -> None:
    before = outer.paths().count("/loop")
    error = await _fetch_error(outer.url("/loop"), settings=_settings())
    assert error.detail == "download_failed"
    assert "redirects" in error.message
    assert outer.paths().count("/loop") - before == 6  # the first request and five redirects


async def test_streamed_body_over_limit_is_too_large(outer: _Server) -> None:
    error = await _fetch_error(outer.url("/stream"), settings=_settings(), max_bytes=100_000)
    assert error.detail == "too_large"


async def test_announced_length_over_limit_is_too_large(outer: _Server) -> None:
    settings = _settings(reference_max_download_bytes=1_000_000)
    error = await _fetch_error(outer.url("/announced-big"), settings=settings)
    assert error.detail == "too_large"


async def test_http_404_is_download_failed(outer: _Server) -> None:
    """Decision: any non-2xx answer is ``download_failed`` (``not_found`` is for local paths)."""
    error = await _fetch_error(outer.url("/missing"), settings=_settings())
    assert error.detail == "download_failed"
    assert "HTTP 404" in error.message


async def test_refused_connection_is_download_failed() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    error = await _fetch_error(f"http://127.0.0.2:{port}/a.png", settings=_settings())
    assert error.detail == "download_failed"


async def test_served_html_is_not_an_image(outer: _Server) -> None:
    with pytest.raises(GenerationError) as info:
        await load_references([outer.url("/page.html")], settings=_settings())
    assert info.value.detail == "not_an_image"
    assert "HTML" in info.value.message


async def test_errors_never_show_query_or_userinfo(outer: _Server) -> None:
    url = outer.url("/missing?token=hunter2-very-secret&x=1").replace("http://", "http://alice:pa55word@")
    error = await _fetch_error(url, settings=_settings())
    text = f"{error.message} {error.message_zh} {error.detail} {error!r}"
    for secret in ("hunter2", "pa55word", "alice", "token="):
        assert secret not in text
    assert "/missing" in error.message


async def test_shared_client_credentials_never_reach_the_url(outer: _Server) -> None:
    headers = {"Authorization": "Bearer upstream-key-123", "x-goog-api-key": "AIzaFAKE"}
    async with httpx.AsyncClient(headers=headers, trust_env=False, follow_redirects=True) as shared:
        assert await guarded_fetch(outer.url("/image.png"), settings=_settings(), client=shared) == PNG
    _, seen = outer.hits[-1]
    lowered = {name.lower() for name in seen}
    assert "authorization" not in lowered and "x-goog-api-key" not in lowered


async def test_https_is_pinned_with_sni_and_certificate_checked_against_the_name(
    tls_pair: tuple[_Server, ssl.SSLContext],
) -> None:
    server, trust = tls_pair
    resolver = RecordingResolver({PUBLIC_HOST: ["127.0.0.2"], "other.example.test": ["127.0.0.2"]})
    async with httpx.AsyncClient(verify=trust, trust_env=False) as http:
        url = server.url("/image.png", host=PUBLIC_HOST, scheme="https")
        assert await guarded_fetch(url, settings=_settings(), client=http, resolver=resolver) == PNG
        wrong = server.url("/image.png", host="other.example.test", scheme="https")
        error = await _fetch_error(wrong, settings=_settings(), client=http, resolver=resolver)
    assert error.detail == "download_failed"  # the certificate names images.example.test only


def test_address_policy_units() -> None:
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("images.example.test") is None
    assert is_blocked(ipaddress.ip_address("64:ff9b::a00:1"))  # NAT64 of 10.0.0.1
    assert not is_blocked(ipaddress.ip_address("8.8.8.8"))
    assert not is_blocked(ipaddress.ip_address("2606:4700:4700::1111"))
    allow = [ipaddress.ip_network("10.20.0.0/16")]
    assert not is_blocked(ipaddress.ip_address("10.20.3.4"), allow)
    assert is_blocked(ipaddress.ip_address("10.21.3.4"), allow)
