"""A small client for the OCI distribution API: blobs and manifests, streamed, with chunked uploads.

Only what airgap needs: check, mount, upload (POST + PATCH chunks + PUT with the digest, or one streamed PUT
where a registry refuses chunks) and download (with ``Range`` to resume) blobs; put and get manifests.
Authentication answers the registry's ``WWW-Authenticate`` challenge, Basic or Bearer (token, asking the
scopes the challenge names as well as its own), with credentials from the environment or the Docker client's
config (``auths`` entries and credential helpers) -- never from the command line.  Names are read with Docker's
reference grammar (:mod:`airgap.model.reference`): Docker Hub (``docker.io``) is dialled at
``registry-1.docker.io``, with the credentials ``docker login`` keeps under ``https://index.docker.io/v1/``.

Plain HTTP is used for loopback registries (as Docker does) or when asked for; HTTPS otherwise.

Credentials go to the origin they belong to and nowhere else: :func:`headers_for` decides, for every
request and every redirect hop, which headers go to which URL.  The registry's Basic header or bearer
token goes only to the registry's own scheme, host and port, never to an upload ``Location`` or a
redirect elsewhere (blob storage gets none, as with Docker's client); Basic credentials go to a token
service only over HTTPS, on loopback, or on the registry's own origin.  Redirects are followed here, not by
requests, so that one function sees every hop; ``~/.netrc`` adds nothing and no cookies are kept.

A registry that throttles (429, ``Retry-After`` honoured), cannot serve for now (502, 503, 504) or whose
connection breaks is tried again with backoff and jitter, within a :class:`RetryPolicy` (a bounded number of
tries in a row without progress, a bounded total wait); an upload resumes where the registry says its copy
ends, a download with ``Range``.  Digests the registry names are checked against the bytes, and errors it
causes say so: they never send the user to re-copy a bundle that is intact.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import http.cookiejar
import io
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias
from urllib.parse import urlencode, urljoin, urlparse, urlsplit

import requests
import urllib3

from airgap.errors import ConflictError, IntegrityError, InternalError, RegistryError, UsageError
from airgap.model.mediatypes import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST
from airgap.model.reference import (
    DOCKER_HUB_AUTH_KEY,
    InvalidReference,
    Reference,
    hostname_of,
    is_docker_hub,
    registry_endpoint,
    valid_domain,
)

DEFAULT_CHUNK = 128 << 20  # one PATCH request at most; registries refuse very large single requests
READ_BLOCK = 1 << 20
MANIFEST_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20  # a token service's answer
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)

MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST)

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
    """Parse ``SCHEME://NAME[:TAG|@sha256:...]``, NAME read as Docker reads it (:mod:`airgap.model.reference`):
    ``oci://busybox:1`` is ``docker.io/library/busybox:1``, ``oci://reg:5000/team/app:1`` is on ``reg:5000``;
    a tag and a digest together keep the digest, as ``docker pull`` does."""
    example = f"{scheme}://registry.example:5000/team/bundle:1.0"
    prefix = f"{scheme}://"
    if not text.startswith(prefix):
        raise UsageError(f"{text!r} is not a {prefix} reference", hint=f"write it like {example}")
    try:
        ref = Reference.parse(text[len(prefix) :])
    except InvalidReference as e:
        raise UsageError(
            f"cannot read registry reference {text[:300]!r}: {e}", hint=f"write it like {example} (lower-case repository)"
        ) from e
    if ref.digest is not None and not _DIGEST_RE.fullmatch(ref.digest):
        raise UsageError(f"{text[:300]!r}: only sha256 digests are read", hint=f"write it like {example}")
    if need_reference and ref.tag is None and ref.digest is None:
        raise UsageError(f"{text[:300]!r} names no tag or digest", hint=f"write it like {example}")
    _check_port(ref.host, text[:300])
    return RegistryRef(ref.host, ref.path, ref.digest or ref.tag)


def parse_host(text: str, what: str) -> str:
    """A registry host given on its own (``HOST[:PORT]``, an IPv6 address in brackets), as the reference grammar has
    it; a UsageError naming ``what`` otherwise."""
    if not valid_domain(text):
        raise UsageError(
            f"{what}: {text[:120]!r} is not a registry host", hint="write HOST[:PORT], e.g. registry.example:5000 or [::1]:5000"
        )
    _check_port(text, what)
    return text


def _check_port(host: str, what: str) -> None:
    """The reference grammar takes any digits as a port; a connection needs one from 1 to 65535."""
    port = host.rpartition("]")[2] if host.startswith("[") else host
    digits = port.rpartition(":")[2] if ":" in port else ""
    if digits and not 1 <= int(digits) <= 65535:
        raise UsageError(f"{what}: port {digits[:20]} of {host[:120]!r} is not a TCP port", hint="a port is from 1 to 65535")


def is_loopback(host: str) -> bool:
    """``host`` is ``HOST[:PORT]`` (an IPv6 address in brackets), in any case: localhost, 127.0.0.0/8 or ::1."""
    return _loopback_name(hostname_of(host))


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


def auth_key(host: str) -> str:
    """The key under which the Docker client keeps credentials for registry ``host``: its ``HOST[:PORT]``, and
    ``https://index.docker.io/v1/`` for Docker Hub (what ``docker login`` writes, whichever of its names is used)."""
    return DOCKER_HUB_AUTH_KEY if is_docker_hub(host) else host


