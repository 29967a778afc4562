"""An OCI distribution registry in memory, behind the client's :class:`Transport` seam: no process, no socket.

As python-tuf's ``RepositorySimulator`` stands in for a TUF repository, :class:`MemoryRegistry` answers
the requests :class:`~airgap._internal.clients.distribution.Registry` sends with ``requests.Response``
objects whose bodies stream, so every line of the real client (authentication, redirects, credential
scoping, chunked uploads, digest checks) runs as against a real registry.  It speaks what airgap uses:

- ``GET /v2/``; manifests by tag or digest (GET, HEAD, PUT; a PUT naming blobs or manifests the
  repository lacks is refused, as distribution refuses it); blobs (GET with ``Range``, HEAD);
- uploads: ``POST`` (with ``?mount=&from=`` for a cross-repository mount), ``PATCH`` chunks with
  ``Content-Range``, ``GET`` (where the upload stands: ``Range: 0-LAST``), ``PUT ?digest=`` (with the last
  bytes or the whole blob; the digest is checked), ``DELETE``;
- ``auth="basic"`` or ``auth="bearer"``: 401 challenges, and for bearer a token service at
  :data:`TOKEN_REALM` granting the scopes asked for, less ``denied`` (a mount needs pull on its source, as in
  distribution, whose challenges name every scope a request needs);
- ``storage=True``: blob downloads redirect to, and uploads go on at, :data:`STORAGE`, another origin that
  takes no credentials (as S3 or a CDN behind a registry).

Faults a test can set: :meth:`fail` (matching requests answer an error, with ``Retry-After`` or any header,
or drop the connection, before or after taking effect), :meth:`corrupt_blob` (bytes that do not match the
digest), :meth:`cut_body` (a body that breaks or stalls after N bytes), :meth:`oversize_body` (more bytes
than declared), ``answer_digest`` (a manifest stored under another digest), ``header_digest`` (a manifest
served under another ``Docker-Content-Digest``), ``ranges=False`` (``Range`` ignored), ``refuse_patch``
(chunked uploads refused with that status), ``refuse_mount`` (mounts answered with that status), ``denied``
(scopes the token service never grants), and ``hook`` for anything else.  Every request is kept in
``requests`` for assertions; ``open_uploads`` lists the upload sessions never finished or deleted.

``MemoryRegistry(...).install(monkeypatch)`` makes every ``Registry`` built while a test runs (by pack,
install or publish) talk to the fake, and wait no real time between retries: each wait is recorded in
``slept``.  ``client()`` builds one such ``Registry``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import itertools
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from airgap._internal.clients import distribution
from airgap.model.mediatypes import INDEX_TYPES, MT_DOCKER_CONFIG, MT_DOCKER_LAYER, MT_DOCKER_MANIFEST, MT_OCI_INDEX

HOST = "registry.test"
TOKEN_REALM = "https://auth.registry.test/token"
STORAGE = "https://storage.registry.test"
BLOCK = 64 << 10  # bodies stream in blocks this large

_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_UPLOAD_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[^/]*)$")
_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_STORAGE_BLOB = re.compile(r"^/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_STORAGE_UPLOAD = re.compile(r"^/uploads/(?P<id>[^/]+)$")


def tar_layer(name: str, content: bytes) -> bytes:
    """An uncompressed layer holding one file (its digest is its diff_id)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Request:
    """One request as the registry (or its token service, or its storage) received it."""

    method: str
    url: str  # with the query
    headers: CaseInsensitiveDict[str]
    body: bytes
    streamed: bool = False  # the client sent the body as a stream (read as sent), not as bytes in memory

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query))


