"""containerd as install target, ``--to containerd://[SOCKET][?namespace=NS]``: what k3s, RKE2 and kubeadm
clusters run.

The images go in through containerd's own client, ``ctr images import``, fed on its standard input with an
OCI image layout built on the fly (:func:`~airgap._internal.sinks.archives.oci_archive_stream`: blobs first,
``index.json`` last), so nothing of the image is copied to disk on our side.  Every part is hashed while it
streams; when one fails the stream stops before ``index.json``, ctr fails on the cut archive without
creating an image, and containerd collects the blobs it had stored under ctr's lease.

Names are stored as the kubelet looks them up: ``team/app:1`` as ``docker.io/team/app:1``, ``busybox:1`` as
``docker.io/library/busybox:1`` (as containerd's own export and a CRI pull write them), in the namespace the
kubelet uses, ``k8s.io``, unless the target names another.  A name that already names another image is
refused unless --replace; names that already name the bundle's image are left alone.  Afterwards every name
must point at the manifest that was sent, whose config is the image ID, and ``ctr images check`` must find
the image complete and unpacked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import parse_qsl, urlencode

from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.archives import oci_archive_stream
from airgap._internal.sinks.base import (
    InstalledImage,
    Plan,
    Target,
    kept_digests,
    make_plan,
    plan_total,
    read_kept,
    select_images,
)
from airgap._internal.util import fsutil
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, EnvironmentProblem, UsageError
from airgap.model import oci
from airgap.model.manifest import Image, Platform, image_name
from airgap.model.mediatypes import IMAGE_MANIFEST_TYPES, INDEX_TYPES, MT_OCI_MANIFEST
from airgap.progress import Transfer

SCHEME = "containerd://"
DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "k8s.io"  # where the kubelet's CRI plugin keeps its images
_EXAMPLE = f"{SCHEME}{DEFAULT_SOCKET}?namespace={DEFAULT_NAMESPACE}"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")  # containerd's rule for identifiers
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ARCH = {  # uname -m -> the OCI architecture and variant containerd uses on that host
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}
_QUERY_LIMIT = 4 << 20  # a listing or a manifest, never a layer
_QUERY_TIMEOUT = "120s"
_HINT = "is containerd running, and is the socket right? ('ctr -a SOCKET version' should answer the server's version)"


@dataclass(frozen=True)
class ContainerdAddress:
    """The containerd socket and the namespace the images go into."""

    socket: str = DEFAULT_SOCKET
    namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def parse(cls, value: str) -> ContainerdAddress:
        """What follows ``containerd://`` in --to: ``[SOCKET][?namespace=NS]``, the socket an absolute path."""
        text = f"{SCHEME}{value}"
        path, _, query = value.partition("?")
        if path and (not path.startswith("/") or "\0" in path):
            raise UsageError(f"--to {text!r}: the socket must be an absolute path", hint=f"write it like {_EXAMPLE}")
        try:
            fields = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
        except ValueError as e:
            raise UsageError(f"--to {text!r}: cannot read {query!r}", hint=f"write it like {_EXAMPLE}") from e
        keys = [k for k, _ in fields]
        if any(k != "namespace" for k in keys) or len(keys) > 1:
            raise UsageError(f"--to {text!r}: only one option, namespace=NS, is known", hint=f"write it like {_EXAMPLE}")
        namespace = fields[0][1] if fields else DEFAULT_NAMESPACE
        if len(namespace) > 76 or not _NAMESPACE_RE.fullmatch(namespace):
            raise UsageError(
                f"--to {text!r}: {namespace[:80]!r} is not a containerd namespace",
                hint=f"letters and digits, joined by '.', '_' or '-' (the kubelet's is {DEFAULT_NAMESPACE})",
            )
        return cls(path or DEFAULT_SOCKET, namespace)

    def __str__(self) -> str:
        return f"{SCHEME}{self.socket}?{urlencode({'namespace': self.namespace})}"


def kubelet_name(ref: str) -> str:
    """``ref`` (REPOSITORY:TAG) as the kubelet asks containerd for it: the Docker reference normalization
    (:meth:`~airgap.model.reference.Reference.normalized`).

    ``busybox:1`` is ``docker.io/library/busybox:1``, ``team/app:1`` ``docker.io/team/app:1``; a first
    component with a dot, a port or upper case, or ``localhost``, is a registry host and stays."""
    return image_name(ref).normalized()


def host_platform() -> Platform:
    """The platform of this host, which the containerd at a local socket runs."""
    machine = os.uname().machine
    arch, variant = _ARCH.get(machine, (machine.lower(), None))
    return Platform("linux", arch, variant)