def _same_registry(key: str, host: str) -> bool:
    """Whether an ``auths`` key of the Docker config (a URL or ``HOST[:PORT][/path]``) names registry ``host``."""
    netloc = urlparse(key if "://" in key else f"//{key}").netloc.lower()
    if is_docker_hub(host):
        return is_docker_hub(netloc)
    return netloc == host.lower()


def credentials_for(host: str) -> Credentials | None:
    """$AIRGAP_REGISTRY_USER/$AIRGAP_REGISTRY_PASSWORD, else the Docker client's config for ``host``, looked up as the
    docker CLI does: the credential helper for the host, its ``auths`` entry, then the default credential store
    (Docker Hub's entry is ``https://index.docker.io/v1/``)."""
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password is not None:
        return Credentials(user, password)
    key = auth_key(host)
    config = _docker_config()
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        named = helpers.get(key) if isinstance(helpers.get(key), str) else helpers.get(host)
        if isinstance(named, str) and named:
            return _from_helper(named, key)
    auths = config.get("auths") or {}
    if isinstance(auths, dict):
        keys = sorted((k for k in auths if isinstance(k, str) and _same_registry(k, host)), key=lambda k: k != key)
        for k in keys:  # the exact key first, as the docker CLI looks it up
            entry = auths[k]
            if not isinstance(entry, dict):
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
        return _from_helper(store, key)
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


# --- retries --------------------------------------------------------------------------------

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # throttled, or a gateway or registry that cannot serve now
_CHUNKS_REFUSED = frozenset({400, 404, 405, 415, 501})  # answers to a first PATCH: the registry takes no chunks
_ERROR_LIMIT = 64 << 10  # an error answer's body read for its message


@dataclass(frozen=True)
class RetryPolicy:
    """How long the client keeps at a request, or a blob transfer, that the registry throttles (429), cannot serve
    now (502, 503, 504) or whose connection breaks: at most ``tries`` attempts in a row without progress, waiting
    ``base`` seconds doubled at each failure up to ``cap`` (with jitter), or what ``Retry-After`` asks (at most
    ``retry_after_cap``), and never more than ``budget`` seconds of waiting in all.  ``sleep`` does the waiting:
    tests pass one that records."""

    tries: int = 5
    base: float = 1.0
    cap: float = 30.0
    retry_after_cap: float = 120.0
    budget: float = 600.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random  # spreads retries in time; nothing secret


DEFAULT_RETRY = RetryPolicy()


class _GaveUp(RegistryError):
    """A request or transfer still failing when its retries ran out."""


class _Reset(RegistryError):
    """The connection broke before an answer (reset, closed, cut mid-body): the request may be sent again."""