@dataclass
class Reply:
    """An answer: ``body`` is bytes or blocks produced as the client reads them."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""


@dataclass
class Repository:
    blobs: set[str] = field(default_factory=set)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # digest -> (bytes, media type)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest


@dataclass
class _Upload:
    repo: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Failure:
    status: int | None  # None: the connection drops without an answer
    method: str | None
    path: str
    nth: int
    times: int | None  # None: every matching request from the nth on
    headers: dict[str, str]
    code: str  # the error code in the answer's body
    taken: bool  # the request takes effect before the failure
    keep: int | None  # ... only the first bytes of its body
    seen: int = 0

    def matches(self, r: Request) -> bool:
        if (self.method is not None and self.method != r.method) or self.path not in r.url:
            return False
        self.seen += 1
        return self.seen >= self.nth and (self.times is None or self.seen < self.nth + self.times)


@dataclass
class _BodyFault:
    path: str
    cut_after: int | None = None
    error: type[OSError] = ConnectionResetError
    extra: int = 0
    times: int | None = None  # bodies it applies to (None: all)
    seen: int = 0


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, body)


class MemoryRegistry:
    """A registry at ``host`` (its token service at :data:`TOKEN_REALM`, its storage at :data:`STORAGE`),
    implementing the client's ``Transport`` protocol."""

    def __init__(
        self,
        host: str = HOST,
        *,
        auth: Literal["none", "basic", "bearer"] = "none",
        login: tuple[str, str] | None = None,
        storage: bool = False,
        token_lifetime: int = 300,
    ) -> None:
        self.host = host
        self.auth = auth
        self.login = login  # required by Basic auth, and by the token service when set
        self.storage = storage
        self.token_lifetime = token_lifetime
        self.blobs: dict[str, bytes] = {}  # content store shared by the repositories
        self.repos: dict[str, Repository] = {}
        self.requests: list[Request] = []
        self.tokens: dict[str, frozenset[tuple[str, str]]] = {}  # token -> (repository, action) granted
        self.scopes_asked: list[str] = []  # each token request's scopes, as the client asked
        self.answer_digest: str | None = None  # a manifest PUT answers this Docker-Content-Digest
        self.header_digest: str | None = None  # a manifest GET answers this Docker-Content-Digest
        self.ranges = True  # honour Range on blob downloads
        self.refuse_patch: int | None = None  # PATCH on an upload answers this status: no chunked uploads
        self.refuse_mount: int | None = None  # a mount answers this status (202: an ordinary upload starts instead)
        self.denied: set[tuple[str, str]] = set()  # (repository, action) the token service never grants
        self.slept: list[float] = []  # the client's waits between retries, when installed
        self.hook: Callable[[Request], Reply | None] | None = None  # runs first; a Reply answers the request
        self._corrupt: dict[str, bytes] = {}
        self._failures: list[_Failure] = []
        self._body_faults: list[_BodyFault] = []
        self._uploads: dict[str, _Upload] = {}
        self._ids = itertools.count(1)

    # -- seeding and looking ----------------------------------------------------------------------
    def repo(self, name: str) -> Repository:
        return self.repos.setdefault(name, Repository())

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        self.repo(repo).blobs.add(digest)
        return digest

    def put_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = digest_of(data)
        self.repo(repo).manifests[digest] = (data, media_type)
        if tag is not None:
            self.repo(repo).tags[tag] = digest
        return digest

    def put_image(self, repo: str, tag: str | None, layers: list[bytes], os: str = "linux", architecture: str = "amd64") -> str:
        """A Docker schema 2 image of uncompressed ``layers`` (their digests are their diff_ids)."""
        config = {
            "architecture": architecture,
            "os": os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
        }
        config_bytes = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_DOCKER_CONFIG, "digest": self.put_blob(repo, config_bytes), "size": len(config_bytes)},
            "layers": [
                {"mediaType": MT_DOCKER_LAYER, "digest": self.put_blob(repo, layer), "size": len(layer)} for layer in layers
            ],
        }
        return self.put_manifest(repo, json.dumps(manifest).encode(), MT_DOCKER_MANIFEST, tag)

    def put_index(self, repo: str, tag: str, images: list[tuple[str, str, str]]) -> str:
        """An OCI index of manifests already in ``repo``: (digest, os, architecture) each."""
        entries = []
        for digest, os_name, arch in images:
            data, media_type = self.repo(repo).manifests[digest]
            entries.append(
                {"mediaType": media_type, "digest": digest, "size": len(data), "platform": {"os": os_name, "architecture": arch}}
            )
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
        return self.put_manifest(repo, json.dumps(index).encode(), MT_OCI_INDEX, tag)

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of a manifest by tag or digest, or None."""
        r = self.repos.get(repo) or Repository()
        return r.manifests.get(r.tags.get(reference, reference))

    def seen(self, method: str, path_part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and path_part in r.url]

    @property
    def open_uploads(self) -> list[str]:
        """Upload sessions started and neither finished nor deleted."""
        return sorted(self._uploads)

    # -- faults -----------------------------------------------------------------------------------
    def fail(
        self,
        status: int | None = 500,
        *,
        method: str | None = None,
        path: str = "",
        nth: int = 1,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        code: str = "UNKNOWN",
        taken: bool = False,
        keep: int | None = None,
    ) -> None:
        """From the ``nth`` request of ``method`` whose URL contains ``path`` (any request when neither is given),
        ``times`` requests (None: all) answer ``status`` with an error ``code`` and ``headers`` (``Retry-After``...);
        ``status=None`` drops the connection instead.  With ``taken``, the request takes effect first (the answer
        is lost on the way back), with ``keep`` only the first ``keep`` bytes of its body (a PATCH cut midway)."""
        self._failures.append(_Failure(status, method, path, nth, times, headers or {}, code, taken or keep is not None, keep))

    def corrupt_blob(self, digest: str, data: bytes) -> None:
        """Serve ``data`` (which does not hash to ``digest``) whenever ``digest`` is downloaded."""
        self._corrupt[digest] = data

    def cut_body(self, path: str, after: int, error: type[OSError] = ConnectionResetError, times: int | None = None) -> None:
        """Bodies of GETs whose URL contains ``path`` (the first ``times`` of them; None: all) raise ``error`` after
        ``after`` bytes: a reset connection, or with ``TimeoutError`` a peer that stalls until the client's read
        timeout."""
        self._body_faults.append(_BodyFault(path, cut_after=after, error=error, times=times))

    def oversize_body(self, path: str, extra: int) -> None:
        """Bodies of GETs whose URL contains ``path`` go on for ``extra`` bytes more (made as they are read)."""
        self._body_faults.append(_BodyFault(path, extra=extra))

    def clear_faults(self) -> None:
        """The network is back: no more injected failures or body faults (``hook`` stays)."""
        self._failures.clear()
        self._body_faults.clear()
        self._corrupt.clear()

    # -- wiring -----------------------------------------------------------------------------------
    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every ``Registry`` made until the test ends sends its requests here instead of the network, and records
        its waits between retries in ``slept`` instead of sleeping."""
        monkeypatch.setattr(distribution, "SessionTransport", lambda: self)
        monkeypatch.setattr(distribution, "DEFAULT_RETRY", self.retry_policy())

    def retry_policy(self, **changes: Any) -> distribution.RetryPolicy:
        """The client's default retry policy, waiting no real time (each wait is recorded in ``slept``)."""
        return dataclasses.replace(distribution.DEFAULT_RETRY, sleep=self.slept.append, **changes)

    def client(self, plain_http: bool = False, **retry: Any) -> distribution.Registry:
        """A client of this registry; ``retry`` changes its retry policy (``tries=``, ``budget=``...)."""
        return distribution.Registry(self.host, plain_http, transport=self, retry=self.retry_policy(**retry))

    # -- the Transport protocol -------------------------------------------------------------------
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
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        streamed = data is not None and not isinstance(data, (bytes, str))
        request = Request(method, url, CaseInsensitiveDict(dict(headers)), _read_body(data), streamed)
        self.requests.append(request)
        reply = self._answer(request)
        return _response(request, reply, stream)

    def close(self) -> None:
        pass  # the registry's state outlives each client

    # -- answering --------------------------------------------------------------------------------
    def _answer(self, r: Request) -> Reply:
        for f in self._failures:
            if f.matches(r):
                if f.taken:
                    self._route(r if f.keep is None else dataclasses.replace(r, body=r.body[: f.keep]))
                if f.status is None:
                    raise requests.ConnectionError(f"connection to {r.netloc} reset (injected)")
                return _error(f.status, f.code, f"injected failure of {r.method} {r.path}", f.headers)
        return self._route(r)

    def _route(self, r: Request) -> Reply:
        if self.hook is not None and (reply := self.hook(r)) is not None:
            return reply
        if r.netloc == urlsplit(TOKEN_REALM).netloc:
            return self._token(r)
        if r.netloc == urlsplit(STORAGE).netloc and self.storage:
            return self._storage(r)
        if r.netloc != self.host:
            message = f"cannot resolve {r.netloc} (the in-memory registry is {self.host})"
            raise requests.ConnectionError(urllib3.exceptions.NewConnectionError(None, message))  # type: ignore[arg-type]
        denied = self._authorize(r)
        if denied is not None:
            return denied
        if r.path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        if m := _UPLOAD_PATH.match(r.path):
            return self._upload(r, m["repo"], m["id"])
        if m := _BLOB_PATH.match(r.path):
            return self._blob(r, m["repo"], m["digest"])
        if m := _MANIFEST_PATH.match(r.path):
            return self._manifest(r, m["repo"], m["ref"])
        return _error(404, "NAME_UNKNOWN", f"no route for {r.method} {r.path}")

    def _authorize(self, r: Request) -> Reply | None:
        given = r.headers.get("Authorization", "")
        if self.auth == "basic":
            user, password = self.login or ("", "")
            if given == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                return None
            return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": f'Basic realm="{self.host}"'})
        if self.auth == "bearer":
            needed = _needed(r)
            granted = self.tokens.get(given.removeprefix("Bearer "), None) if given.startswith("Bearer ") else None
            if granted is not None and needed <= granted:
                return None
            challenge = f'Bearer realm="{TOKEN_REALM}",service="{self.host}"'
            if needed:  # every scope the request needs, as distribution names them
                repos = sorted({n for n, _ in needed})
                scopes = " ".join(f"repository:{n}:{','.join(sorted(a for m, a in needed if m == n))}" for n in repos)
                challenge += f',scope="{scopes}"'
            if granted is not None:
                challenge += ',error="insufficient_scope"'
            return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
        return None

    def _token(self, r: Request) -> Reply:
        if self.login is not None:
            user, password = self.login
            if r.headers.get("Authorization") != "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                return _error(401, "UNAUTHORIZED", "bad credentials")
        scopes = [v for k, v in parse_qsl(urlsplit(r.url).query) if k == "scope"]
        self.scopes_asked.append(" ".join(scopes))
        granted = set()
        for scope in scopes:
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository":
                    granted |= {(name, action) for action in actions.split(",") if (name, action) not in self.denied}
        token = f"token-{next(self._ids)}"
        self.tokens[token] = frozenset(granted)
        return Reply(
            200, {"Content-Type": "application/json"}, json.dumps({"token": token, "expires_in": self.token_lifetime}).encode()
        )

    def _manifest(self, r: Request, repo: str, ref: str) -> Reply:
        if r.method in ("GET", "HEAD"):
            found = self.manifest(repo, ref)
            if found is None:
                return _error(404, "MANIFEST_UNKNOWN", f"manifest {repo}:{ref} unknown")
            data, media_type = found
            named = self.header_digest or digest_of(data)
            return self._body(r, 200, {"Content-Type": media_type, "Docker-Content-Digest": named}, data)
        if r.method != "PUT":
            return _error(405, "UNSUPPORTED", f"{r.method} on a manifest")
        media_type = r.headers.get("Content-Type", "")
        digest = digest_of(r.body)
        if ref.startswith("sha256:") and ref != digest:
            return _error(400, "DIGEST_INVALID", f"manifest body is {digest}, not {ref}")
        try:
            body = json.loads(r.body)
        except ValueError:
            return _error(400, "MANIFEST_INVALID", "not JSON")
        stored = self.repo(repo)
        if media_type in INDEX_TYPES:
            missing = [d["digest"] for d in body.get("manifests", []) if d["digest"] not in stored.manifests]
        else:
            missing = [d["digest"] for d in [body.get("config"), *body.get("layers", [])] if d["digest"] not in stored.blobs]
        if missing:
            return _error(400, "MANIFEST_BLOB_UNKNOWN", f"{repo} does not hold {missing[0]}")
        self.put_manifest(repo, r.body, media_type, None if ref.startswith("sha256:") else ref)
        answered = self.answer_digest or digest
        return Reply(201, {"Location": f"/v2/{repo}/manifests/{answered}", "Docker-Content-Digest": answered})

    def _blob(self, r: Request, repo: str, digest: str) -> Reply:
        if r.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", f"{r.method} on a blob")
        if digest not in self.repo(repo).blobs:
            return _error(404, "BLOB_UNKNOWN", f"blob {digest} unknown to {repo}")
        if self.storage and r.method == "GET":
            return Reply(307, {"Location": f"{STORAGE}/blobs/{digest}?signature=s3"})
        return self._blob_bytes(r, digest)

    def _blob_bytes(self, r: Request, digest: str) -> Reply:
        data = self._corrupt.get(digest, self.blobs[digest])
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        asked = re.fullmatch(r"bytes=(\d+)-", r.headers.get("Range", ""))
        if asked and self.ranges:
            start = int(asked[1])
            if start >= len(data):
                return _error(416, "RANGE_INVALID", f"{start} is beyond {len(data)} bytes")
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._body(r, 206, headers, data[start:])
        return self._body(r, 200, headers, data)

    def _upload(self, r: Request, repo: str, upload_id: str) -> Reply:
        stored = self.repo(repo)
        if r.method == "POST" and not upload_id:
            mount, source = r.query.get("mount"), r.query.get("from")
            if mount and self.refuse_mount is not None and self.refuse_mount != 202:
                return _error(self.refuse_mount, "DENIED", f"no mount of {mount} here")
            if mount and source and mount in self.repo(source).blobs and self.refuse_mount is None:
                stored.blobs.add(mount)
                return Reply(201, {"Location": f"/v2/{repo}/blobs/{mount}", "Docker-Content-Digest": mount})
            upload_id = str(next(self._ids))
            self._uploads[upload_id] = _Upload(repo)
            return Reply(202, {"Location": self._upload_url(repo, upload_id), "Range": "0-0", "Docker-Upload-UUID": upload_id})
        upload = self._uploads.get(upload_id)
        if upload is None or upload.repo != repo:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} unknown")
        return self._continue_upload(r, upload_id, upload)

    def _upload_url(self, repo: str, upload_id: str) -> str:
        if self.storage:
            return f"{STORAGE}/uploads/{upload_id}?signature=s3"
        return f"/v2/{repo}/blobs/uploads/{upload_id}?_state={upload_id}"

    def _continue_upload(self, r: Request, upload_id: str, upload: _Upload) -> Reply:
        if r.method == "DELETE":
            del self._uploads[upload_id]
            return Reply(204)
        if r.method == "GET":  # where the upload stands, as distribution says it
            location = self._upload_url(upload.repo, upload_id)
            return Reply(204, {"Location": location, "Range": f"0-{len(upload.data) - 1}", "Docker-Upload-UUID": upload_id})
        if r.method == "PATCH" and self.refuse_patch is not None:
            return _error(self.refuse_patch, "UNSUPPORTED", "chunked uploads are not supported")
        if r.method == "PATCH":
            start = int(r.headers.get("Content-Range", f"{len(upload.data)}-").split("-")[0])
            if start != len(upload.data):
                return _error(416, "BLOB_UPLOAD_INVALID", f"chunk starts at {start}, upload has {len(upload.data)}")
            upload.data += r.body
            location = self._upload_url(upload.repo, upload_id)
            return Reply(202, {"Location": location, "Range": f"0-{len(upload.data) - 1}", "Docker-Upload-UUID": upload_id})
        if r.method == "PUT":
            upload.data += r.body
            digest = r.query.get("digest", "")
            if digest_of(bytes(upload.data)) != digest:
                return _error(400, "DIGEST_INVALID", f"upload {upload_id} does not match {digest}")
            del self._uploads[upload_id]
            self.put_blob(upload.repo, bytes(upload.data))
            return Reply(201, {"Location": f"/v2/{upload.repo}/blobs/{digest}", "Docker-Content-Digest": digest})
        return _error(405, "UNSUPPORTED", f"{r.method} on an upload")

    def _storage(self, r: Request) -> Reply:
        """Blob storage on another origin: presigned URLs, no credentials asked or needed."""
        if (m := _STORAGE_BLOB.match(r.path)) and r.method == "GET" and m["digest"] in self.blobs:
            return self._blob_bytes(r, m["digest"])
        if (m := _STORAGE_UPLOAD.match(r.path)) and m["id"] in self._uploads:
            return self._continue_upload(r, m["id"], self._uploads[m["id"]])
        return Reply(404)

    def _body(self, r: Request, status: int, headers: dict[str, str], data: bytes) -> Reply:
        """A reply of ``data`` in blocks, with the body faults set for this URL (its length counts the extra bytes)."""
        faults = [f for f in self._body_faults if r.method == "GET" and f.path in r.url and (f.times is None or f.seen < f.times)]
        for f in faults:
            f.seen += 1
        length = len(data) + sum(f.extra for f in faults)
        return Reply(status, {**headers, "Content-Length": str(length)}, self._blocks(r, data, faults))

    def _blocks(self, r: Request, data: bytes, faults: list[_BodyFault]) -> Iterator[bytes]:
        sent = 0
        for start in range(0, len(data), BLOCK):
            block = data[start : start + BLOCK]
            for f in faults:
                if f.cut_after is not None and sent + len(block) > f.cut_after:
                    yield block[: f.cut_after - sent]
                    raise f.error(f"body of {r.path} cut after {f.cut_after} bytes (injected)")
            sent += len(block)
            yield block
        for f in faults:
            for start in range(0, f.extra, BLOCK):
                yield bytes(min(BLOCK, f.extra - start))


