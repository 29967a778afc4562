"""A short-lived, read-only registry on 127.0.0.1 that serves a bundle's images to the local engine.

The install path ``--via registry`` lets the engine *pull* the images instead of loading an upload:
the engine fetches layers in parallel and applies them as they arrive.  Blobs are served straight
from the parts through :func:`~airgap._internal.bundle.iter_blob` (every part hashed, then the blob
digest), and the engine checks each blob's digest again.  A part that fails its check cuts the
response short; the failure is kept and re-raised once the pull has ended.

Only one repository exists, under a random name, and the server listens on loopback only.
"""

from __future__ import annotations

import http.server
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from airgap._internal import oci
from airgap._internal.bundle import LoadedBundle, iter_blob
from airgap._internal.cache import VerifiedCache
from airgap._internal.engine import Engine
from airgap.errors import DockerError, Error, UsageError
from airgap.models import Image

_PATH = re.compile(r"^/v2/(?P<repo>[a-z0-9/._-]+)/(?P<kind>manifests|blobs)/(?P<ref>[A-Za-z0-9_.:-]+)$")


@dataclass
class _State:
    bundle: LoadedBundle
    repo: str
    manifests: dict[str, tuple[bytes, str]]  # tag or digest -> (bytes, media type)
    blobs: dict[str, int]  # digest -> size
    cache: VerifiedCache | None
    counts: dict[str, int]
    on_bytes: Callable[[int], None]
    errors: list[Error] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BundleRegistry:
    """``with BundleRegistry(bundle, images, ...) as reg:`` the engine pulls ``reg.ref(image)``."""

    def __init__(
        self,
        bundle: LoadedBundle,
        images: list[Image],
        cache: VerifiedCache | None,
        counts: dict[str, int],
        on_bytes: Callable[[int], None],
    ) -> None:
        repo = f"airgap-install/{secrets.token_hex(8)}"
        manifests: dict[str, tuple[bytes, str]] = {}
        self.tags: dict[str, str] = {}  # image ID -> tag served for it
        for i, image in enumerate(images):
            data, media_type = oci.image_manifest(image)
            tag = f"image{i}"
            manifests[tag] = manifests[oci.digest_of(data)] = (data, media_type)
            self.tags[image.image_id] = tag
        blobs = {d.digest: d.size for image in images for d in (image.config, *image.layers)}
        self._state = _State(bundle, repo, manifests, blobs, cache, counts, on_bytes)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._state))
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="airgap-serve", daemon=True)

    def ref(self, image: Image) -> str:
        return f"{self.host}/{self._state.repo}:{self.tags[image.image_id]}"

    @property
    def repository(self) -> str:
        return f"{self.host}/{self._state.repo}"

    def first_error(self) -> Error | None:
        with self._state.lock:
            return self._state.errors[0] if self._state.errors else None

    def __enter__(self) -> BundleRegistry:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _empty(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _route(self, body: bool) -> None:
            if self.path in ("/v2", "/v2/"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.end_headers()
                if body:
                    self.wfile.write(b"{}")
                return
            m = _PATH.match(self.path.split("?", 1)[0])
            if not m or m.group("repo") != state.repo:
                self._empty(404)
                return
            ref = m.group("ref")
            if m.group("kind") == "manifests":
                found = state.manifests.get(ref)
                if found is None:
                    self._empty(404)
                    return
                data, media_type = found
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", oci.digest_of(data))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                return
            with state.lock:
                failed = bool(state.errors)
            if ref not in state.blobs or failed:
                # after a failed check nothing more is served: the engine stops instead of retrying
                self._empty(404)
                return
            self._blob(ref, state.blobs[ref], body)

        def _blob(self, digest: str, size: int, body: bool) -> None:
            start = 0
            rng = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
            if rng and int(rng.group(1)) < size:
                start = int(rng.group(1))
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - start))
            self.send_header("Docker-Content-Digest", digest)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if not body:
                return
            try:
                for block in _skip(iter_blob(state.bundle, digest, cache=state.cache, counts=state.counts), start):
                    self.wfile.write(block)
                    state.on_bytes(len(block))
            except Error as e:
                with state.lock:
                    state.errors.append(e)
                self.close_connection = True
            except OSError:  # the engine hung up
                self.close_connection = True

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

    return Handler


def _skip(blocks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for block in blocks:
        if n >= len(block):
            n -= len(block)
            continue
        yield block[n:] if n else block
        n = 0


def pull_from_loopback(
    engine: Engine,
    bundle: LoadedBundle,
    images: list[Image],
    cache: VerifiedCache,
    counts: dict[str, int],
    on_bytes: Callable[[int], None],
) -> None:
    """Serve the bundle on 127.0.0.1 and let the engine pull it; then name the images and drop the loopback names."""
    if not engine.is_local():
        raise UsageError("--via registry needs a Docker engine on this host", hint="use the default, --via load")
    with BundleRegistry(bundle, images, cache, counts, on_bytes) as served:
        try:
            for image in images:
                try:
                    engine.pull(served.ref(image))
                except DockerError as e:
                    failed = served.first_error()
                    if failed is not None:
                        raise failed from e
                    raise
            failed = served.first_error()
            if failed is not None:
                raise failed
            for image in images:
                for ref in image.ref_names:
                    engine.tag(image.image_id, ref)
        finally:
            for image in images:
                engine.untag(served.ref(image))
                for digest_ref in (engine.inspect(image.image_id) or {}).get("RepoDigests") or []:
                    if str(digest_ref).startswith(served.repository + "@"):
                        engine.untag(str(digest_ref))