class _Backoff:
    """The retries of one request or one transfer under a :class:`RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, tries: int | None = None) -> None:
        self._policy = policy
        self._tries = policy.tries if tries is None else tries
        self._failures = 0  # in a row, since the last progress
        self.attempts = 1
        self.waited = 0.0

    def progress(self) -> None:
        """The transfer moved on: failures before this one no longer count against the bound."""
        self._failures = 0

    def wait(self, error: RegistryError, retry_after: float | None = None) -> None:
        """Wait before trying again after ``error``; raise it, saying how long it was tried, when the bound is reached."""
        policy = self._policy
        self._failures += 1
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), policy.retry_after_cap)
        else:
            step = min(policy.cap, policy.base * 2 ** (self._failures - 1))
            delay = step * (0.5 + policy.jitter() / 2)
        if self._failures >= self._tries or self.waited + delay > policy.budget:
            if self.attempts == 1:
                raise error
            raise _GaveUp(
                f"{error.message} (tried {self.attempts} times over {self.waited:.0f} s)", hint=error.hint, digest=error.digest
            ) from error
        policy.sleep(delay)
        self.waited += delay
        self.attempts += 1


def _retry_after(res: requests.Response) -> float | None:
    """``Retry-After`` in seconds (it may be a number of seconds or an HTTP date), None when absent or unreadable."""
    value = res.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _connect_failed(e: requests.ConnectionError) -> bool:
    """No connection was made at all (refused, unknown host): the address is wrong or the registry is down."""
    for arg in e.args:
        if isinstance(arg, urllib3.exceptions.NewConnectionError):
            return True
        if isinstance(getattr(arg, "reason", None), urllib3.exceptions.NewConnectionError):
            return True
    return False


# --- what an error is blamed on -------------------------------------------------------------


def login_hint(host: str) -> str:
    return f"check 'docker login {host}', or {USER_ENV} and {PASSWORD_ENV}, and the account's rights"


def network_hint(host: str) -> str:
    return f"the connection to {host} keeps breaking: check the network and any proxy in between, then run the same command again"


def data_hint(host: str) -> str:
    """For bytes from the network that do not match their digest: the registry or the way to it is at fault, not a bundle."""
    return (
        f"the registry {host} (or a proxy in front of it) sent or stored data that does not match its digest: "
        "check the registry's storage and any proxy, then run the same command again"
    )


def _failure(peer: str, host: str, res: requests.Response, what: str, body: dict[str, Any] | None = None) -> RegistryError:
    """The error for an answer the client does not take, with a hint for its cause; closes ``res``.  ``body`` is its
    error entry when already read."""
    status = res.status_code
    first = _error_body(res) if body is None else body
    code, detail = str(first.get("code", ""))[:40], str(first.get("message", ""))[:160]
    res.close()
    shown = f": {code} {detail}".rstrip() if code or detail else ""
    if status in (401, 403):
        return RegistryError(f"{peer} refused {what} ({status}{shown})", hint=login_hint(host))
    message = f"{peer} answered {status} to {what}{shown}"
    if status == 429:
        hint = f"{peer} is limiting this client's requests: wait, or ask its operator for a higher limit, then run the same command again"
    elif status >= 500:
        hint = f"{peer} (or a proxy in front of it) is failing or overloaded: check its logs and storage, then run the same command again"
    else:
        hint = f"{peer} does not take this request of the OCI distribution API as airgap sends it: its answer says why"
    return RegistryError(message, hint=hint)


# --- the client -----------------------------------------------------------------------------

BlobSource: TypeAlias = "Callable[[], Iterator[bytes]] | Iterator[bytes]"


class _Source:
    """The bytes of a blob being uploaded: read once (an iterator), or again from the start (a function that opens
    them) when an upload resumes or starts over.  Hashes what it reads; ``progress`` hears of each byte once."""

    def __init__(self, blocks: BlobSource, digest: str, size: int, progress: Callable[[int], None] | None) -> None:
        self._opener = blocks if callable(blocks) else None
        self._blocks: Iterator[bytes] | None = None if callable(blocks) else blocks
        self.digest = digest
        self.size = size
        self._progress = progress
        self.pos = 0
        self._high = 0  # the farthest byte reported
        self._sha = hashlib.sha256()
        self._pending = bytearray()

    @property
    def can_restart(self) -> bool:
        return self._opener is not None

    def _iter(self) -> Iterator[bytes]:
        if self._blocks is None:
            assert self._opener is not None  # noqa: S101 - one of the two is always set
            self._blocks = self._opener()
        return self._blocks

    def restart(self, offset: int) -> None:
        """Read again from the start, up to ``offset`` (where the registry's copy ends)."""
        self.close()
        self._blocks = None
        self.pos = 0
        self._sha = hashlib.sha256()
        self._pending.clear()
        while self.pos < offset:
            self.read(min(READ_BLOCK, offset - self.pos))

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if not self._pending:
            self._pending.extend(next(self._iter(), b""))
            if not self._pending:
                raise IntegrityError(
                    f"blob {self.digest} ended after {self.pos} of its {self.size} bytes while uploading", digest=self.digest
                )
        data = bytes(self._pending[:n])
        del self._pending[:n]
        self.pos += len(data)
        self._sha.update(data)
        if self.pos > self._high:
            if self._progress is not None:
                self._progress(self.pos - self._high)
            self._high = self.pos
        return data

    def body(self, length: int) -> _Body:
        return _Body(self, length)

    def check_end(self) -> None:
        """All ``size`` bytes were read: nothing more comes, and they hash to the digest."""
        if self._pending or next(self._iter(), b""):
            raise IntegrityError(f"blob {self.digest} is longer than its declared size {self.size}", digest=self.digest)
        if "sha256:" + self._sha.hexdigest() != self.digest:
            raise IntegrityError(
                f"blob {self.digest} does not match its digest while uploading", hint="do not use this bundle", digest=self.digest
            )

    def close(self) -> None:
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()


class _Body:
    """A request body of known length read from a :class:`_Source` (one PATCH chunk, or a whole blob)."""

    def __init__(self, source: _Source, length: int) -> None:
        self._source = source
        self.len = length
        self._left = length

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._source.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


class _ChunksRefused(Exception):
    """The registry refused the first PATCH of an upload: it takes blobs in one PUT only."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(error.message)
        self.error = error


class _Again(Exception):
    """An upload step failed in a way worth another try (throttled, unavailable, connection broken)."""

    def __init__(self, error: RegistryError, retry_after: float | None = None, start_over: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.start_over = start_over  # the upload session is gone or holds other bytes: a new one, from byte 0


class Registry:
    """One registry host.  Every network or protocol failure becomes a RegistryError naming the host.

    ``transport`` sends the requests (default: the network); tests pass an in-memory registry.  ``retry`` bounds
    the retries of throttled, unavailable or broken requests and transfers (default: :data:`DEFAULT_RETRY`)."""

    def __init__(
        self,
        host: str,
        plain_http: bool = False,
        timeout: float = 300.0,
        transport: Transport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.host = host
        self.endpoint = registry_endpoint(host)  # Docker Hub (docker.io) answers at registry-1.docker.io
        self.scheme = "http" if plain_http or is_loopback(host) else "https"
        self.base = f"{self.scheme}://{self.endpoint}"
        self.origin = Origin.of(self.base)
        self.timeout = timeout
        self.retry = retry if retry is not None else DEFAULT_RETRY
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

    # -- authentication -------------------------------------------------------------------------
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
        self._fetch_token(scope, params.get("scope", ""))

    def _fetch_token(self, scope: str, named: str = "") -> None:
        """A bearer token for ``scope`` (``repository:NAME:ACTIONS`` items separated by spaces) and for the scopes the
        registry's challenge ``named``: each item is its own ``scope`` parameter, as Docker's client sends them."""
        params = self._bearer_challenge
        realm = params["realm"]
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", item) for item in _merge_scopes(f"{scope} {named}")]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        creds = self._credentials()
        login = None
        if creds is not None:
            basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            login = Credential(Origin.of(realm), f"Basic {basic}", "token-service")
        peer = f"token service of {self.host}"

        def send() -> requests.Response:
            return self._send("GET", url, login, {}, stream=True, what="a token request", peer=peer)

        res = self._with_retries(send, (200, 401, 403), "a token request", replayable=True, peer=peer)
        with res:
            if res.status_code in (401, 403):
                raise RegistryError(
                    f"registry {self.host} refused the credentials for {scope or 'access'}", hint=login_hint(self.host)
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

    def ensure_auth(self, repository: str, push: bool) -> None:
        """Answer the registry's challenge before a request whose body cannot be sent twice."""
        self._ensure_scope(_scope(repository, push))

    def _ensure_scope(self, scope: str) -> None:
        if scope in self._auth:
            return
        if self._bearer_challenge:  # the token service is known: ask it directly
            self._fetch_token(scope)
            return
        res = self.request("GET", "/v2/", "", ok=(200, 401), what="the API check", challenge=False)
        res.close()
        if res.status_code == 401:
            self._authorize(res.headers.get("WWW-Authenticate", ""), scope)
        else:
            self._auth[scope] = self._auth.get("", "") or self._basic or ""

    # -- requests -------------------------------------------------------------------------------
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
        challenge: bool = True,
        tries: int | None = None,
    ) -> requests.Response:
        """One request whose answer is in ``ok``.  It is sent again, with backoff within :attr:`retry` (or ``tries``
        attempts), when the registry throttles it, cannot serve it now or the connection breaks, as long as its body
        can be sent twice; a 401 challenge from the registry is answered once (unless ``challenge`` is false).
        Every other answer is a RegistryError with a hint for its cause."""
        full = url if "://" in url else urljoin(self.base + "/", url.lstrip("/"))
        what = what or method
        replayable = data is None or isinstance(data, (bytes, str))

        def send() -> requests.Response:
            return self._attempt(method, full, scope, headers or {}, data, params, stream, what, challenge and replayable)

        return self._with_retries(send, ok, what, replayable, tries=tries)

    def _with_retries(
        self,
        send: Callable[[], requests.Response],
        ok: tuple[int, ...],
        what: str,
        replayable: bool,
        peer: str = "",
        tries: int | None = None,
    ) -> requests.Response:
        backoff = _Backoff(self.retry, tries)
        while True:
            try:
                res = send()
            except _Reset as e:
                if not replayable:
                    raise
                backoff.wait(e)
                continue
            if res.status_code in ok:
                return res
            retry_after = _retry_after(res)
            error = _failure(peer or f"registry {self.host}", self.host, res, what)
            if res.status_code not in RETRY_STATUSES or not replayable:
                raise error
            backoff.wait(error, retry_after)

    def _attempt(
        self,
        method: str,
        url: str,
        scope: str,
        headers: Mapping[str, str],
        data: Any,
        params: dict[str, str] | None,
        stream: bool,
        what: str,
        challenge: bool,
    ) -> requests.Response:
        """Send once with the credentials for ``scope``; with ``challenge``, answer a 401 from the registry itself
        (never one from blob storage or an upload Location elsewhere) and send again."""
        if scope in self._expires and time.monotonic() >= self._expires[scope]:
            self._fetch_token(scope)
        auth = self._auth.get(scope) or self._basic
        credential = Credential(self.origin, auth, "registry") if auth and scope else None
        res = self._send(method, url, credential, headers, data=data, params=params, stream=stream, what=what)
        if res.status_code != 401 or not challenge or Origin.of(res.url) != self.origin:
            return res
        answer = res.headers.get("WWW-Authenticate", "")
        res.close()
        self._authorize(answer, scope)
        auth = self._auth.get(scope) or self._basic
        credential = Credential(self.origin, auth, "registry") if auth and scope else None
        return self._send(method, url, credential, headers, data=data, params=params, stream=stream, what=what)

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
            except requests.ConnectionError as e:
                if _connect_failed(e):
                    raise RegistryError(
                        f"{peer} did not answer {what or method}: {str(e)[:200]}",
                        hint=f"check the address {self.host} and that the registry answers (curl {self.base}/v2/)",
                    ) from e
                raise _Reset(f"{peer} did not answer {what or method}: {str(e)[:200]}", hint=network_hint(self.host)) from e
            except requests.RequestException as e:
                raise RegistryError(
                    f"{peer} did not answer {what or method}: {str(e)[:200]}", hint=network_hint(self.host)
                ) from e
            location = res.headers.get("Location")
            if res.status_code not in _REDIRECTS or method not in ("GET", "HEAD") or not location:
                return res
            res.close()
            url = urljoin(res.url, location)
            params = None  # the Location carries its own query
        raise RegistryError(f"{peer} redirected {what or method} more than {MAX_REDIRECTS} times")

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str, push: bool = False) -> bool:
        res = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", _scope(repository, push), ok=(200, 404), what=f"blob {digest[:19]}"
        )
        res.close()
        return res.status_code == 200

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask the registry to link a blob it holds in ``source`` into ``repository`` (no bytes sent).  The token asked
        for names pull on ``source`` as well as push on ``repository``.  False whenever the registry does not
        mount (it refuses, the account may not read ``source``, or it starts an ordinary upload): the caller uploads."""
        scope = f"{_scope(repository, True)} {_scope(source, False)}"
        what = f"mounting {digest[:19]} from {source}"
        try:
            self._ensure_scope(scope)
            res = self.request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                scope,
                ok=(201, 202),
                params={"mount": digest, "from": source},
                what=what,
                tries=2,  # a mount is a shortcut: the upload it saves has retries of its own
            )
        except RegistryError:
            return False
        res.close()
        if res.status_code == 201:
            return True
        # the registry started an ordinary upload instead: cancel it, the caller uploads
        with contextlib.suppress(RegistryError):
            self._cancel(_location(res, self.base), _scope(repository, True))
        return False

    def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        blocks: BlobSource,
        chunk: int = DEFAULT_CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload a blob; the registry checks ``digest`` when it ends.

        ``blocks`` gives the blob's bytes: a function that opens them from the start, or an iterator read once.
        They go up in PATCH chunks of at most ``chunk`` bytes, or in one streamed PUT when the registry refuses
        chunks.  With a function, an upload broken by throttling, an unavailable registry or the network resumes
        where the registry says its copy ends, or starts over in a new upload (within :attr:`retry`); an upload
        given up is deleted.  ``progress`` hears of each byte once, however often it is sent."""
        self.ensure_auth(repository, True)
        _Upload(self, repository, digest, size, _Source(blocks, digest, size, progress), chunk).run()

    def _start_upload(self, repository: str, scope: str) -> str:
        res = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope, ok=(202,), what="starting an upload")
        res.close()
        return _location(res, self.base)

    def _cancel(self, location: str, scope: str) -> None:
        """Delete an upload this client gives up (one try: the registry also expires them)."""
        self.request("DELETE", location, scope, ok=(200, 202, 204, 404), what="deleting an unfinished upload", tries=1).close()

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> tuple[requests.Response, int]:
        """GET a blob from ``offset``: the response and the offset the registry actually starts at (0 when it ignores
        ``Range``).  The response's body resumes itself when the connection breaks: it asks for the rest with
        ``Range`` (and reads past what it had when the registry ignores it), within :attr:`retry`."""
        res, start = self._get_blob(repository, digest, offset)
        body = _ResumingBody(self, repository, digest, res, start, _Backoff(self.retry))
        headers = {k: v for k, v in res.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        res.raw = urllib3.HTTPResponse(
            body=body,
            headers=headers,
            status=res.status_code,
            preload_content=False,
            decode_content=False,
            request_method="GET",
            request_url=res.url,
        )
        return res, start

    def _get_blob(self, repository: str, digest: str, offset: int) -> tuple[requests.Response, int]:
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
        if res.status_code != 206:
            return res, 0
        answered = re.match(r"bytes (\d+)-", res.headers.get("Content-Range", ""))
        if answered is not None and int(answered[1]) != offset:
            res.close()
            raise RegistryError(
                f"registry {self.host} answered a request for blob {digest[:19]} from byte {offset} with bytes from {answered[1]}",
                hint=f"registry {self.host} (or a proxy in front of it) does not follow HTTP ranges: check it",
            )
        return res, offset

    def read_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob (a config), checked against its digest."""
        res, _ = self.open_blob(repository, digest)
        with res:
            data = _read_capped(res, limit, f"blob {digest[:19]}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(
                f"blob {digest} from {self.host}/{repository} does not match its digest", hint=data_hint(self.host), digest=digest
            )
        return data

    # -- manifests ------------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) or None when the registry has no such manifest.  The bytes must match the digest
        asked for, and the digest the registry names them by (``Docker-Content-Digest``)."""
        what = f"manifest {repository}:{reference}"
        backoff = _Backoff(self.retry)
        while True:
            res = self.request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                _scope(repository, False),
                ok=(200, 404),
                headers={"Accept": ", ".join(MANIFEST_TYPES)},
                stream=True,
                what=what,
            )
            with res:
                if res.status_code == 404:
                    return None
                try:
                    data = _read_capped(res, MANIFEST_LIMIT, what)
                except _Reset as e:
                    backoff.wait(e)
                    continue
                media_type = res.headers.get("Content-Type", "").split(";")[0].strip()
                named = res.headers.get("Docker-Content-Digest", "").strip()
            return self._checked_manifest(repository, reference, data, media_type, named)

    def _checked_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str, named: str
    ) -> tuple[bytes, str, str]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(
                f"manifest {repository}@{reference} from {self.host} does not match its digest (its bytes are {digest})",
                hint=data_hint(self.host),
                digest=reference,
            )
        if named and not _names_bytes(named, data):
            raise IntegrityError(
                f"manifest {repository}:{reference} from {self.host}: the registry names it {named[:80]} "
                f"(Docker-Content-Digest), but its bytes are {digest}",
                hint=data_hint(self.host),
                digest=named[:80],
            )
        if media_type not in MANIFEST_TYPES:
            with contextlib.suppress(ValueError, AttributeError):
                media_type = str(json.loads(data).get("mediaType", media_type))
        return data, media_type, digest

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        found = self.get_manifest(repository, reference)
        return None if found is None else found[2]

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag or its digest; its digest is computed before it is sent, and an answer naming
        another digest is refused."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise InternalError(f"manifest {digest} was to be pushed as {reference}")
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
        answered = res.headers.get("Docker-Content-Digest", "").strip()
        if answered and answered != digest:
            raise IntegrityError(
                f"registry {self.host} stored manifest {repository}:{reference} as {answered[:80]}, not {digest} "
                "(the digest of the bytes sent)",
                hint=data_hint(self.host),
                digest=answered[:80],
            )
        return digest

    def check_tag(self, repository: str, tag: str, digest: str, replace: bool) -> None:
        """Never move a tag silently: refuse when ``tag`` names another manifest, unless ``replace``."""
        current = self.manifest_digest(repository, tag)
        if current is not None and current != digest and not replace:
            raise ConflictError(
                f"{self.host}/{repository}:{tag} already names manifest {current[:19]}, this one is {digest[:19]}",
                hint="pass --replace to move the tag",
            )


