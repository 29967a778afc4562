"""Image source: images in the Docker engine (DOCKER_HOST), named as ``docker images`` shows them.

Every engine image of one pack comes out of one export call (``GET /images/get``, what ``docker save``
does): the engine writes a docker-save archive, read like any other (``archive.py``).  Images without
layers (``FROM scratch`` and metadata only) come out of a call of their own: dockerd's export refuses
them ("empty export - not implemented", ``docker save`` too), Podman's does not.  When the export refuses
them, a local engine pushes them instead (``POST /images/{name}/push``, as ``docker push``) to a
short-lived receiver on 127.0.0.1 that takes blobs and manifests in memory, bounded: the config the engine
pushes is its own bytes, kept only when their sha256 is the image ID, so the image packs exactly as an
export would have given it.  Nothing else about the image is needed: it has no layers.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from airgap._internal.clients.docker import EngineClient
from airgap._internal.sources.archive import images_from_archive, read_archive
from airgap._internal.sources.base import BlobStore, ImageSource, OpenContext, Source, SourceKind
from airgap._internal.util import fsutil, tarstream
from airgap._internal.util.pipeline import PrefetchReader
from airgap.errors import DockerError, UsageError
from airgap.model.manifest import Image, SourceIndex
from airgap.model.reference import InvalidReference, Reference

if TYPE_CHECKING:
    from airgap.progress import Reporter

EXPORT_SLACK = 64 << 20  # room beyond the images' size the engine's temporary export copy may take


@dataclass(frozen=True)
class EngineImage(Source):
    """An image in the engine: a bare name, or ``docker-daemon:NAME`` (as skopeo writes it)."""

    kind: ClassVar[str] = "docker"
    prefixes: ClassVar[tuple[str, ...]] = ("", "docker-daemon:")
    ref: str

    @classmethod
    def parse(cls, prefix: str, rest: str) -> EngineImage:
        """Any name no other kind claims; one with a ``://`` is no image name."""
        if not rest or "://" in rest:
            raise UsageError(
                f"cannot read image source {rest!r}",
                hint="name an image in the engine, docker-archive:PATH, oci-archive:PATH or oci://HOST/REPO:TAG",
            )
        return cls(rest)

    def resume_inputs(self) -> list[str | None]:
        """``["docker", NAME, None]``."""
        return [self.kind, self.ref, None]

    def __str__(self) -> str:
        """The image's name."""
        return self.ref


class EngineExport:
    """The engine images of one pack, exported in one call; both their opener and their image source."""

    def __init__(self, ctx: OpenContext) -> None:
        """Connect to the engine: before any source is checked, as the first check is whether it answers."""
        self._engine = ctx.connect()
        ctx.stack.callback(self._engine.close)
        self._reporter: Reporter = ctx.reporter
        self._refs: list[str] = []
        self._layerless: list[str] = []  # images without layers: exported on their own
        self._size = 0

    def add(self, source: EngineImage) -> None:
        """Check that the engine has the image; its size there counts towards the estimate."""
        found = self._engine.inspect(source.ref)
        if found is None:
            raise UsageError(
                f"image {source.ref} is not in the Docker engine",
                hint="check 'docker images', or name an archive with docker-archive:PATH",
            )
        rootfs = found.get("RootFS")  # {"Type": "layers"} alone for an image without layers
        (self._layerless if isinstance(rootfs, dict) and not rootfs.get("Layers") else self._refs).append(source.ref)
        self._size += int(found.get("Size") or 0)

    def sources(self) -> list[ImageSource]:
        """This export, if an engine image was named."""
        return [self] if self._refs or self._layerless else []

    @property
    def name(self) -> str:
        """The images' names."""
        return ", ".join(self._refs + self._layerless)

    def estimate(self) -> int:
        """The images' sizes as the engine reports them."""
        return self._size

    def check_room(self) -> None:
        """The engine copies the images into a temporary directory of its data root before it streams them."""
        root = self._engine.root_dir()
        if root is not None:
            fsutil.require_space(root, self._size + EXPORT_SLACK, "the Docker engine's export (a temporary copy of the image)")

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Read the export into ``store``.  ``left_out`` is not known before a layer is read: the store's
        guesses leave out a delta's base layers."""
        self._reporter.note(f"exporting {self.name} from the Docker engine")
        images = []
        if self._layerless:  # first: they are small, and an engine that refuses them fails the pack before any work
            try:
                images += self._export(self._layerless, "Docker engine export of images without layers", store)
            except DockerError as e:
                self._engine.platform()  # raises DockerError itself if the engine no longer answers
                refusal = e.message.removeprefix("Docker engine: ")[:160]
                if not self._engine.is_local():  # it could not reach the receiver
                    raise _not_exported(self._layerless, refusal, "the engine is not on this host to push them to airgap") from e
                if self._engine.is_podman():  # it pushes over HTTPS only
                    raise _not_exported(self._layerless, refusal, "Podman pushes to a loopback registry over HTTPS only") from e
                self._reporter.note(
                    f"the engine's export refuses images without layers ({refusal}): "
                    f"it pushes {', '.join(self._layerless)} to airgap on 127.0.0.1 instead"
                )
                images += pushed_images(self._engine, self._layerless, store)
        if self._refs:
            images += self._export(self._refs, "Docker engine export", store)
        return images

    def indexes(self) -> list[SourceIndex]:
        """None: the engine's export has no registry manifests to keep."""
        return []

    def _export(self, refs: list[str], label: str, store: BlobStore) -> list[Image]:
        """One export call's images, read into ``store``."""
        with self._engine.export(refs) as stream, PrefetchReader(stream) as ahead:
            contents = read_archive(ahead, label, store)
            return images_from_archive(contents, store)