class _Tail:
    """Drains a subprocess's output in a thread, keeping only its last few KiB (for the error message)."""

    def __init__(self, stream: IO[bytes], keep: int = 8 << 10) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._keep = keep
        self._thread = threading.Thread(target=self._drain, args=(stream,), name="airgap-ctr-output", daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        with suppress(OSError, ValueError):
            while data := os.read(stream.fileno(), 65536):
                self._chunks.append(data)
                self._size += len(data)
                while self._size - len(self._chunks[0]) >= self._keep:
                    self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        self._thread.join(timeout=10)
        return b"".join(self._chunks)[-self._keep :].decode("utf-8", "replace")

    def last_line(self) -> str:
        """ctr's own message: its last line that says something, ``ctr:`` and log fields stripped."""
        lines = [line.strip() for line in self.text().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ctr:")] or lines
        return errors[-1].removeprefix("ctr:").strip()[:300] if errors else "no message"


class Ctr:
    """containerd through ``ctr`` at one socket and namespace: the few commands install needs."""

    def __init__(self, address: ContainerdAddress) -> None:
        exe = shutil.which("ctr")
        if exe is None:
            raise EnvironmentProblem(
                "ctr, containerd's command-line client, is not installed",
                hint="install it with containerd (Debian: apt-get install containerd)",
            )
        self.address = address
        self._base = [exe, "--address", address.socket, "--namespace", address.namespace, "--connect-timeout", "10s"]

    def fail(self, what: str, detail: str) -> EnvironmentProblem:
        return EnvironmentProblem(f"containerd at {self.address.socket}: {what}: {detail}", hint=_HINT)

    def _query(self, args: list[str], what: str) -> tuple[int, bytes, str]:
        """Run a short ctr command; its output is capped (a listing, a manifest)."""
        try:
            proc = subprocess.Popen(
                [*self._base, "--timeout", _QUERY_TIMEOUT, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise self.fail(what, str(e)) from e
        with proc:
            err = _Tail(cast(IO[bytes], proc.stderr))
            out = cast(IO[bytes], proc.stdout).read(_QUERY_LIMIT + 1)
            if len(out) > _QUERY_LIMIT:
                proc.kill()
                raise self.fail(what, f"more than {_QUERY_LIMIT >> 20} MiB of output")
            code = proc.wait()
            return code, out, err.last_line() if code else ""

    def ping(self) -> None:
        """Fail clearly when nothing (or not containerd) answers at the socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(self.address.socket)
        except OSError as e:
            raise self.fail("cannot connect", e.strerror or str(e)) from e
        finally:
            sock.close()
        code, out, err = self._query(["version"], "no answer")
        if code or b"Server:" not in out:
            raise self.fail("no answer", err or "ctr printed no server version")

    def images(self, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """name -> (media type, digest) of the image records among ``names`` that exist."""
        wanted = set(names)
        if not wanted:
            return {}
        code, out, err = self._query(["images", "ls", *(f'name=="{n}"' for n in sorted(wanted))], "listing images failed")
        if code:
            raise self.fail("listing images failed", err)
        found = {}
        for line in out.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] in wanted and _DIGEST_RE.fullmatch(fields[2]):
                found[fields[0]] = (fields[1], fields[2])
        return found

    def blob(self, digest: str) -> bytes | None:
        """A small blob (a manifest, an index, a config) from the content store, checked against its digest."""
        code, out, err = self._query(["content", "get", digest], f"reading {digest[:19]} failed")
        if code:
            if "not found" in err:
                return None
            raise self.fail(f"reading {digest[:19]} failed", err)
        if "sha256:" + hashlib.sha256(out).hexdigest() != digest:
            raise self.fail(f"reading {digest[:19]} failed", "its content does not match its digest")
        return out

    def check(self, names: Iterable[str]) -> dict[str, tuple[bool, bool]]:
        """name -> whether ``ctr images check`` finds the image's content (complete, unpacked); an image
        without layers is never unpacked."""
        wanted = set(names)
        if not wanted:
            return {}
        code, out, err = self._query(["images", "check", *(f'name=="{n}"' for n in sorted(wanted))], "checking images failed")
        if code:
            raise self.fail("checking images failed", err)
        found = {}
        for line in out.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 6 and fields[0] in wanted:
                found[fields[0]] = (fields[3] == "complete", fields[-1] == "true")
        return found

    def content_root(self) -> Path | None:
        """The content store's directory, when containerd says where it is and it is on this host."""
        code, out, _ = self._query(["plugins", "ls", "--detailed"], "listing plugins failed")
        if code:
            return None
        kind = ""
        for line in out.decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "Type:":
                kind = fields[1]
            elif kind == "io.containerd.content.v1" and len(fields) == 2 and fields[0] == "root":
                path = Path(fields[1])
                return path if path.is_dir() else None
        return None

    def import_stream(self, chunks: Iterator[bytes], platform: Platform) -> None:
        """``ctr images import`` fed on stdin.  If ``chunks`` raises, the stream is cut: ctr fails on the
        short archive and creates no image; the error from ``chunks`` is raised once ctr has ended."""
        args = [*self._base, "images", "import", "--platform", str(platform), "-"]
        try:
            # its own session: Ctrl-C reaches us only, and we end the stream so ctr cleans up after itself
            proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as e:
            raise self.fail("import failed", str(e)) from e
        stdin = cast(IO[bytes], proc.stdin)
        output = _Tail(cast(IO[bytes], proc.stdout))
        failure: BaseException | None = None
        blocks = threaded(chunks)
        try:
            for block in blocks:
                stdin.write(block)
        except BrokenPipeError:
            pass  # ctr stopped reading: its own message says why
        except BaseException as e:  # noqa: BLE001 - raised below, once ctr has ended
            failure = e
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()  # stops the producer thread, and with it the reading of parts
        with suppress(OSError):
            stdin.close()  # complete, or cut short: then ctr fails on the archive and imports nothing
        try:
            code = proc.wait(timeout=120 if failure is not None else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        cast(IO[bytes], proc.stdout).close()
        if failure is not None:
            raise failure
        if code:
            raise self.fail("ctr images import failed", output.last_line())


def _platform_matches(entry: Any, platform: Platform) -> bool:
    p = entry.get("platform") if isinstance(entry, dict) else None
    if not isinstance(p, dict):
        return False
    variant = p.get("variant")
    return (
        p.get("os") == platform.os
        and p.get("architecture") == platform.architecture
        and (not platform.variant or variant in (None, platform.variant))
    )


class ContainerdSink:
    """The images of the host's platform (or of --platform), imported into one containerd namespace."""

    def __init__(self, target: Target, note: Callable[[str], None], platform: str | None = None, replace: bool = False) -> None:
        self._address = ContainerdAddress.parse(target.value)
        self.label = str(self._address)
        self._note = note
        self._platform = platform
        self._replace = replace
        self._ctr: Ctr | None = None
        self._todo: list[Image] = []  # the images to import, each under the names it lacks
        self._names: dict[str, tuple[str, ...]] = {}  # image ID -> every name it has as the kubelet asks for it
        self._wanted = host_platform()

    @property
    def ctr(self) -> Ctr:
        if self._ctr is None:
            raise RuntimeError("ContainerdSink used outside its with-block")
        return self._ctr

    def __enter__(self) -> ContainerdSink:
        ctr = Ctr(self._address)
        ctr.ping()
        self._ctr = ctr
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._ctr = None

    def choose(self, images: tuple[Image, ...]) -> list[Image]:
        """The host's platform; another only when --platform names it (containerd here cannot run it)."""
        host = host_platform()
        if self._platform is None:
            if not any(i.platform.matches(host) for i in images):
                platforms = ", ".join(sorted({str(i.platform) for i in images}))
                raise UsageError(
                    f"the bundle has no image for this host's platform {host} (it has {platforms})",
                    hint="containerd here runs only its own platform's images; pass --platform to import another anyway",
                )
            self._wanted = host
        else:
            self._wanted = Platform.parse(self._platform)
        chosen = select_images(images, self._wanted, self._platform is not None, self._note)
        if not any(i.platform.matches(host) for i in chosen):
            self._note(f"note: importing {self._wanted} images into containerd on a {host} host, as asked: they do not run here")
        return chosen

    def _kubelet_names(self, images: list[Image]) -> None:
        """Every image's names as the kubelet asks for them; two images under one name are refused."""
        owner: dict[str, Image] = {}
        for image in images:
            if not image.ref_names:
                raise UsageError(
                    f"image {image.image_id[:19]} has no name: containerd keeps only named images",
                    hint="pack the image under a name (REPOSITORY:TAG)",
                )
            names = tuple(dict.fromkeys(kubelet_name(ref) for ref in image.ref_names))
            for name in names:
                other = owner.setdefault(name, image)
                if other.image_id != image.image_id:
                    raise UsageError(
                        f"the bundle gives the name {name} to two images ({other.platform} {other.image_id[:19]} "
                        f"and {image.platform} {image.image_id[:19]})",
                        hint="choose one with --platform",
                    )
            self._names[image.image_id] = names

    def _config_of(self, media_type: str, digest: str, platform: Platform) -> str | None:
        """The config digest (image ID) an image record's target gives for ``platform``, if containerd has it."""
        for _ in range(2):  # an index, then one of its manifests
            data = self.ctr.blob(digest)
            if data is None:
                return None
            try:
                doc = json.loads(data)
            except ValueError:
                return None
            if not isinstance(doc, dict):
                return None
            if media_type not in INDEX_TYPES and "manifests" not in doc:
                config = doc.get("config")
                found = config.get("digest") if isinstance(config, dict) else None
                return found if isinstance(found, str) and _DIGEST_RE.fullmatch(found) else None
            entry = next((m for m in doc.get("manifests") or [] if _platform_matches(m, platform)), None)
            if entry is None or not isinstance(entry.get("digest"), str) or not _DIGEST_RE.fullmatch(entry["digest"]):
                return None
            media_type, digest = str(entry.get("mediaType", "")), entry["digest"]
        return None

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Refuse a name that names another image (unless --replace); leave alone names that name the
        bundle's image already.  Every image the kubelet could not use as it stands is imported."""
        self._kubelet_names(images)
        current = self.ctr.images(n for names in self._names.values() for n in names)
        ready = self.ctr.check(current)
        todo = []
        for image in images:
            manifest = _manifest_digest(image)
            lacking = []
            for name in self._names[image.image_id]:
                found = current.get(name)
                if found is None:
                    lacking.append(name)
                    continue
                media_type, digest = found
                held = image.image_id if digest == manifest else self._config_of(media_type, digest, image.platform)
                if held == image.image_id and _usable(ready.get(name), image):
                    continue
                if held not in (None, image.image_id) and not self._replace:
                    raise ConflictError(
                        f"name {name} already names image {held[:19]} in containerd namespace {self._address.namespace}, "
                        f"the bundle has {image.image_id[:19]}",
                        hint="pass --replace to point the name at the bundle's image",
                    )
                if held is None and not self._replace:
                    raise ConflictError(
                        f"name {name} already names {digest[:19]} in containerd namespace {self._address.namespace}, "
                        f"whose content containerd lacks or that has no {image.platform} image",
                        hint="pass --replace to point the name at the bundle's image",
                    )
                lacking.append(name)
            if lacking:
                todo.append(replace(image, ref_names=tuple(lacking)))
        self._todo = todo
        if todo:
            return None
        return tuple(self._installed(image, "already present") for image in images)

    def _installed(self, image: Image, action: str) -> InstalledImage:
        return InstalledImage(image.image_id, self._names[image.image_id], str(image.platform), action, str(self._address))

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        origins = make_plan(bundle, self._todo, allow_unexpected, also=kept_digests(self._todo, IMAGE_MANIFEST_TYPES))
        total = plan_total(origins)
        root = self.ctr.content_root()
        if root is not None:
            # the blobs go into the content store, then are unpacked into snapshots beside it
            fsutil.require_space(root, 2 * total + (64 << 20), "importing into containerd")
        else:
            self._note("note: containerd's content store is not on this host; its free space was not checked")
        return Plan(origins, total)

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        todo = self._todo
        platforms = {str(i.platform) for i in todo}
        platform = todo[0].platform if len(platforms) == 1 else self._wanted
        kept = read_kept(todo, plan.origins, IMAGE_MANIFEST_TYPES, cache, transfer)  # the registry's digests stay
        self.ctr.import_stream(oci_archive_stream(todo, plan.origins, transfer, cache, kept), platform)
        self._verify(todo)
        imported = {i.image_id for i in todo}
        return tuple(self._installed(i, "imported" if i.image_id in imported else "already present") for i in images)

    def _verify(self, todo: list[Image]) -> None:
        """Every name points at the manifest sent, its config is the image ID, and the image is complete and unpacked."""
        names = [n for image in todo for n in image.ref_names]
        current = self.ctr.images(names)
        ready = self.ctr.check(names)
        for image in todo:
            manifest = _manifest_digest(image)
            for name in image.ref_names:
                found = current.get(name)
                if found is None or found[1] != manifest:
                    raise self.ctr.fail("after the import", f"{name} does not name the manifest sent ({manifest[:19]})")
                if not _usable(ready.get(name), image):
                    raise self.ctr.fail(
                        "after the import", f"'ctr images check' does not find {name} complete and unpacked"
                    ).with_hint("free space in containerd's root, then install again")
            media_type = image.manifest.media_type if image.manifest is not None else MT_OCI_MANIFEST
            if self._config_of(media_type, manifest, image.platform) != image.image_id:
                raise self.ctr.fail("after the import", f"the manifest of {image.ref_names[0]} names another config")


def _manifest_digest(image: Image) -> str:
    """The digest of the manifest the import stream sends for ``image``: the one its source registry served, when the
    bundle keeps it, else the one built for it."""
    if image.manifest is not None:
        return image.manifest.digest
    return oci.digest_of(oci.image_manifest(image, oci=True)[0])


def _usable(state: tuple[bool, bool] | None, image: Image) -> bool:
    """What ``ctr images check`` said is an image the kubelet can run: complete, and unpacked if it has layers."""
    return state is not None and state[0] and (state[1] or not image.layers)
