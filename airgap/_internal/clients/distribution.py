"""A small client for the OCI distribution API: blobs and manifests, streamed, with chunked uploads.

Only what airgap needs: check, upload (POST + PATCH chunks + PUT with the digest) and download
(with ``Range`` to resume) blobs; put and get manifests.  Authentication answers the registry's
``WWW-Authenticate`` challenge, Basic or Bearer (token), with credentials from the environment or the
Docker client's config (``auths`` entries and credential helpers) -- never from the command line.

Plain HTTP is used for loopback registries (as Docker does) or when asked for; HTTPS otherwise.

Credentials go to the origin they belong to and nowhere else: :func:`headers_for` decides, for every
request and every redirect hop, which headers go to which URL.  The registry's Basic header or bearer
token goes only to the registry's own scheme, host and port, never to an upload ``Location`` or a
redirect elsewhere (blob storage gets none, as with Docker's client); Basic credentials go to a token
service only over HTTPS, on loopback, or on the registry's own origin.  Redirects are followed here, not by
requests, so that one function sees every hop; ``~/.netrc`` adds nothing and no cookies are kept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.cookiejar
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urljoin, urlparse, urlsplit

import requests

from airgap.errors import ConflictError, IntegrityError, RegistryError, UsageError
from airgap.model.mediatypes import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST

DEFAULT_CHUNK = 128 << 20  # one PATCH request at most; registries refuse very large single requests
READ_BLOCK = 1 << 20
MANIFEST_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20  # a token service's answer
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)

MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST)

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
USER_ENV = "AIRGAP_REGISTRY_USER"
PASSWORD_ENV = "AIRGAP_REGISTRY_PASSWORD"  # noqa: S105 - the name of a variable, not a password


@dataclass(frozen=True)
class RegistryRef:
    """HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]; ``reference`` is None when neither is given."""

    host: str
    repository: str
    reference: str | None = None

    def __str__(self) -> str:
        ref = self.reference or ""
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"{self.host}/{self.repository}{sep + ref if ref else ''}"

    @property
    def is_digest(self) -> bool:
        return bool(self.reference and self.reference.startswith("sha256:"))


def parse_ref(text: str, scheme: str, need_reference: bool = True) -> RegistryRef:
    """Parse ``SCHEME://HOST[:PORT]/REPO[:TAG|@sha256:...]``."""
    example = f"{scheme}://registry.example:5000/team/bundle:1.0"
    prefix = f"{scheme}://"
    if not text.startswith(prefix):
        raise UsageError(f"{text!r} is not a {prefix} reference", hint=f"write it like {example}")
    rest = text[len(prefix) :]
    host, _, path = rest.partition("/")
    reference: str | None = None
    if "@" in path:
        path, _, reference = path.partition("@")
        if not _DIGEST_RE.fullmatch(reference):
            raise UsageError(f"{text!r}: {reference[:80]!r} is not a sha256 digest", hint=f"write it like {example}")
    elif ":" in path.rsplit("/", 1)[-1]:
        path, _, reference = path.rpartition(":")
        if not _TAG_RE.fullmatch(reference):
            raise UsageError(f"{text!r}: {reference[:80]!r} is not a valid tag", hint=f"write it like {example}")
    if not _HOST_RE.fullmatch(host) or not _REPO_RE.fullmatch(path):
        raise UsageError(f"cannot read registry reference {text!r}", hint=f"write it like {example} (lower-case repository)")
    if need_reference and reference is None:
        raise UsageError(f"{text!r} names no tag or digest", hint=f"write it like {example}")
    return RegistryRef(host, path, reference)


