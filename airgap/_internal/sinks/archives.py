"""Image archives as install targets, and the docker-save stream the engine load also uses.

``docker-archive:PATH`` is what ``docker save`` writes (every Docker version loads it); ``oci-archive:PATH``
an OCI image layout in a tar.  Both are written to a temporary name beside the target and renamed only
when complete, after every blob was read through its checked origin.

What each holds follows the tools that write and read them.  A docker-archive has one image per name, so
of a multi-platform bundle it takes this host's platform (or --platform), and refuses to guess when that
leaves a name ambiguous; its zstd layers are written decompressed, as ``docker save`` and skopeo write every
layer, since no Docker before 23.0 reads zstd (every one reads gzip).  An oci-archive keeps every platform:
a name given to images of several platforms points at an index of them, as ``docker buildx``, skopeo and
containerd's export write it, and keeps its layers as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from types import TracebackType

from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.discs import in_disc_order
from airgap._internal.format.origins import (
    Decompressed,
    Exported,
    Held,
    Origin,
    Rebuilt,
    decompress_layers,
    iter_origin,
    to_decompress,
)
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.base import (
    InstalledImage,
    Plan,
    Target,
    blobs_of,
    kept_digests,
    make_plan,
    plan_total,
    read_kept,
    select_images,
)
from airgap._internal.sources.base import host_default
from airgap._internal.util import fsutil, tarstream
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, IntegrityError, UsageError
from airgap.model import oci
from airgap.model.manifest import Image, Platform
from airgap.model.mediatypes import MT_OCI_INDEX, MT_OCI_MANIFEST
from airgap.model.oci import compression_of, docker_save_layout
from airgap.model.reference import Reference, layout_annotations
from airgap.progress import Transfer

DOCKER_ARCHIVE_READS = frozenset({"gzip"})  # layer compressions every docker load reads; others are written decompressed


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
    Layers sent decompressed (:class:`Decompressed`) are members of their decompressed size, named after
    their diff_id.  ``before`` yields members taken from the engine's export first; as it goes it fills
    ``elsewhere`` (layer digest -> member name) and ``rebuilt`` (layers it wrote under their own name)."""
    elsewhere = {} if elsewhere is None else elsewhere
    rebuilt = set() if rebuilt is None else rebuilt
    if before is not None:
        yield from before
    decompressed = {d: (o.diff_id, o.size) for d, o in origins.items() if isinstance(o, Decompressed)}
    entries, body = docker_save_layout(images, elsewhere, decompressed)
    for name, digest, size in in_disc_order(entries, origins, lambda entry: entry[1]):  # read from one drive: by disc
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
    images: list[Image],
    origins: Mapping[str, Origin],
    transfer: Transfer,
    cache: VerifiedCache | None = None,
    kept: Mapping[str, tuple[bytes, str]] | None = None,
) -> Iterator[bytes]:
    """An OCI image layout as a tar stream: blobs first, index.json last.  A name given to images of several
    platforms points at an index of their manifests (one entry, as peers write a multi-platform image);
    a name of one image at its manifest.  ``kept``: image ID -> the manifest its source registry served
    (:func:`read_kept`), written instead of one built here, so the layout keeps the registry's digest."""
    kept = kept or {}

    def small(name: str, data: bytes) -> bytes:
        return tarstream.header(name, len(data)) + data + tarstream.padding(len(data))

    yield small("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for digest, size in in_disc_order(blobs_of(images), origins, lambda blob: blob[0]):  # read from one drive: by disc
        yield tarstream.header(f"blobs/sha256/{digest.removeprefix('sha256:')}", size)
        with closing(iter_origin(origins[digest], cache=cache, transfer=transfer)) as blocks:
            for block in blocks:
                transfer.moved(len(block))
                yield block
        yield tarstream.padding(size)
    written: set[str] = set()
    manifests: dict[str, tuple[bytes, str, Platform]] = {}  # image ID -> its manifest's bytes, media type, platform
    for image in images:
        data, media_type = kept.get(image.image_id) or oci.image_manifest(image, oci=True)
        manifests[image.image_id] = (data, media_type, image.platform)
        digest = oci.digest_of(data)
        if digest not in written:
            written.add(digest)
            yield small(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    entries: list[dict[str, object]] = []
    named = layout_annotations(ref for image in images for ref in image.ref_names)
    for base, refs, index_bytes in _top_entries(images, manifests):
        digest = str(base["digest"])
        if index_bytes is not None and digest not in written:
            written.add(digest)
            yield small(f"blobs/sha256/{digest.removeprefix('sha256:')}", index_bytes)
        for ref in refs or (None,):
            entry = base if ref is None else {**base, "annotations": named[ref]}
            if entry not in entries:  # one name spelled twice (busybox:1, docker.io/library/busybox:1): one entry
                entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
    yield small("index.json", json.dumps(index, indent=2).encode()) + tarstream.END_OF_ARCHIVE


def _top_entries(
    images: list[Image], manifests: Mapping[str, tuple[bytes, str, Platform]]
) -> list[tuple[dict[str, object], tuple[str, ...], bytes | None]]:
    """index.json's entries before their names' annotations, in the images' order, each with the names it
    carries: an image manifest (with its platform) for a name of one image or for an unnamed image; for a
    name of images of several platforms, an index of their manifests, whose bytes come third (a blob to
    write).  Names given to the same images share one index; a name spelled two ways is one name."""
    images_of: dict[str, list[str]] = {}  # normalized name -> its images
    for image in images:
        for ref in image.ref_names:
            if image.image_id not in images_of.setdefault(Reference.parse(ref).normalized(), []):
                images_of[Reference.parse(ref).normalized()].append(image.image_id)
    tops: dict[tuple[str, ...], tuple[str, ...]] = {}  # image IDs -> names
    for image in images:
        for name in image.ref_names or (None,):
            key = tuple(images_of[Reference.parse(name).normalized()]) if name is not None else (image.image_id,)
            names = tops.setdefault(key, ())
            if name is not None and name not in names:
                tops[key] = (*names, name)
    result: list[tuple[dict[str, object], tuple[str, ...], bytes | None]] = []
    for key, names in tops.items():
        if len(key) == 1:
            data, media_type, platform = manifests[key[0]]
            top = {
                "mediaType": media_type,
                "digest": oci.digest_of(data),
                "size": len(data),
                "platform": oci.platform_dict(platform),
            }
            result.append((top, names, None))
        else:
            data, media_type = oci.index_manifest([manifests[image_id] for image_id in key], oci=True)
            result.append(({"mediaType": media_type, "digest": oci.digest_of(data), "size": len(data)}, names, data))
    return result


def one_image_per_name(images: list[Image], where: str) -> None:
    """Refuse images that give one name to two images: ``where`` (a docker-archive, the engine) keeps one
    image per name, and which would win is a guess."""
    seen: dict[str, Image] = {}  # normalized name -> the first image given it
    for image in images:
        for ref in image.ref_names:
            other = seen.setdefault(Reference.parse(ref).normalized(), image)
            if other.image_id != image.image_id:
                raise UsageError(
                    f"{ref} names images of {other.platform} and {image.platform}; {where} keeps one image per name",
                    hint="choose one with --platform OS/ARCH[/VARIANT]",
                )


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
        """An oci-archive: every image of the bundle, or those of --platform.  A docker-archive: those of
        --platform, else of this host's platform when the bundle has several (a docker-archive cannot hold an
        index); either way no name may be left on two images."""
        if self._platform is not None:
            chosen = select_images(images, Platform.parse(self._platform), True, self._note)
        elif self._oci or len({str(i.platform) for i in images}) == 1:
            chosen = list(images)
        else:
            chosen = self._host_platform(images)
        if not self._oci:
            one_image_per_name(chosen, "a docker-archive")
        return chosen

    def _host_platform(self, images: tuple[Image, ...]) -> list[Image]:
        """The images of this host's platform, from a bundle with several; none there is refused, naming them."""
        host = host_default()
        chosen = [i for i in images if i.platform.matches(host)]
        platforms = sorted({str(i.platform) for i in images})
        if not chosen:
            raise UsageError(
                f"the bundle has images for {', '.join(platforms)}, none for this host's {host}; "
                "a docker-archive holds one image per name",
                hint="choose one with --platform, or write --to oci-archive:PATH, which keeps every platform",
            )
        others = sorted(set(platforms) - {str(i.platform) for i in chosen})
        self._note(
            f"writing {host} (this host's platform) into the docker-archive; the bundle also has {', '.join(others)} "
            "(--platform chooses another, --to oci-archive:PATH keeps every one)"
        )
        return chosen

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Nothing to refuse before reading: an archive is new (an existing file is refused on writing, unless
        --replace), so it never holds the images already."""
        return None

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        """Every blob read from the bundle (or its base); a docker-archive's zstd layers sent decompressed (each
        read once first, to learn its size and check its diff_id); refused unless the archive's directory has
        room for it all."""
        also = kept_digests(images, (MT_OCI_MANIFEST,)) if self._oci else []  # an OCI layout keeps OCI manifests
        origins: dict[str, Origin] = make_plan(bundle, images, allow_unexpected, also=also)
        if not self._oci:
            unreadable = {
                c for i in images for layer in i.layers if (c := compression_of(layer.media_type))
            } - DOCKER_ARCHIVE_READS
            count = len(to_decompress(images, origins, unreadable))
            if count:
                self._note(
                    f"{count} {'/'.join(sorted(unreadable))} layer(s) will be written decompressed: Docker before 23.0 "
                    "cannot load them; each is read once first, to learn its size and check it against its diff_id"
                )
                origins = decompress_layers(images, origins, unreadable)
        total = plan_total(origins)
        parent = self._path.parent if self._path.parent.exists() else Path(".")
        fsutil.require_space(parent, total + (16 << 20), f"writing {self._path}")
        return Plan(origins, total)

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        """Write the archive atomically, every blob read through its checked origin."""
        if self._oci:
            kept = read_kept(images, plan.origins, (MT_OCI_MANIFEST,), cache, transfer)
            stream = oci_archive_stream(images, plan.origins, transfer, cache, kept)
        else:
            stream = save_stream(images, plan.origins, transfer, cache)
        write_archive(self._path, threaded(stream), self._replace)
        return tuple(InstalledImage(i.image_id, i.ref_names, str(i.platform), "written", str(self._path)) for i in images)