def _not_exported(refs: list[str], refusal: str, why: str) -> DockerError:
    """The engine neither exports nor pushes these images without layers."""
    return DockerError(
        f"the Docker engine does not export {', '.join(refs)}: an image without layers (its export refuses them: "
        f"{refusal}), and {why}",
        hint="push it to a registry (docker push) and pack it from there: oci://HOST/REPO:TAG",
    )


def save_tags(ref: str, found: dict[str, Any]) -> list[str]:
    """The names a docker-save archive of ``ref`` gives the image: ``ref`` as docker shows it, tagged (``latest``
    when untagged), when it names the image; none for an ID."""
    try:
        parsed = Reference.parse(ref)
    except InvalidReference:
        return []
    tagged = f"{parsed.familiar_name}:{parsed.tag or 'latest'}"
    return [tagged] if parsed.digest is None and tagged in (found.get("RepoTags") or []) else []


def pushed_images(engine: EngineClient, refs: list[str], store: BlobStore) -> list[Image]:
    """Images without layers, pushed by a local engine to a receiver on 127.0.0.1 under a random name (dropped
    again), then read as the docker-save archive the engine's export would have given: the config bytes it pushed,
    whose sha256 must be the image ID, and no layer."""
    label = "Docker engine push of images without layers"
    members: list[tuple[str, bytes]] = []
    index: list[dict[str, Any]] = []
    with PushReceiver() as receiver:
        for i, ref in enumerate(refs):
            found = engine.inspect(ref) or {}
            image_id = str(found.get("Id", ""))
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", image_id):
                raise DockerError(f"Docker engine: {ref} has no sha256 image ID ({image_id[:80]!r})")
            target = f"{receiver.repository}:image{i}"
            engine.tag(image_id, target)
            try:
                engine.push(target)
            except DockerError as e:
                raise _not_exported([ref], "empty export", f"its push to airgap failed: {e.message[:200]}") from e
            finally:
                engine.untag(target)
                for digest_ref in (engine.inspect(image_id) or {}).get("RepoDigests") or []:
                    if str(digest_ref).startswith(f"{receiver.repository}@"):
                        engine.untag(str(digest_ref))
            config = receiver.blob(image_id)
            if config is None:
                raise _not_exported([ref], "empty export", "its push did not send the config whose sha256 is its ID")
            members.append((f"{image_id[7:]}.json", config))
            index.append({"Config": f"{image_id[7:]}.json", "RepoTags": save_tags(ref, found), "Layers": []})
    members.append(("manifest.json", json.dumps(index).encode()))
    archive = b"".join(tarstream.header(n, len(d)) + d + tarstream.padding(len(d)) for n, d in members)
    contents = read_archive(io.BytesIO(archive + tarstream.END_OF_ARCHIVE), label, store)
    return images_from_archive(contents, store)


MAX_RECEIVED = 16 << 20  # what the receiver keeps in all: configs and manifests of images without layers
_UPLOAD = re.compile(r"^/v2/(?P<repo>[a-z0-9/._-]+)/blobs/uploads/(?P<uuid>[0-9a-f]*)$")
_BLOB = re.compile(r"^/v2/(?P<repo>[a-z0-9/._-]+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<repo>[a-z0-9/._-]+)/manifests/(?P<ref>[A-Za-z0-9_.:-]+)$")