class _Upload:
    """One blob upload: its session's Location, how far the registry's copy goes, and what to do after a failure."""

    def __init__(self, registry: Registry, repository: str, digest: str, size: int, source: _Source, chunk: int) -> None:
        self.registry = registry
        self.repository = repository
        self.scope = _scope(repository, True)
        self.digest = digest
        self.size = size
        self.source = source
        self.chunk = max(1, chunk)
        self.what = f"uploading {digest[:19]}"
        self.backoff = _Backoff(registry.retry)
        self.location: str | None = None
        self.whole = False  # one PUT: the registry refused chunks
        self.started_over_for_digest = False

    def run(self) -> None:
        try:
            while not self._go():
                pass
        except Exception:
            self._abandon()
            raise
        finally:
            self.source.close()

    def _go(self) -> bool:
        """One go from where the upload stands: True once the registry holds the blob."""
        if self.location is None:
            self.location = self.registry._start_upload(self.repository, self.scope)
        try:
            if self.whole:
                self._put_whole()
            else:
                self._put_chunks()
                self.source.check_end()
                self._finish(self._send("PUT", self._with_digest(), {"Content-Length": "0"}, b""))
        except _ChunksRefused as refused:
            if not self.source.can_restart:
                raise RegistryError(
                    f"{refused.error.message}: the registry takes no chunked uploads, and this blob cannot be read again",
                    hint=refused.error.hint,
                ) from refused
            self._abandon()
            self.whole = True
            self.source.restart(0)
            return False
        except _Reset as e:
            return self._recover(_Again(e))
        except _Again as again:
            return self._recover(again)
        self.location = None  # the registry holds the blob: nothing to delete
        return True

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any) -> requests.Response:
        """One request of the upload, sent once: a body read from the source is not sent again from here."""
        return self.registry._attempt(method, url, self.scope, headers, data, None, False, self.what, challenge=False)

    def _with_digest(self) -> str:
        assert self.location is not None  # noqa: S101 - set by _go before any request
        return f"{self.location}{'&' if '?' in self.location else '?'}digest={self.digest}"

    def _put_chunks(self) -> None:
        while self.source.pos < self.size:
            assert self.location is not None  # noqa: S101 - set by _go before any request
            start = self.source.pos
            n = min(self.chunk, self.size - start)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + n - 1}",
                "Content-Length": str(n),
            }
            res = self._send("PATCH", self.location, headers, self.source.body(n))
            if res.status_code == 202:
                self.location = _location(res, self.registry.base)
                stands = _upload_end(res)
                res.close()
                if stands is not None and stands != start + n and (stands, start + n) != (0, 1):  # 0-0: one byte
                    raise _Again(
                        RegistryError(
                            f"registry {self.registry.host} holds {stands} bytes of the upload of {self.digest[:19]} "
                            f"after {start + n} were sent",
                            hint=f"registry {self.registry.host} (or a proxy in front of it) loses upload data: check it",
                        )
                    )
                self.backoff.progress()
                continue
            raise self._refusal(res, first=start == 0)

    def _put_whole(self) -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(self.size)}
        self._finish(self._send("PUT", self._with_digest(), headers, self.source.body(self.size)))
        self.source.check_end()

    def _refusal(self, res: requests.Response, first: bool = False, body: dict[str, Any] | None = None) -> Exception:
        """What a non-success answer to an upload request means: try again, start over, send whole, or fail."""
        status = res.status_code
        retry_after = _retry_after(res)
        error = _failure(f"registry {self.registry.host}", self.registry.host, res, self.what, body)
        if first and status in _CHUNKS_REFUSED:
            return _ChunksRefused(error)
        if status in RETRY_STATUSES or status == 416:
            return _Again(error, retry_after)
        if status == 401 and self.registry._bearer_challenge:  # the token expired early: a new one, and on
            self.registry._fetch_token(self.scope)
            return _Again(error)
        if status == 404:  # the upload session expired or was cancelled
            return _Again(error, start_over=True)
        return error

    def _finish(self, res: requests.Response) -> None:
        """The answer to the PUT that ends the upload."""
        if res.status_code in (201, 204):
            res.close()
            return
        body = _error_body(res)
        code = str(body.get("code", ""))
        if res.status_code == 404 and self.registry.has_blob(self.repository, self.digest, push=True):
            res.close()  # an earlier PUT took effect and its answer was lost
            return
        if res.status_code == 400 and code in ("DIGEST_INVALID", "SIZE_INVALID"):
            res.close()
            if self.whole and self.source.pos == self.size:
                self.source.check_end()  # our own bytes first: a damaged bundle is the bundle's error
            error = IntegrityError(
                f"registry {self.registry.host} received blob {self.digest} with other bytes ({code})",
                hint=data_hint(self.registry.host),
                digest=self.digest,
            )
            if self.started_over_for_digest:
                raise error
            self.started_over_for_digest = True
            raise _Again(RegistryError(error.message, hint=error.hint, digest=self.digest), start_over=True)
        if res.status_code == 400 and code in ("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"):
            raise _Again(_failure(f"registry {self.registry.host}", self.registry.host, res, self.what, body), start_over=True)
        raise self._refusal(res, body=body)

    def _recover(self, again: _Again) -> bool:
        """Wait, then go on where the registry's copy ends, or start over in a new upload.  True when the registry
        turns out to hold the blob (the answer to the PUT that ended the upload was lost)."""
        if not self.source.can_restart:
            raise again.error
        self.backoff.wait(again.error, again.retry_after)
        stands = None if again.start_over or self.whole else self._stands()
        if stands is not None:
            self.source.restart(stands)
            return False
        self._abandon()
        if self.registry.has_blob(self.repository, self.digest, push=True):
            return True  # the registry checked the digest when it took the blob
        self.source.restart(0)
        return False

    def _stands(self) -> int | None:
        """How many bytes the registry holds of this upload (GET on its Location), None when it cannot say."""
        if self.location is None:
            return None
        try:
            res = self.registry.request(
                "GET", self.location, self.scope, ok=(204, 200), what=f"the state of the upload of {self.digest[:19]}", tries=2
            )
        except _GaveUp:
            raise
        except RegistryError:
            return None
        with contextlib.suppress(RegistryError):
            self.location = _location(res, self.registry.base)
        stands = _upload_end(res)
        res.close()
        return stands if stands is not None and 0 <= stands <= self.size else None

    def _abandon(self) -> None:
        """Delete the upload session this upload no longer uses."""
        location, self.location = self.location, None
        if location is not None:
            with contextlib.suppress(RegistryError):
                self.registry._cancel(location, self.scope)


