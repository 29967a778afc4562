"""Sinks other than the Docker engine: an OCI registry, a docker-archive file, an oci-archive file.

Every blob is read from the bundle's parts through :func:`~airgap._internal.bundle.iter_blob`, which
checks each part and the blob digest; the registry checks the digest again when the upload ends, and
an archive is written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.clients.distribution import Registry, parse_ref
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.reader import LoadedBundle, iter_blob
from airgap._internal.util import fsutil, tarstream
from airgap.errors import ConflictError, UsageError
from airgap.model import oci
from airgap.model.manifest import Image
from airgap.model.mediatypes import MT_OCI_INDEX

DOCKER_ARCHIVE = "docker-archive:"
OCI_ARCHIVE = "oci-archive:"
REGISTRY = "registry://"


@dataclass(frozen=True)
class Target:
    kind: str  # "docker", "registry", "docker-archive", "oci-archive"
    value: str = ""  # registry: HOST[:PORT][/PREFIX]; archives: the path

    def __str__(self) -> str:
        if self.kind == "docker":
            return "the Docker engine"
        return f"{REGISTRY}{self.value}" if self.kind == "registry" else f"{self.kind}:{self.value}"


def parse_target(text: str | None) -> Target:
    if not text or text in ("docker", "docker-daemon"):
        return Target("docker")
    for kind in ("docker-archive", "oci-archive"):
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1 :]
            if not path:
                raise UsageError(f"--to {text!r} names no file")
            return Target(kind, path)
    if text.startswith(REGISTRY):
        rest = text[len(REGISTRY) :].rstrip("/")
        host, _, prefix = rest.partition("/")
        if prefix:
            parse_ref(f"oci://{host}/{prefix}", "oci", need_reference=False)  # validates host and prefix
        else:
            parse_ref(f"oci://{host}/x", "oci", need_reference=False)
        return Target("registry", rest)
    raise UsageError(
        f"cannot read install target {text!r}",
        hint="use registry://HOST[:PORT][/PREFIX], docker-archive:PATH or oci-archive:PATH (default: the Docker engine)",
    )


@dataclass(frozen=True)
class Delivered:
    """One image at the sink: where it went and under which digest."""

    image: Image
    location: str  # registry reference, or the archive path
    manifest_digest: str
    blobs_sent: int
    blobs_present: int


def _split_ref(ref: str) -> tuple[str, str]:
    """'[host[:port]/]path:tag' -> (path without a registry host, tag)."""
    name, _, tag = ref.rpartition(":")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name, tag


def _blobs(images: list[Image]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for image in images:
        for desc in (image.config, *image.layers):
            seen.setdefault(desc.digest, desc.size)
    return list(seen.items())


# --- registry -------------------------------------------------------------------------------


def push_to_registry(
    bundle: LoadedBundle,
    images: list[Image],
    target: Target,
    replace: bool,
    plain_http: bool,
    chunk: int,
    on_bytes: Callable[[int], None],
    note: Callable[[str], None],
    cache: VerifiedCache | None,
    counts: dict[str, int],
) -> list[Delivered]:
    host, _, prefix = target.value.partition("/")
    # (repository, tag) -> images under that name; untagged images go to PREFIX/<bundle name> by digest
    names: dict[tuple[str, str | None], list[Image]] = {}
    for image in images:
        if not image.ref_names:
            repo = f"{prefix}/{bundle.manifest.name}".strip("/").lower()
            names.setdefault((repo, None), []).append(image)
        for ref in image.ref_names:
            path, name_tag = _split_ref(ref)
            names.setdefault((f"{prefix}/{path}" if prefix else path, name_tag), []).append(image)

    plans = []
    for (repo, tag), group in names.items():
        manifests = [(image, *oci.image_manifest(image)) for image in group]
        if len(group) == 1:
            top, top_type = manifests[0][1], manifests[0][2]
        else:
            top, top_type = oci.index_manifest([(data, mt, image.platform) for image, data, mt in manifests])
        plans.append((repo, tag, group, manifests, top, top_type))

    delivered = []
    with Registry(host, plain_http) as registry:
        for repo, tag, _, _, top, _ in plans:  # refuse before sending anything
            if tag is not None:
                registry.check_tag(repo, tag, oci.digest_of(top), replace)
        done: set[tuple[str, str]] = set()
        homes: dict[str, str] = {}  # blob -> a repository of this registry that has it
        for repo, tag, group, manifests, top, top_type in plans:
            sent = present = 0
            for digest, size in _blobs(group):
                if (repo, digest) in done:
                    continue
                home = homes.get(digest)
                if registry.has_blob(repo, digest, push=True) or (home is not None and registry.mount_blob(repo, digest, home)):
                    present += 1
                    on_bytes(size)
                else:
                    blocks = _counting(iter_blob(bundle, digest, cache=cache, counts=counts), on_bytes)
                    registry.upload_blob(repo, digest, size, blocks, chunk)
                    sent += 1
                done.add((repo, digest))
                homes.setdefault(digest, repo)
            for _image, data, mt in manifests:
                registry.put_manifest(repo, oci.digest_of(data), data, mt)
            digest = registry.put_manifest(repo, tag or oci.digest_of(top), top, top_type)
            location = f"{host}/{repo}:{tag}" if tag else f"{host}/{repo}@{digest}"
            for image in group:
                delivered.append(Delivered(image, location, digest, sent, present))
            note(f"pushed {location}  {digest}  ({sent} blob(s) sent, {present} already there)")
    return delivered


def _counting(blocks: Iterator[bytes], on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    for block in blocks:
        on_bytes(len(block))
        yield block


# --- archives -------------------------------------------------------------------------------


def write_archive(
    path: Path,
    chunks: Iterator[bytes],
    replace: bool,
) -> None:
    """Write an archive stream to ``path`` atomically: a temporary name beside it, fsync, rename."""
    if (path.exists() or path.is_symlink()) and not replace:
        raise ConflictError(f"{path} already exists", hint="pass --replace to overwrite it")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; name the archive file to write")
    tmp = path.with_name(f".{path.name}.airgap-tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsutil.fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise fsutil.io_error(e, f"archive {path}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def oci_archive_stream(
    bundle: LoadedBundle,
    images: list[Image],
    on_bytes: Callable[[int], None],
    cache: VerifiedCache | None,
    counts: dict[str, int],
) -> Iterator[bytes]:
    """An OCI image layout as a tar stream: blobs first, index.json last."""

    def small(name: str, data: bytes) -> bytes:
        return tarstream.header(name, len(data)) + data + tarstream.padding(len(data))

    yield small("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for digest, size in _blobs(images):
        yield tarstream.header(f"blobs/sha256/{digest.removeprefix('sha256:')}", size)
        for block in iter_blob(bundle, digest, cache=cache, counts=counts):
            on_bytes(len(block))
            yield block
        yield tarstream.padding(size)
    entries = []
    written: set[str] = set()
    for image in images:
        data, media_type = oci.image_manifest(image, oci=True)
        digest = oci.digest_of(data)
        if digest not in written:
            written.add(digest)
            yield small(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
        base = {"mediaType": media_type, "digest": digest, "size": len(data), "platform": oci.platform_dict(image.platform)}
        for ref in image.ref_names or (None,):
            annotations = (
                {}
                if ref is None
                else {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rpartition(":")[2]}
            )
            entries.append({**base, "annotations": annotations} if annotations else base)
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
    yield small("index.json", json.dumps(index, indent=2).encode()) + tarstream.END_OF_ARCHIVE
