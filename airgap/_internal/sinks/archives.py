"""Image archives as install targets, and the docker-save stream the engine load also uses.

``docker-archive:PATH`` is what ``docker save`` writes (every Docker version loads it); ``oci-archive:PATH``
an OCI image layout in a tar.  Both are written to a temporary name beside the target and renamed only
when complete, after every blob was read through its checked origin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from types import TracebackType

from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.origins import Exported, Held, Origin, Rebuilt, iter_origin
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.base import InstalledImage, Plan, Target, blobs_of, make_plan, plan_total, select_images
from airgap._internal.util import fsutil, tarstream
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, IntegrityError, UsageError
from airgap.model import oci
from airgap.model.manifest import Image, Platform
from airgap.model.mediatypes import MT_OCI_INDEX
from airgap.model.oci import docker_save_layout
from airgap.progress import Transfer


def save_stream(
    images: list[Image],
    origins: Mapping[str, Origin],
    transfer: Transfer,
    cache: VerifiedCache | None = None,
    before: Iterator[bytes] | None = None,
    elsewhere: dict[str, str] | None = None,
    rebuilt: set[str] | None = None,
) -> Iterator[bytes]:
    """A docker-save archive of ``images``, built from verified parts; manifest.json comes last.

    Blobs the target holds (:class:`Held`) are left out: docker load skips layers whose chains it has.
    ``before`` yields members taken from the engine's export first; as it goes it fills ``elsewhere``
    (layer digest -> member name) and ``rebuilt`` (layers it wrote under their own name)."""
    elsewhere = {} if elsewhere is None else elsewhere
    rebuilt = set() if rebuilt is None else rebuilt
    if before is not None:
        yield from before
    entries, body = docker_save_layout(images, elsewhere)
    for name, digest, size in entries:
        origin = origins[digest]
        if isinstance(origin, Held) or digest in rebuilt:
            continue
        if isinstance(origin, Rebuilt) and isinstance(origin.source, Exported):
            raise IntegrityError(
                f"the engine's export of {origin.source.image_id[:19]} did not hold the layer that "
                f"layer {digest[:19]} is rebuilt from",
                hint="pass the base bundle with --base OLD_BUNDLE",
            )
        yield tarstream.header(name, size)
        with closing(iter_origin(origin, cache=cache, transfer=transfer)) as blocks:
            for data in blocks:
                transfer.moved(len(data))
                yield data
        yield tarstream.padding(size)
    yield tarstream.header("manifest.json", len(body)) + body + tarstream.padding(len(body)) + tarstream.END_OF_ARCHIVE


def oci_archive_stream(
    images: list[Image], origins: Mapping[str, Origin], transfer: Transfer, cache: VerifiedCache | None = None
) -> Iterator[bytes]:
    """An OCI image layout as a tar stream: blobs first, index.json last."""

    def small(name: str, data: bytes) -> bytes:
        return tarstream.header(name, len(data)) + data + tarstream.padding(len(data))

    yield small("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for digest, size in blobs_of(images):
        yield tarstream.header(f"blobs/sha256/{digest.removeprefix('sha256:')}", size)
        with closing(iter_origin(origins[digest], cache=cache, transfer=transfer)) as blocks:
            for block in blocks:
                transfer.moved(len(block))
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


def write_archive(path: Path, chunks: Iterator[bytes], replace: bool) -> None:
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


class ArchiveSink:
    """``docker-archive:PATH`` or ``oci-archive:PATH``: every image of the bundle, or those of --platform."""

    def __init__(self, target: Target, note: Callable[[str], None], platform: str | None = None, replace: bool = False) -> None:
        self.label = str(target)
        self._note = note
        self._oci = target.kind == "oci-archive"
        self._path = Path(target.value)
        self._platform = platform
        self._replace = replace

    def __enter__(self) -> ArchiveSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def choose(self, images: tuple[Image, ...]) -> list[Image]:
        """Every image of the bundle, or only those of --platform."""
        if self._platform is None:
            return list(images)
        return select_images(images, Platform.parse(self._platform), True, self._note)

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Nothing to refuse before reading: an archive is new (an existing file is refused on writing, unless
        --replace), so it never holds the images already."""
        return None

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        """Every blob read from the bundle (or its base); refused unless the archive's directory has room for it all."""
        origins = make_plan(bundle, images, allow_unexpected)
        total = plan_total(origins)
        parent = self._path.parent if self._path.parent.exists() else Path(".")
        fsutil.require_space(parent, total + (16 << 20), f"writing {self._path}")
        return Plan(origins, total)

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        """Write the archive atomically, every blob read through its checked origin."""
        if self._oci:
            stream = oci_archive_stream(images, plan.origins, transfer, cache)
        else:
            stream = save_stream(images, plan.origins, transfer, cache)
        write_archive(self._path, threaded(stream), self._replace)
        return tuple(InstalledImage(i.image_id, i.ref_names, str(i.platform), "written", str(self._path)) for i in images)