class _ResumingBody(io.RawIOBase):
    """A blob download's body that resumes where it broke: the rest is asked with ``Range`` (what a registry that
    ignores ``Range`` sends again is skipped), within the client's retry bound, counted from the last progress."""

    def __init__(
        self, registry: Registry, repository: str, digest: str, res: requests.Response, start: int, backoff: _Backoff
    ) -> None:
        super().__init__()
        self._registry = registry
        self._repository = repository
        self._digest = digest
        self._raw: Any = res.raw  # the answer now read (urllib3's); the Response itself reads through this body
        self._pos = start  # the offset in the blob of the next byte
        self._skip = 0  # bytes the current answer repeats
        self._backoff = backoff

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._raw is not None:
            try:
                data = self._raw.read(len(view), decode_content=False)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
                self._resume(e)
                continue
            if not data:
                self._drop()
                return 0
            if self._skip:
                dropped = min(self._skip, len(data))
                self._skip -= dropped
                data = data[dropped:]
                if not data:
                    continue
            self._backoff.progress()
            view[: len(data)] = data
            self._pos += len(data)
            return len(data)
        return 0

    def _resume(self, e: Exception) -> None:
        self._drop()
        host = self._registry.host
        self._backoff.wait(
            _Reset(
                f"download of blob {self._digest[:19]} from registry {host} was cut off at byte {self._pos}: {str(e)[:160]}",
                hint=network_hint(host),
                digest=self._digest,
            )
        )
        res, start = self._registry._get_blob(self._repository, self._digest, self._pos)
        self._raw = res.raw
        self._skip = self._pos - start

    def _drop(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()
            raw.release_conn()

    def close(self) -> None:
        self._drop()
        super().close()


def _scope(repository: str, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _merge_scopes(text: str) -> list[str]:
    """Scope items (``TYPE:NAME:ACTIONS``, separated by spaces), the actions of one resource merged into one item."""
    merged: dict[str, dict[str, None]] = {}
    for item in text.split():
        resource, _, actions = item.rpartition(":")
        if not resource:
            resource, actions = item, ""
        merged.setdefault(resource, {}).update(dict.fromkeys(a for a in actions.split(",") if a))
    return [f"{resource}:{','.join(actions)}" if actions else resource for resource, actions in merged.items()]


def _location(res: requests.Response, base: str) -> str:
    """Where an upload goes on: any origin the registry names (credentials follow only to its own)."""
    location = res.headers.get("Location")
    if not location:
        raise RegistryError(f"registry at {base} started an upload without a Location")
    url = urljoin(res.url or base + "/", location)
    Origin.of(url)  # http(s) and readable, or refused
    return url


def _upload_end(res: requests.Response) -> int | None:
    """How many bytes an upload holds, from its ``Range: 0-LAST`` header; None when not said.  ``0-0`` is read as
    none: distribution writes it for an empty upload (and for one byte, which a resumed upload then sends again)."""
    found = re.fullmatch(r"(?:bytes=)?0-(-?\d+)", res.headers.get("Range", "").strip())
    if found is None:
        return None
    last = int(found[1])
    return last + 1 if last > 0 else 0


_DIGEST_HEADER_RE = re.compile(r"^(sha256|sha384|sha512):([0-9a-f]+)$")


def _names_bytes(named: str, data: bytes) -> bool:
    """Whether a digest the registry names (``Docker-Content-Digest``) is the digest of ``data``."""
    found = _DIGEST_HEADER_RE.fullmatch(named)
    return found is not None and hashlib.new(found[1], data).hexdigest() == found[2]


def _error_body(res: requests.Response) -> dict[str, Any]:
    """An error answer's first ``errors`` entry (the distribution API's error format), {} when there is none."""
    try:
        data = b""
        for chunk in res.iter_content(READ_BLOCK):
            data += chunk
            if len(data) > _ERROR_LIMIT:
                return {}
        first = json.loads(data)["errors"][0]
    except (ValueError, KeyError, IndexError, TypeError, requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        return {}
    return first if isinstance(first, dict) else {}


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
        raise _Reset(f"reading {what} was cut off: {str(e)[:200]}", hint="run the same command again") from e
    return b"".join(chunks)