def is_loopback(host: str) -> bool:
    """``host`` is ``HOST[:PORT]`` (an IPv6 address in brackets): localhost, 127.0.0.0/8 or ::1."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return name is not None and _loopback_name(name)


def _loopback_name(name: str) -> bool:
    name = name.lower().removesuffix(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- who gets which headers -----------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a URL: credentials belong to exactly one."""

    scheme: str
    host: str  # lower case, an IPv6 address without brackets
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of an absolute http(s) URL; anything else (other schemes, user@host, odd characters that
        parsers read differently) is refused."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise RegistryError(f"the registry sent an unreadable URL {url[:200]!r}") from e
        scheme = parts.scheme.lower()
        odd = any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url)
        if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or odd:
            raise RegistryError(f"the registry sent a URL airgap does not follow: {url[:200]!r}")
        return cls(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80))

    @property
    def loopback(self) -> bool:
        return _loopback_name(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Credential:
    """An ``Authorization`` value and the origin it belongs to.  ``to`` is ``registry`` for the registry's
    Basic header or bearer token, ``token-service`` for the Basic login sent to the registry's token realm."""

    origin: Origin
    header: str
    to: Literal["registry", "token-service"]


_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")


def headers_for(url: str, headers: Mapping[str, str], credential: Credential | None, registry: Origin) -> dict[str, str]:
    """The one decision of what goes to ``url``: ``headers`` (never with credentials of their own), plus
    ``credential`` only when ``url`` is on its origin.  Basic credentials for a token service go only over
    HTTPS, to loopback, or to the registry's own origin (plain HTTP there is already the user's choice:
    a loopback registry or ``--plain-http``); a token service on plain HTTP elsewhere is refused before any
    byte is sent."""
    out = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    target = Origin.of(url)
    if credential is None or target != credential.origin:
        return out  # another origin: a redirect to blob storage, an upload Location elsewhere
    if credential.to == "token-service" and target.scheme != "https" and not target.loopback and target != registry:
        raise RegistryError(
            f"the token service {url.split('?', 1)[0][:200]} named by registry {registry} is plain HTTP on "
            f"another host; airgap does not send credentials there in clear",
            hint="the registry's token realm must be an https:// URL (or on this machine); fix the registry's auth settings",
        )
    out["Authorization"] = credential.header
    return out


class _HeadersAsGiven(requests.auth.AuthBase):
    """Passed as ``auth`` so that requests adds no credentials of its own (``~/.netrc``)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


_AS_GIVEN = _HeadersAsGiven()


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def _docker_config() -> dict[str, Any]:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(base) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the Docker client config {path}: {e}") from e
    return data if isinstance(data, dict) else {}


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise UsageError(
            f"the Docker config names credential helper {helper!r}, but docker-credential-{helper} is not installed",
            hint=f"install it, or set {USER_ENV} and {PASSWORD_ENV}",
        )
    done = subprocess.run([program, "get"], input=host.encode(), capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        return None  # the helper has nothing for this host
    try:
        answer = json.loads(done.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"credential helper docker-credential-{helper} gave an unreadable answer") from e


def credentials_for(host: str) -> Credentials | None:
    """$AIRGAP_REGISTRY_USER/$AIRGAP_REGISTRY_PASSWORD, else the Docker client's config for ``host``."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password is not None:
        return Credentials(user, password)
    config = _docker_config()
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
        return _from_helper(helpers[host], host)
    auths = config.get("auths") or {}
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if urlparse(key if "://" in key else f"//{key}").netloc != host or not isinstance(entry, dict):
                continue
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError) as e:
                    raise UsageError(f"the Docker config's entry for {host} is not valid base64") from e
                return Credentials(user, password)
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return Credentials(entry["username"], entry["password"])
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, host)
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


# --- the transport: where requests leave the client ----------------------------------------


class Transport(Protocol):
    """Sends one HTTP request and returns the answer with its body unread when ``stream`` is true.

    It follows no redirect and adds no credentials, cookies or ``~/.netrc`` entries of its own:
    :meth:`Registry._send` decides every hop's URL and headers.  Transport failures raise
    :class:`requests.RequestException` (the client reports them as RegistryError)."""

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Any,
        params: Mapping[str, str] | None,
        stream: bool,
        timeout: float,
    ) -> requests.Response: ...

    def close(self) -> None: ...


class SessionTransport:
    """The network: one requests session (its TLS settings, connection reuse), keeping no cookies."""

    def __init__(self) -> None:
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "airgap"
        # no cookies kept or sent (as Docker's client): a cookie is not scoped to a port, so it would reach
        # origins that headers_for keeps credentials from
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Any,
        params: Mapping[str, str] | None,
        stream: bool,
        timeout: float,
    ) -> requests.Response:
        return self._session.request(
            method,
            url,
            headers=dict(headers),
            data=data,
            params=params,
            stream=stream,
            timeout=timeout,
            allow_redirects=False,
            auth=_AS_GIVEN,
        )

    def close(self) -> None:
        self._session.close()