def _needed(r: Request) -> frozenset[tuple[str, str]]:
    """The (repository, action) pairs a request needs, as distribution's token auth counts them."""
    m = _UPLOAD_PATH.match(r.path) or _BLOB_PATH.match(r.path) or _MANIFEST_PATH.match(r.path)
    if m is None:
        return frozenset()
    actions = ("pull",) if r.method in ("GET", "HEAD") else ("pull", "push")
    needed = {(m["repo"], action) for action in actions}
    if r.method == "POST" and "from" in r.query:
        needed.add((r.query["from"], "pull"))  # a mount reads the source repository
    return frozenset(needed)


def _read_body(data: Any) -> bytes:
    """What the client sends: nothing, bytes, or a readable object (the client's upload chunks)."""
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    out = bytearray()
    while block := data.read(BLOCK):
        out += block
    return bytes(out)


class _BlockStream(io.RawIOBase):
    """A readable file over an iterator of blocks: what urllib3 reads a body from."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        super().__init__()
        self._blocks = blocks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = block
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _response(request: Request, reply: Reply, stream: bool) -> requests.Response:
    """``reply`` as requests' HTTPAdapter builds a response: a urllib3 body, read as the client reads it."""
    headers = dict(reply.headers)
    if isinstance(reply.body, bytes):
        headers.setdefault("Content-Length", str(len(reply.body)))
    body = iter(()) if request.method == "HEAD" else iter([reply.body]) if isinstance(reply.body, bytes) else iter(reply.body)
    raw = urllib3.HTTPResponse(
        body=_BlockStream(body),
        headers=headers,
        status=reply.status,
        reason=HTTPStatus(reply.status).phrase,
        preload_content=False,
        decode_content=False,
        request_method=request.method,
        request_url=request.url,
    )
    res = requests.Response()
    res.status_code = reply.status
    res.headers = CaseInsensitiveDict(headers)
    res.raw = raw
    res.url = request.url
    res.reason = raw.reason or ""
    res.encoding = requests.utils.get_encoding_from_headers(res.headers)
    if not stream:
        res.content  # noqa: B018 - read now, as requests does without stream=True
    return res
