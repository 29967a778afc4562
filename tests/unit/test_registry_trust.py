"""Attacks on the registry code: credentials sent to another origin or in clear, and local clients abusing
the loopback registry of ``install --via registry`` (pulls through planted links: the integration tests).

Hostile peers are small loopback HTTP servers written here; a different port is a different origin."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from airgap._internal.clients.distribution import Credential, Origin, Registry, headers_for
from airgap._internal.sinks import engine_pull as serve
from airgap.errors import RegistryError
from airgap.progress import Transfer
from tests.helpers.cli import Cli
from tests.helpers.registries import REGISTRY_PASSWORD, REGISTRY_USER

BASIC = "Basic " + base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Peer:
    """A loopback HTTP server that records every request and answers with ``route``."""

    route: Callable[[Peer, str, str, dict[str, str]], Answer]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                headers = dict(self.headers.items())
                length = int(headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                peer.seen.append(Seen(self.command, self.path, headers))
                code, answer_headers, body = peer.route(peer, self.command, self.path, headers)
                self.send_response(code)
                for k, v in answer_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        # a short poll interval: close() waits for the serving loop to notice the shutdown
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorizations(self) -> list[str]:
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]


Route = Callable[[Peer, str, str, dict[str, str]], Answer]
StartPeer = Callable[[Route], Peer]


@pytest.fixture
def peers() -> Iterator[StartPeer]:
    started: list[Peer] = []

    def start(route: Route) -> Peer:
        started.append(Peer(route))
        return started[-1]

    yield start
    for peer in started:
        peer.close()


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.setenv("AIRGAP_REGISTRY_USER", REGISTRY_USER)
    monkeypatch.setenv("AIRGAP_REGISTRY_PASSWORD", REGISTRY_PASSWORD)


def _basic_registry(elsewhere: str) -> Callable[[Peer, str, str, dict[str, str]], Answer]:
    """A registry asking for Basic auth (and setting a session cookie), that sends uploads and blob downloads
    to ``elsewhere``."""

    def route(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        if headers.get("Authorization") != BASIC:
            return 401, {"WWW-Authenticate": 'Basic realm="registry"'}, b""
        if method == "GET" and path == "/v2/":
            return 200, {}, b"{}"
        if method == "POST" and path.startswith("/v2/team/b/blobs/uploads/"):
            return 202, {"Location": f"http://{elsewhere}/upload/1?state=x", "Set-Cookie": "session=s3cret; Path=/"}, b""
        if method == "GET" and "/blobs/" in path:
            return 307, {"Location": f"http://{elsewhere}/storage/blob?sig=1"}, b""
        return 404, {}, b""

    return route


def _storage(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
    """Blob storage or an upload service on another origin: it accepts anything, and asks nobody for a login."""
    if method == "PATCH":
        return 202, {"Location": f"http://{peer.host}/upload/1?state=y"}, b""
    if method == "PUT":
        return 201, {}, b""
    if method == "GET" and path.startswith("/storage/"):
        data = b"hello blob"
        start = int(headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        if start:
            return 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:]
        return 200, {}, data
    return 404, {}, b""


# --- credentials go only to their origin ----------------------------------------------------


def test_upload_location_on_another_origin_gets_no_authorization(peers: StartPeer, login: None) -> None:
    elsewhere = peers(_storage)
    registry = peers(_basic_registry(elsewhere.host))
    data = b"hello blob"
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    with Registry(registry.host) as reg:
        reg.upload_blob("team/b", digest, len(data), iter([data]), chunk=4)
    assert BASIC in registry.authorizations()  # the registry got its login
    assert [s.method for s in elsewhere.seen] == ["PATCH", "PATCH", "PATCH", "PUT"]  # the upload went there ...
    assert elsewhere.authorizations() == []  # ... without the registry's credentials
    assert not any("Cookie" in s.headers for s in elsewhere.seen)  # cookies are not scoped to a port: none kept


def test_blob_redirect_and_range_resume_to_another_origin_get_no_authorization(peers: StartPeer, login: None) -> None:
    elsewhere = peers(_storage)
    registry = peers(_basic_registry(elsewhere.host))
    digest = "sha256:" + "1" * 64
    with Registry(registry.host) as reg:
        res, start = reg.open_blob("team/b", digest, offset=6)
        with res:
            assert (start, res.content) == (6, b"blob")
    assert [s.headers.get("Range") for s in elsewhere.seen] == ["bytes=6-"]  # the resume's range followed the redirect
    assert elsewhere.authorizations() == []
    assert any(s.headers.get("Authorization") == BASIC and "/blobs/" in s.path for s in registry.seen)


def test_login_challenge_from_another_origin_is_not_answered(peers: StartPeer, login: None) -> None:
    """Blob storage answering 401 with a token realm of its choosing must not get a login or make us fetch a token."""

    def phishing(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        return 401, {"WWW-Authenticate": f'Bearer realm="http://{peer.host}/token",service="x"'}, b""

    elsewhere = peers(phishing)
    registry = peers(_basic_registry(elsewhere.host))
    with Registry(registry.host) as reg:
        assert not reg.has_blob("team/b", "sha256:" + "2" * 64)  # logged in to the registry for this scope
        with pytest.raises(RegistryError, match="401"):
            reg.open_blob("team/b", "sha256:" + "2" * 64)
    assert [s.path for s in elsewhere.seen] == ["/storage/blob?sig=1"]  # no token request followed
    assert elsewhere.authorizations() == []


def test_token_service_redirect_to_another_origin_gets_no_credentials(peers: StartPeer, login: None) -> None:
    def tokens_elsewhere(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": "t0ken"}).encode()

    moved = peers(tokens_elsewhere)

    def realm(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        return 302, {"Location": f"http://{moved.host}/token?moved=1"}, b""

    token_service = peers(realm)

    def registry_route(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        if headers.get("Authorization") != "Bearer t0ken":
            return 401, {"WWW-Authenticate": f'Bearer realm="http://{token_service.host}/token",service="reg"'}, b""
        return 404, {}, b""

    registry = peers(registry_route)
    with Registry(registry.host) as reg:
        assert not reg.has_blob("team/b", "sha256:" + "3" * 64)
    assert token_service.authorizations() == [BASIC]  # loopback realm over HTTP: allowed
    assert len(moved.seen) == 1 and moved.authorizations() == []  # the realm's redirect: nothing
    assert registry.authorizations() == ["Bearer t0ken"]


def test_token_realm_on_plain_http_elsewhere_is_refused_before_sending(
    cli: Cli, peers: StartPeer, login: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    realm = "http://example.invalid/token"

    def registry_route(peer: Peer, method: str, path: str, headers: dict[str, str]) -> Answer:
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}, b""

    registry = peers(registry_route)
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording_getaddrinfo(host: bytes | str | None, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    r = cli("pull", f"oci://{registry.host}/team/b:1", "-o", str(tmp_path / "out"))
    assert r.code == 6, r.err
    assert realm in r.err and "in clear" in r.err
    assert REGISTRY_PASSWORD not in r.err
    assert "127.0.0.1" in looked_up and not any("example.invalid" in h for h in looked_up)
    assert not (tmp_path / "out").exists()


def test_credentials_go_only_to_their_origin() -> None:
    registry = Origin.of("https://reg.example:5000")
    own = Credential(registry, "Bearer t", "registry")
    assert headers_for("https://reg.example:5000/v2/x/blobs/y", {"Accept": "a"}, own, registry) == {
        "Accept": "a",
        "Authorization": "Bearer t",
    }
    assert headers_for("HTTPS://REG.example:5000/v2/", {}, own, registry) == {"Authorization": "Bearer t"}
    for elsewhere in (
        "https://reg.example:5001/",
        "http://reg.example:5000/",
        "https://storage.example/",
        "https://reg.example/",
    ):
        assert headers_for(elsewhere, {"Authorization": "Bearer smuggled"}, own, registry) == {}, elsewhere
    for allowed in ("https://auth.example/token", "http://LOCALHOST:8080/t", "http://127.9.0.1/t", "http://[::1]:9/t"):
        login = Credential(Origin.of(allowed), BASIC, "token-service")
        assert headers_for(allowed, {}, login, registry) == {"Authorization": BASIC}, allowed
    for refused in ("http://auth.example/token", "http://10.0.0.1/t", "http://reg.example:5000/token"):
        login = Credential(Origin.of(refused), BASIC, "token-service")
        with pytest.raises(RegistryError, match=refused.replace(".", r"\.")):
            headers_for(refused, {}, login, registry)
    plain = Origin.of("http://reg.lan:5000")  # --plain-http: its own origin's realm is no worse than Basic there
    login = Credential(Origin.of("http://reg.lan:5000/service/token"), BASIC, "token-service")
    assert headers_for("http://reg.lan:5000/service/token", {}, login, plain) == {"Authorization": BASIC}
    for odd in ("file:///etc/passwd", "http://user@127.0.0.1/", "http://evil.example\\@127.0.0.1/", "gopher://x/"):
        with pytest.raises(RegistryError):
            Origin.of(odd)


# --- the loopback registry of install --via registry ----------------------------------------


@pytest.fixture
def loopback() -> Iterator[serve.BundleRegistry]:
    served = serve.BundleRegistry({}, [], None, Transfer())
    with served:
        yield served


def _settled(served: serve.BundleRegistry, want: int = 0, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while served.open_connections != want:
        assert time.monotonic() < deadline, f"{served.open_connections} connections still open, expected {want}"
        time.sleep(0.05)


def _connect(served: serve.BundleRegistry) -> socket.socket:
    host, port = served.host.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_half_closed_and_reset_clients_leave_no_traceback_and_the_server_keeps_serving(
    loopback: serve.BundleRegistry, capfd: pytest.CaptureFixture[str]
) -> None:
    import struct

    for _ in range(5):
        for payload in (b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", b"GET /v2/ HT", b"HEAD /v2/x/manifests/y HTTP/1.1\r\n\r\n"):
            s = _connect(loopback)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half a request, then no more
            s.close()
        s = _connect(loopback)
        s.sendall(b"GET /v2/ HTTP/1.1\r\n\r\n" * 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # reset
    _settled(loopback)
    assert requests.get(f"http://{loopback.host}/v2/", timeout=10).status_code == 200
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_connections_beyond_the_limit_are_closed_not_threaded(loopback: serve.BundleRegistry) -> None:
    before = threading.active_count()
    held = [_connect(loopback) for _ in range(serve.MAX_CONNECTIONS)]
    _settled(loopback, serve.MAX_CONNECTIONS)
    extra = [_connect(loopback) for _ in range(10)]
    try:
        for s in extra:
            s.settimeout(5)
            assert s.recv(1) == b""  # accepted and closed at once
        assert loopback.open_connections == serve.MAX_CONNECTIONS
        assert threading.active_count() - before <= serve.MAX_CONNECTIONS
    finally:
        for s in held + extra:
            s.close()
    _settled(loopback)
    assert requests.get(f"http://{loopback.host}/v2/", timeout=10).status_code == 200


def test_slow_loris_client_is_cut_off_at_the_header_deadline(
    loopback: serve.BundleRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "HEADER_SECONDS", 1.0)
    s = _connect(loopback)
    started = time.monotonic()
    cut = False
    try:
        s.sendall(b"GET /v2/ HTTP/1.1\r\n")
        while time.monotonic() - started < 10:
            time.sleep(0.2)
            s.sendall(b"X-Slow: y\r\n")  # a header line now and then, never the end of the headers
    except OSError:
        cut = True
    finally:
        s.close()
    assert cut and time.monotonic() - started < 5
    _settled(loopback)