# --- the client -----------------------------------------------------------------------------


class _Body:
    """A request body of known length read from an iterator of blocks (for one PATCH chunk)."""

    def __init__(self, source: Iterator[bytes], pending: bytearray, length: int, sha: Any) -> None:
        self._source = source
        self._pending = pending
        self.len = length
        self._left = length
        self._sha = sha

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if not self._pending:
            self._pending.extend(next(self._source, b""))
            if not self._pending:
                raise IntegrityError("a blob ended before its declared size while uploading")
        n = self._left if n < 0 else min(n, self._left)
        data = bytes(self._pending[:n])
        del self._pending[:n]
        self._left -= len(data)
        self._sha.update(data)
        return data


class Registry:
    """One registry host.  Every network or protocol failure becomes a RegistryError naming the host.

    ``transport`` sends the requests (default: the network); tests pass an in-memory registry."""

    def __init__(self, host: str, plain_http: bool = False, timeout: float = 300.0, transport: Transport | None = None) -> None:
        self.host = host
        self.scheme = "http" if plain_http or is_loopback(host) else "https"
        self.base = f"{self.scheme}://{host}"
        self.origin = Origin.of(self.base)
        self.timeout = timeout
        self._transport: Transport = transport if transport is not None else SessionTransport()
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._expires: dict[str, float] = {}  # scope -> when its bearer token is renewed (monotonic)
        self._bearer_challenge: dict[str, str] = {}
        self._basic: str | None = None
        self._creds_loaded = False
        self._creds: Credentials | None = None

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = credentials_for(self.host)
            self._creds_loaded = True
        return self._creds

    def _authorize(self, challenge: str, scope: str) -> None:
        scheme, params = _challenge(challenge)
        creds = self._credentials()
        if scheme == "basic":
            if creds is None:
                raise RegistryError(
                    f"registry {self.host} asks for a login",
                    hint=f"run 'docker login {self.host}', or set {USER_ENV} and {PASSWORD_ENV}",
                )
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            self._auth[scope] = self._basic = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"registry {self.host} asks for an authentication airgap does not speak ({scheme})")
        self._bearer_challenge = params
        self._fetch_token(scope)

    def _fetch_token(self, scope: str) -> None:
        params = self._bearer_challenge
        creds = self._credentials()
        realm = params["realm"]
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        login = None
        if creds is not None:
            basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            login = Credential(Origin.of(realm), f"Basic {basic}", "token-service")
        res = self._send(
            "GET", realm, login, {}, params=query, stream=True, what="a token request", peer=f"token service of {self.host}"
        )
        with res:
            if res.status_code in (401, 403):
                raise RegistryError(
                    f"registry {self.host} refused the credentials for {scope or 'access'}",
                    hint=f"check 'docker login {self.host}', or {USER_ENV} and {PASSWORD_ENV}",
                )
            data = _read_capped(res, TOKEN_LIMIT, f"the answer of the token service of {self.host}")
        bearer: object = None
        lifetime: object = None
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(data)
            bearer = body.get("token") or body.get("access_token")
            lifetime = body.get("expires_in")
        if not isinstance(bearer, str) or not bearer:
            raise RegistryError(f"token service of {self.host} gave no token (HTTP {res.status_code})")
        self._auth[scope] = f"Bearer {bearer}"
        # tokens are short-lived (60 s unless the service says otherwise): renew well before, so a long
        # upload, whose chunks cannot be sent twice, never meets an expired one
        seconds = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0 else 60
        self._expires[scope] = time.monotonic() + max(1.0, seconds * 0.75)

    def request(
        self,
        method: str,
        url: str,
        scope: str,
        ok: tuple[int, ...],
        headers: dict[str, str] | None = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        what: str = "",
    ) -> requests.Response:
        """One request; answers one authentication challenge; maps failures to RegistryError."""
        full = url if "://" in url else urljoin(self.base + "/", url.lstrip("/"))
        if scope in self._expires and time.monotonic() >= self._expires[scope]:
            self._fetch_token(scope)
        for attempt in range(2):
            auth = self._auth.get(scope) or self._basic
            credential = Credential(self.origin, auth, "registry") if auth and scope else None
            res = self._send(
                method, full, credential, headers or {}, data=data, params=params, stream=stream, what=what or method
            )
            # only the registry itself may ask for a login: a challenge from blob storage or an upload
            # Location elsewhere is an error, not a reason to fetch a token
            from_registry = Origin.of(res.url) == self.origin
            if res.status_code == 401 and 401 not in ok and attempt == 0 and data is None and from_registry:
                challenge = res.headers.get("WWW-Authenticate", "")
                res.close()
                self._authorize(challenge, scope)
                continue
            if res.status_code in ok:
                return res
            detail = _error_detail(res)
            res.close()
            if res.status_code in (401, 403):
                raise RegistryError(
                    f"registry {self.host} refused {what or method} ({res.status_code}{detail})",
                    hint=f"check 'docker login {self.host}', or {USER_ENV} and {PASSWORD_ENV}, and the account's rights",
                )
            raise RegistryError(f"registry {self.host} answered {res.status_code} to {what or method}{detail}")
        raise RegistryError(f"registry {self.host} asked for authentication twice for {what or method}")

    def _send(
        self,
        method: str,
        url: str,
        credential: Credential | None,
        headers: Mapping[str, str],
        data: Any = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        what: str = "",
        peer: str = "",
    ) -> requests.Response:
        """Every request goes out here, one hop at a time: :func:`headers_for` decides each hop's headers.
        Redirects are followed for GET and HEAD only (a body is never sent twice)."""
        peer = peer or f"registry {self.host}"
        for _ in range(MAX_REDIRECTS + 1):
            hop_headers = headers_for(url, headers, credential, self.origin)
            try:
                res = self._transport.send(method, url, hop_headers, data, params, stream, self.timeout)
            except requests.exceptions.SSLError as e:
                raise RegistryError(
                    f"TLS with {peer} failed: {str(e)[:200]}",
                    hint="trust its CA with REQUESTS_CA_BUNDLE=FILE, or pass --plain-http for a plain-HTTP registry",
                ) from e
            except requests.RequestException as e:
                raise RegistryError(f"{peer} did not answer {what or method}: {str(e)[:200]}") from e
            location = res.headers.get("Location")
            if res.status_code not in _REDIRECTS or method not in ("GET", "HEAD") or not location:
                return res
            res.close()
            url = urljoin(res.url, location)
            params = None  # the Location carries its own query
        raise RegistryError(f"{peer} redirected {what or method} more than {MAX_REDIRECTS} times")

    def ensure_auth(self, repository: str, push: bool) -> None:
        """Answer the registry's challenge before a request whose body cannot be sent twice."""
        scope = _scope(repository, push)
        if scope in self._auth:
            return
        res = self.request("GET", "/v2/", "", ok=(200, 401), what="the API check")
        res.close()
        if res.status_code == 401:
            self._authorize(res.headers.get("WWW-Authenticate", ""), scope)
        else:
            self._auth[scope] = self._auth.get("", "") or self._basic or ""

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str, push: bool = False) -> bool:
        res = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", _scope(repository, push), ok=(200, 404), what=f"blob {digest[:19]}"
        )
        res.close()
        return res.status_code == 200

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask the registry to link a blob it holds in ``source`` into ``repository`` (no bytes sent)."""
        self.ensure_auth(repository, True)
        res = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            _scope(repository, True),
            ok=(201, 202),
            params={"mount": digest, "from": source},
            what=f"mounting {digest[:19]} from {source}",
        )
        res.close()
        if res.status_code == 201:
            return True
        # the registry started an ordinary upload instead: cancel it, the caller uploads
        with contextlib.suppress(RegistryError):
            self.request("DELETE", _location(res, self.base), _scope(repository, True), ok=(204, 404), what="cancel").close()
        return False

    def upload_blob(self, repository: str, digest: str, size: int, blocks: Iterator[bytes], chunk: int = DEFAULT_CHUNK) -> None:
        """Upload a blob in PATCH chunks of at most ``chunk`` bytes; the registry checks ``digest``."""
        scope = _scope(repository, True)
        self.ensure_auth(repository, True)
        res = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope, ok=(202,), what="starting an upload")
        location = _location(res, self.base)
        res.close()
        sha = hashlib.sha256()
        pending = bytearray()
        sent = 0
        while sent < size or size == 0:
            n = min(chunk, size - sent)
            if n == 0:
                break
            body = _Body(blocks, pending, n, sha)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{sent}-{sent + n - 1}",
                "Content-Length": str(n),
            }
            res = self.request("PATCH", location, scope, ok=(202,), headers=headers, data=body, what=f"uploading {digest[:19]}")
            location = _location(res, self.base)
            res.close()
            sent += n
        if next(blocks, b"") or pending:
            raise IntegrityError(f"blob {digest} is longer than its declared size {size}")
        if "sha256:" + sha.hexdigest() != digest:
            raise IntegrityError(f"blob {digest} does not match its digest while uploading", hint="do not use this bundle")
        sep = "&" if "?" in location else "?"
        res = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            scope,
            ok=(201,),
            headers={"Content-Length": "0"},
            data=b"",
            what=f"finishing upload of {digest[:19]}",
        )
        res.close()

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> tuple[requests.Response, int]:
        """GET a blob from ``offset``: the response and the offset the registry actually starts at."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        res = self.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            _scope(repository, False),
            ok=(200, 206),
            headers=headers,
            stream=True,
            what=f"blob {digest[:19]}",
        )
        res.raw.decode_content = False
        return res, offset if res.status_code == 206 else 0

    def read_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob (a config), checked against its digest."""
        res, _ = self.open_blob(repository, digest)
        with res:
            data = _read_capped(res, limit, f"blob {digest[:19]}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob {digest} from {self.host}/{repository} does not match its digest")
        return data

    # -- manifests ------------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) or None when the registry has no such manifest."""
        res = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            _scope(repository, False),
            ok=(200, 404),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            stream=True,
            what=f"manifest {repository}:{reference}",
        )
        with res:
            if res.status_code == 404:
                return None
            data = _read_capped(res, MANIFEST_LIMIT, f"manifest {repository}:{reference}")
            media_type = res.headers.get("Content-Type", "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(f"manifest {repository}@{reference[:19]} from {self.host} does not match its digest")
        if media_type not in MANIFEST_TYPES:
            with contextlib.suppress(ValueError, AttributeError):
                media_type = str(json.loads(data).get("mediaType", media_type))
        return data, media_type, digest

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        found = self.get_manifest(repository, reference)
        return None if found is None else found[2]

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        self.ensure_auth(repository, True)
        res = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            _scope(repository, True),
            ok=(201,),
            headers={"Content-Type": media_type},
            data=data,
            what=f"manifest {repository}:{reference}",
        )
        res.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        answered = res.headers.get("Docker-Content-Digest")
        if answered and answered != digest:
            raise IntegrityError(f"registry {self.host} stored manifest {repository}:{reference} as {answered}, not {digest}")
        return digest

    def check_tag(self, repository: str, tag: str, digest: str, replace: bool) -> None:
        """Never move a tag silently: refuse when ``tag`` names another manifest, unless ``replace``."""
        current = self.manifest_digest(repository, tag)
        if current is not None and current != digest and not replace:
            raise ConflictError(
                f"{self.host}/{repository}:{tag} already names manifest {current[:19]}, this one is {digest[:19]}",
                hint="pass --replace to move the tag",
            )


def _scope(repository: str, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _location(res: requests.Response, base: str) -> str:
    """Where an upload goes on: any origin the registry names (credentials follow only to its own)."""
    location = res.headers.get("Location")
    if not location:
        raise RegistryError(f"registry at {base} started an upload without a Location")
    url = urljoin(res.url or base + "/", location)
    Origin.of(url)  # http(s) and readable, or refused
    return url


def _error_detail(res: requests.Response) -> str:
    try:
        errors = res.json().get("errors") or []
        first = errors[0]
        return f": {first.get('code', '')} {str(first.get('message', ''))[:160]}".rstrip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _read_capped(res: requests.Response, limit: int, what: str) -> bytes:
    chunks = []
    got = 0
    try:
        for chunk in res.iter_content(READ_BLOCK):
            got += len(chunk)
            if got > limit:
                raise RegistryError(f"{what} is larger than {limit} bytes; refusing it")
            chunks.append(chunk)
    except requests.RequestException as e:
        raise RegistryError(f"reading {what} was cut off: {str(e)[:200]}") from e
    return b"".join(chunks)
