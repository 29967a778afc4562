"""A short-lived, read-only registry on 127.0.0.1 that serves a bundle's images to the local engine.

The install path ``--via registry`` lets the engine *pull* the images instead of loading an upload:
the engine fetches layers in parallel and applies them as they arrive.  Blobs are served straight
from the parts through :func:`~airgap._internal.format.origins.iter_origin` (every part hashed, then the blob
digest), and the engine checks each blob's digest again.  A part that fails its check cuts the
response short; the failure is kept and re-raised once the pull has ended.

Only one repository exists, under a random name, and the server listens on loopback only.  Any local
process can connect, so the server holds at most :data:`MAX_CONNECTIONS` connections (more are closed at
once), gives a client :data:`HEADER_SECONDS` to send each request's headers and :data:`IDLE_SECONDS` for any
single read or write, and treats a client that hangs up or resets as routine: nothing on stderr.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from airgap._internal.clients.docker import EngineClient
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.origins import Origin, iter_origin
from airgap.errors import DockerError, Error, UsageError
from airgap.model import oci
from airgap.model.manifest import Image
from airgap.progress import Transfer

MAX_CONNECTIONS = 16  # the engine opens a few (3 downloads by default); a bound, not a tuning knob
HEADER_SECONDS = 20.0  # to send a request line and headers, idle keep-alive time included (slow-loris)
IDLE_SECONDS = 60.0  # any one read or write of the connection (a client that stops reading a blob)

_PATH = re.compile(r"^/v2/(?P<repo>[a-z0-9/._-]+)/(?P<kind>manifests|blobs)/(?P<ref>[A-Za-z0-9_.:-]+)$")


@dataclass
class _State:
    """What the handler threads share: what is served, where blobs are read from, and the check failures met.
    ``errors`` is guarded by ``lock``."""

    origins: Mapping[str, Origin]  # where each blob is read from
    repo: str
    manifests: dict[str, tuple[bytes, str]]  # tag or digest -> (bytes, media type)
    blobs: dict[str, int]  # digest -> size
    cache: VerifiedCache | None
    transfer: Transfer
    errors: list[Error] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server with a bound on connections, a deadline for each request's headers, and no
    traceback for a client that goes away."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # connections beyond the bound are accepted and closed, not left to time out

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[socket.socket, float] = {}  # connection -> when it is cut if its headers are not in
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.open_connections = 0
        super().__init__(("127.0.0.1", 0), handler)
        self._watchdog = threading.Thread(target=self._watch, name="airgap-serve-deadlines", daemon=True)
        self._watchdog.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or close it at once when the bound is reached."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: closed at once, no thread
            return
        with self._lock:
            self.open_connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve the connection, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        """Free a connection's slot and forget its deadline."""
        with self._lock:
            self._deadlines.pop(request, None)
            self.open_connections -= 1
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up, resets or stalls is routine; anything else is a handler bug, whose traceback
        is shown only with AIRGAP_DEBUG (the engine's pull fails and says so)."""
        # a client that hangs up, resets or stalls is routine (OSError); anything else is a bug in the
        # handler: the engine's pull fails and says so, the traceback is for AIRGAP_DEBUG
        if os.environ.get("AIRGAP_DEBUG") and not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()

    def arm(self, connection: socket.socket, seconds: float) -> None:
        """Cut the connection unless :meth:`disarm` is called within ``seconds``."""
        with self._lock:
            self._deadlines[connection] = time.monotonic() + seconds

    def disarm(self, connection: socket.socket) -> bool:
        """Whether the connection was still within its deadline."""
        with self._lock:
            return self._deadlines.pop(connection, None) is not None

    def _watch(self) -> None:
        """Every 0.2 s, shut down the connections past their deadline, until the server closes."""
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._lock:
                late = [c for c, t in self._deadlines.items() if t <= now]
                for connection in late:
                    del self._deadlines[connection]
            for connection in late:  # the handler's read returns at once, and its thread ends
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        """Stop the deadline watchdog and close the listening socket."""
        self._closing.set()
        super().server_close()


class BundleRegistry:
    """``with BundleRegistry(bundle, images, ...) as reg:`` the engine pulls ``reg.ref(image)``."""

    def __init__(
        self,
        origins: Mapping[str, Origin],
        images: list[Image],
        cache: VerifiedCache | None,
        transfer: Transfer,
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
        self._state = _State(origins, repo, manifests, blobs, cache, transfer)
        self._server = _Server(_handler(self._state))
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="airgap-serve", daemon=True)

    def ref(self, image: Image) -> str:
        """The reference the engine pulls the image by (a loopback name, dropped after install)."""
        return f"{self.host}/{self._state.repo}:{self.tags[image.image_id]}"

    @property
    def repository(self) -> str:
        """HOST:PORT/REPOSITORY of the one repository served."""
        return f"{self.host}/{self._state.repo}"

    @property
    def open_connections(self) -> int:
        """Connections being served now (at most MAX_CONNECTIONS)."""
        return self._server.open_connections

    def first_error(self) -> Error | None:
        """The first check failure met while serving a blob, if any (thread-safe)."""
        with self._state.lock:
            return self._state.errors[0] if self._state.errors else None

    def __enter__(self) -> BundleRegistry:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    """The request handler class serving ``state``: the registry API's version check, manifests by tag or
    digest, and blobs (with ``Range``), read only; everything else is 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        """One connection of the engine: its requests, one at a time, each under the header deadline."""

        protocol_version = "HTTP/1.1"
        timeout = IDLE_SECONDS  # any one read or write of the connection
        server: _Server

        def log_message(self, *args: object) -> None:
            pass

        def handle_one_request(self) -> None:
            """Serve one request; its request line and headers must be in within
            :data:`HEADER_SECONDS`, however slowly they trickle."""
            # the request line and headers must be in within HEADER_SECONDS, however slowly they trickle
            self.server.arm(self.connection, HEADER_SECONDS)
            try:
                super().handle_one_request()
            finally:
                self.server.disarm(self.connection)

        def parse_request(self) -> bool:
            """Parse the headers; a request whose deadline cut them off is dropped and the connection closed."""
            ok = super().parse_request()  # has read the headers, or what came before the deadline cut them off
            if not self.server.disarm(self.connection):
                self.close_connection = True
                return False
            return ok

        def _empty(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _route(self, body: bool) -> None:
            """Answer GET (``body``) or HEAD for the API root, a manifest, or a blob; after a failed check no more
            blobs are served, so the engine stops instead of retrying."""
            if self.path in ("/v2", "/v2/"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.end_headers()
                if body:
                    self.wfile.write(b"{}")
                return
            m = _PATH.fullmatch(self.path.split("?", 1)[0])
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
            """Send a blob from ``Range``'s start on, read through its checked origin; a failed check is recorded
            and cuts the response short."""
            start = 0
            rng = re.fullmatch(r"bytes=([0-9]+)-", self.headers.get("Range", ""))
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
                blocks = iter_origin(state.origins[digest], cache=state.cache, transfer=state.transfer)
                with closing(blocks):
                    for block in _skip(blocks, start):
                        self.wfile.write(block)
                        state.transfer.moved(len(block))
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
    """The blocks from byte ``n`` on."""
    for block in blocks:
        if n >= len(block):
            n -= len(block)
            continue
        yield block[n:] if n else block
        n = 0


def pull_from_loopback(
    engine: EngineClient, origins: Mapping[str, Origin], images: list[Image], cache: VerifiedCache, transfer: Transfer
) -> None:
    """Serve the bundle on 127.0.0.1 and let the engine pull it; then name the images and drop the loopback names."""
    if not engine.is_local():
        raise UsageError("--via registry needs a Docker engine on this host", hint="use the default, --via load")
    with BundleRegistry(origins, images, cache, transfer) as served:
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