class PushReceiver(http.server.ThreadingHTTPServer):
    """``with PushReceiver() as r:`` a local engine pushes to ``r.repository`` (plain HTTP on 127.0.0.1, which
    dockerd treats as an insecure registry by default); ``r.blob(digest)`` is what it sent, its digest checked.
    One repository under a random name; everything in memory, at most :data:`MAX_RECEIVED` bytes."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        self.repo = f"airgap-pack/{secrets.token_hex(8)}"
        self.lock = threading.Lock()
        self.blobs: dict[str, bytes] = {}  # guarded by lock, as the two below
        self.uploads: dict[str, bytearray] = {}
        self.received = 0
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.repository = f"127.0.0.1:{self.server_address[1]}/{self.repo}"
        self._thread = threading.Thread(target=self.serve_forever, name="airgap-receive", daemon=True)

    def handle_error(self, request: object, client_address: object) -> None:
        """A malformed request (another local process, a broken engine) ends its connection, never prints a traceback;
        what was not received whole is not used."""

    def blob(self, digest: str) -> bytes | None:
        """The blob received under ``digest`` (its sha256 checked), if any."""
        with self.lock:
            return self.blobs.get(digest)

    def __enter__(self) -> PushReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    """The registry API as far as a push of images without layers needs it: the version check, blob uploads
    (POST, PATCH, PUT; chunked or not), blob HEAD/GET and manifest PUT; everything else is 404."""

    protocol_version = "HTTP/1.1"
    timeout = 60.0  # any one read or write: an engine that stalls is cut off
    server: PushReceiver

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _count(self, size: int) -> bool:
        """Count ``size`` more bytes received; beyond the bound, answer 413 and close the connection."""
        with self.server.lock:
            fits = 0 <= size <= MAX_RECEIVED - self.server.received  # a negative length never lowers the count
            if fits:
                self.server.received += size
        if not fits:
            self.close_connection = True
            self._answer(413)
        return fits

    def _body(self) -> bytes | None:
        """The request's body (Content-Length or chunked); None, once answered 413, beyond the bound."""
        parts: list[bytes] = []
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers, up to the empty line
                        pass
                    break
                if not self._count(size):
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
        else:
            size = int(self.headers.get("Content-Length") or 0)
            if not self._count(size):
                return None
            parts.append(self.rfile.read(size) if size else b"")
        return b"".join(parts)

    def _match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        m = pattern.fullmatch(self.path.split("?", 1)[0])
        return m if m is not None and m.group("repo") == self.server.repo else None

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/v2", "/v2/"):
            self._answer(200, {"Content-Type": "application/json"}, b"{}")
            return
        m = self._match(_BLOB)
        data = self.server.blob(m.group("digest")) if m else None
        if m is None or data is None:
            self._answer(404)
            return
        self._answer(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": m.group("digest")}, data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if self._match(_UPLOAD) is None:
            self._answer(404)
            return
        body = self._body()
        if body is None:
            return
        uuid = secrets.token_hex(16)
        with self.server.lock:
            self.server.uploads[uuid] = bytearray(body)
        self._upload_answer(uuid, len(body))

    def _upload_answer(self, uuid: str, size: int) -> None:
        location = f"/v2/{self.server.repo}/blobs/uploads/{uuid}"
        self._answer(202, {"Location": location, "Docker-Upload-UUID": uuid, "Range": f"0-{max(size - 1, 0)}"})

    def _upload(self) -> tuple[str, bytearray] | None:
        """The upload the path names, with the request's body added; None once answered."""
        m = self._match(_UPLOAD)
        with self.server.lock:
            upload = self.server.uploads.get(m.group("uuid")) if m else None
        if m is None or upload is None:
            self._answer(404)
            return None
        body = self._body()
        if body is None:
            return None
        with self.server.lock:
            upload += body
        return m.group("uuid"), upload

    def do_PATCH(self) -> None:
        got = self._upload()
        if got is not None:
            self._upload_answer(got[0], len(got[1]))

    def do_PUT(self) -> None:
        if self._match(_MANIFEST) is not None:
            body = self._body()
            if body is not None:  # not kept: the config, whose sha256 is the image ID, says all
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                self._answer(201, {"Docker-Content-Digest": digest, "Location": self.path.split("?", 1)[0]})
            return
        got = self._upload()
        if got is None:
            return
        uuid, upload = got
        wanted = re.search(r"[?&]digest=sha256(?::|%3A)([0-9a-f]{64})(?:&|$)", self.path)
        digest = "sha256:" + hashlib.sha256(upload).hexdigest()
        if wanted is None or f"sha256:{wanted.group(1)}" != digest:
            self._answer(400, {"Content-Type": "application/json"}, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            return
        with self.server.lock:
            self.server.uploads.pop(uuid, None)
            self.server.blobs[digest] = bytes(upload)
        self._answer(201, {"Location": f"/v2/{self.server.repo}/blobs/{digest}", "Docker-Content-Digest": digest})


KIND = SourceKind(EngineImage, EngineExport)
