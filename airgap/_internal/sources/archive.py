"""Image source: image archives.  The docker-save layout (Docker <= 24), Docker >= 25's OCI layout with a
docker-compatible manifest.json, and OCI image layouts (oci-archive, as skopeo and podman write).  The
Docker engine's export (``engine.py``) is read here too: it is a docker-save archive.

The archive is streamed once.  Small files are kept in memory (they are metadata or configs);
everything else is handed to a blob store as it streams by.  Once the stream ends, the archive's
index tells which files are configs and layers.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from airgap._internal.sources.base import BlobStore, ImageSource, OpenContext, Source, SourceKind, StoredBlob, parse_platforms
from airgap._internal.util.pipeline import PrefetchReader
from airgap._internal.util.tarstream import Readable, iter_entries
from airgap.errors import FormatError, UsageError
from airgap.model.manifest import Descriptor, Image, Platform, SourceIndex, image_name, valid_ref
from airgap.model.mediatypes import (
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_DOCKER_LAYER_GZIP,
    MT_DOCKER_LAYER_ZSTD,
    MT_DOCKER_LIST,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
)

SMALL_FILE = 1 << 20  # files up to this size are kept in memory while the archive streams
SMALL_TOTAL = 64 << 20  # ... up to this much in all
DOCKER_PREFIX = "docker-archive:"
OCI_PREFIX = "oci-archive:"


# -- the source: an archive file named on the command line ------------------------------------------------
@dataclass(frozen=True)
class ArchiveFile(Source):
    """An image archive file: ``docker-archive:PATH`` or ``oci-archive:PATH[:REPO]``."""

    prefixes: ClassVar[tuple[str, ...]] = (DOCKER_PREFIX, OCI_PREFIX)
    path: str  # as given: the resume key records it so

    @classmethod
    def parse(cls, prefix: str, rest: str) -> ArchiveFile:
        """``docker-archive:PATH`` or ``oci-archive:PATH[:REPO]``; ``PATH:REPO`` splits only when no file has
        the whole name."""
        path, name = rest, None
        if prefix == OCI_PREFIX and ":" in rest and not Path(rest).exists():
            path, _, name = rest.partition(":")
        if not path:
            raise UsageError(f"source {prefix + rest!r} names no file")
        return OciArchive(path, name) if prefix == OCI_PREFIX else DockerArchive(path)

    @property
    def repository(self) -> str | None:
        """The repository that bare OCI ref names (a tag such as "1.0") are names in; None: such images stay
        unnamed."""
        return None

    def resume_inputs(self) -> list[str | None]:
        """``[kind, path, repository]``."""
        return [self.kind, self.path, self.repository]

    def __str__(self) -> str:
        """``KIND:PATH``, as named (without an oci-archive's repository)."""
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class DockerArchive(ArchiveFile):
    """``docker-archive:PATH``: what ``docker save`` writes (either layout)."""

    kind: ClassVar[str] = "docker-archive"


@dataclass(frozen=True)
class OciArchive(ArchiveFile):
    """``oci-archive:PATH[:REPO]``: an OCI image layout in a tar file (skopeo, podman, buildkit)."""

    kind: ClassVar[str] = "oci-archive"
    name: str | None = None  # REPO

    @property
    def repository(self) -> str | None:
        """REPO, when given."""
        return self.name


class ArchiveOpener:
    """Opens the archive files of one pack: each must be readable when named; its size is its estimate."""

    def __init__(self, ctx: OpenContext) -> None:
        """Nothing to open before the first file is named."""
        self._ctx = ctx
        self._opened: list[ImageSource] = []

    def add(self, source: ArchiveFile) -> None:
        """Check that ``source`` names a file that can be read (stat'ed) and note its size."""
        try:
            size = os.stat(source.path).st_size
        except OSError as e:
            raise UsageError(f"cannot read archive {source.path}: {e.strerror}") from e
        self._opened.append(ArchiveImages(source, size, self._ctx.platform))

    def sources(self) -> list[ImageSource]:
        """One image source per archive file, in the order named."""
        return list(self._opened)


class ArchiveImages:
    """The images of one archive file: it is read once, start to end; --platform keeps some of them."""

    def __init__(self, source: ArchiveFile, size: int, platform: str | None) -> None:
        """``size``: the file's, when it was named; ``platform``: --platform as given."""
        self._source = source
        self._size = size
        self._platform = platform

    @property
    def name(self) -> str:
        """``KIND:PATH``."""
        return str(self._source)

    def estimate(self) -> int:
        """The file's size."""
        return self._size

    def check_room(self) -> None:
        """An archive needs no room of its own."""

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Stream the file into ``store``; the images it holds that --platform names.  ``left_out`` is not
        known before a layer is read: the store's guesses leave out a delta's base layers."""
        try:
            fh = open(self._source.path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise UsageError(f"cannot read archive {self._source.path}: {e.strerror}") from e
        with fh, PrefetchReader(fh) as ahead:
            contents = read_archive(ahead, self.name, store)
            found = images_from_archive(contents, store, self._source.repository)
        return _platform_filter(found, self._platform, self.name)

    def indexes(self) -> list[SourceIndex]:
        """None: an archive's manifests are rebuilt from its configs and layers."""
        return []


KIND = SourceKind(ArchiveFile, ArchiveOpener)


def _platform_filter(images: list[Image], platform: str | None, label: str) -> list[Image]:
    """Archives keep every image unless --platform names some."""
    wanted = parse_platforms(platform)
    if wanted is None:
        return images
    kept = [i for i in images if any(i.platform.matches(w) for w in wanted)]
    if not kept:
        have = ", ".join(sorted({str(i.platform) for i in images}))
        raise UsageError(f"{label} has no image for --platform {platform} (it has {have})")
    return kept


# -- reading an archive stream --------------------------------------------------------------------------
@dataclass
class ArchiveContents:
    """What one archive stream held: the files stored as blobs, the small ones kept in memory, and its links
    (name -> target), which the archive's index may go through."""

    label: str
    files: dict[str, StoredBlob] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """``name`` normalized, followed through the archive's links (at most 32)."""
        seen = 0
        name = posixpath.normpath(name).lstrip("/")
        while name in self.links and seen < 32:
            name = self.links[name]
            seen += 1
        return name

    def stored(self, name: str) -> StoredBlob:
        """The blob stored for ``name``; a name the archive does not hold is a FormatError."""
        path = self.resolve(name)
        if path not in self.files:
            raise FormatError(f"{self.label}: the archive's index names {name!r}, which the archive does not hold")
        return self.files[path]

    def json_file(self, name: str, store: BlobStore) -> Any:
        """The JSON document ``name`` holds (from memory, or read back from the store)."""
        path = self.resolve(name)
        if path in self.small:
            data = self.small[path]
        elif path in self.files:
            data = store.read_small(self.files[path].digest, 16 << 20)
        else:
            raise FormatError(f"{self.label}: the archive does not hold {name!r}")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise FormatError(f"{self.label}: {name} is not valid JSON") from e


def read_archive(stream: Readable, label: str, store: BlobStore) -> ArchiveContents:
    """Stream an image archive: keep small files in memory, hand the rest to the blob store."""
    contents = ArchiveContents(label)
    small_total = 0
    for entry, reader in iter_entries(stream, label):
        if entry.kind == "symlink":
            contents.links[entry.name] = posixpath.normpath(posixpath.join(posixpath.dirname(entry.name), entry.linkname))
        elif entry.kind == "hardlink":
            contents.links[entry.name] = posixpath.normpath(entry.linkname).lstrip("/")
        elif entry.kind == "file":
            if entry.size <= SMALL_FILE and small_total + entry.size <= SMALL_TOTAL:
                data = reader.read(entry.size) if entry.size else b""
                while len(data) < entry.size:
                    data += reader.read(entry.size - len(data))
                contents.small[entry.name] = data
                small_total += entry.size
            else:
                contents.files[entry.name] = store.store_stream(entry.size, reader, f"{label}\0{entry.name}")
    if not contents.small and not contents.files:
        raise FormatError(f"{label}: the archive is empty")
    return contents


def materialize_small(contents: ArchiveContents, name: str, store: BlobStore) -> StoredBlob:
    """Store a file that was kept in memory as a blob (configs and small layers)."""
    path = contents.resolve(name)
    if path not in contents.files:
        if path not in contents.small:
            raise FormatError(f"{contents.label}: the archive's index names {name!r}, which the archive does not hold")
        contents.files[path] = store.store_bytes(contents.small[path])
    return contents.files[path]


def layer_media_type(head: bytes, oci: bool) -> str:
    """A layer's media type from its first bytes, when the archive's index does not say."""
    if head.startswith(b"\x1f\x8b"):
        return MT_OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return MT_OCI_LAYER_ZSTD
    return MT_OCI_LAYER if oci else MT_DOCKER_LAYER


def config_facts(config: Any, label: str) -> tuple[tuple[str, ...], Platform]:
    """An image config's layer diff_ids (none for an image without layers) and platform, checked (archives and
    registries alike)."""
    if not isinstance(config, dict):
        raise FormatError(f"{label}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict):
        raise FormatError(f"{label}: image config has no rootfs", hint="the image spec and Docker require one, if only {}")
    # an image without layers (FROM scratch and metadata only) has none: Docker leaves diff_ids out, others write []
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise FormatError(f"{label}: image config has a malformed rootfs.diff_ids")
    os_name = config.get("os") or "linux"
    arch = config.get("architecture") or "amd64"
    variant = config.get("variant") or None
    if not all(isinstance(x, str) for x in (os_name, arch)) or not isinstance(variant, (str, type(None))):
        raise FormatError(f"{label}: image config has a malformed platform")
    try:
        return tuple(diff_ids), Platform(os_name, arch, variant)
    except FormatError as e:
        raise FormatError(f"{label}: image config: {e.message}", hint="the image's platform fields are not os/arch words") from e


def images_from_archive(contents: ArchiveContents, store: BlobStore, default_name: str | None = None) -> list[Image]:
    """Find the images an archive holds.  manifest.json (docker) wins over index.json (OCI)."""
    if "manifest.json" in contents.small or "manifest.json" in contents.files:
        return _docker_images(contents, store)
    if "index.json" in contents.small or "index.json" in contents.files:
        return _oci_images(contents, store, default_name)
    raise FormatError(
        f"{contents.label}: neither manifest.json nor index.json found",
        hint="expected the output of 'docker save' or an OCI image layout archive",
    )


def _image(
    contents: ArchiveContents,
    store: BlobStore,
    config_path: str,
    layer_paths: list[str],
    layer_types: list[str] | None,
    refs: list[str],
    oci: bool,
) -> Image:
    """One image of the archive: its config and layers stored as blobs, uncompressed layers checked against
    the config's diff_ids, its names completed with a tag."""
    label = contents.label
    config_blob = materialize_small(contents, config_path, store)
    config = contents.json_file(config_path, store)
    diff_ids, platform = config_facts(config, label)
    if len(diff_ids) != len(layer_paths):
        raise FormatError(f"{label}: image config lists {len(diff_ids)} layers, the archive index {len(layer_paths)}")
    layers = []
    for i, path in enumerate(layer_paths):
        blob = materialize_small(contents, path, store)
        media_type = layer_types[i] if layer_types else layer_media_type(blob.head, oci)
        if media_type in (MT_DOCKER_LAYER, MT_OCI_LAYER) and blob.digest != diff_ids[i]:
            raise FormatError(
                f"{label}: layer {path} does not match diff_id {diff_ids[i][:19]} in the image config",
                hint="the archive is damaged; export the image again",
            )
        layers.append(Descriptor(blob.digest, blob.size, media_type))
    config_type = MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG
    clean_refs = []
    for ref in refs:
        full = _with_tag(ref)
        if full not in clean_refs:
            clean_refs.append(full)
    try:
        return Image(
            ref_names=tuple(clean_refs),
            config=Descriptor(config_blob.digest, config_blob.size, config_type),
            layers=tuple(layers),
            diff_ids=diff_ids,
            platform=platform,
        )
    except FormatError as e:
        raise FormatError(f"{label}: {e.message}", hint=e.hint) from e


def _docker_images(contents: ArchiveContents, store: BlobStore) -> list[Image]:
    """The images a docker-save manifest.json lists."""
    index = contents.json_file("manifest.json", store)
    if not isinstance(index, list) or not index:
        raise FormatError(f"{contents.label}: manifest.json lists no image")
    images = []
    for entry in index:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
            raise FormatError(f"{contents.label}: manifest.json entry lacks Config or Layers")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise FormatError(f"{contents.label}: manifest.json has malformed RepoTags")
        layer_paths = [str(p) for p in entry["Layers"]]
        images.append(_image(contents, store, entry["Config"], layer_paths, None, tags, oci=False))
    return images


def _blob_path(descriptor: Any, label: str) -> tuple[str, str]:
    """Where an OCI layout holds the blob a descriptor names, and the descriptor's media type."""
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        raise FormatError(f"{label}: malformed descriptor in the OCI layout")
    algo, _, hexdigest = descriptor["digest"].partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise FormatError(f"{label}: unsupported digest {descriptor['digest'][:80]!r}")
    return f"blobs/sha256/{hexdigest}", str(descriptor.get("mediaType", ""))


def _oci_images(contents: ArchiveContents, store: BlobStore, default_name: str | None) -> list[Image]:
    """The images an OCI layout's index.json leads to, through nested indexes (at most 4 deep)."""
    label = contents.label
    images: list[Image] = []

    def walk(index_path: str, depth: int, inherited_ref: str | None) -> None:
        """Every image below the index at ``index_path``, named by its own annotations or its index's."""
        if depth > 4:
            raise FormatError(f"{label}: OCI indexes nest too deeply")
        index = contents.json_file(index_path, store)
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise FormatError(f"{label}: {index_path} lists no manifests")
        for desc in manifests:
            path, media_type = _blob_path(desc, label)
            annotations = desc.get("annotations") or {}
            ref = _oci_ref(annotations, default_name) or inherited_ref
            if media_type in (MT_OCI_INDEX, MT_DOCKER_LIST):
                walk(path, depth + 1, ref)
                continue
            manifest = contents.json_file(path, store)
            _image_from_manifest(manifest, path, [ref] if ref else [])

    def _image_from_manifest(manifest: Any, path: str, refs: list[str]) -> None:
        """The image an OCI image manifest describes."""
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise FormatError(f"{label}: {path} is not an image manifest")
        config_path, _ = _blob_path(manifest.get("config"), label)
        layer_paths, layer_types = [], []
        for layer in manifest["layers"]:
            layer_path, layer_type = _blob_path(layer, label)
            layer_paths.append(layer_path)
            layer_types.append(normalize_layer_type(layer_type))
        images.append(_image(contents, store, config_path, layer_paths, layer_types, refs, oci=True))

    walk("index.json", 0, None)
    if not images:
        raise FormatError(f"{label}: the OCI layout holds no image")
    return images


def _oci_ref(annotations: Any, default_name: str | None) -> str | None:
    """An image name from OCI index annotations.  ``ref.name`` is often a bare tag ("latest", "1.0"):
    it names an image only together with a repository (oci-archive:PATH:REPO)."""
    if not isinstance(annotations, dict):
        return None
    full = annotations.get("io.containerd.image.name")
    if isinstance(full, str) and valid_ref(_with_tag(full)):
        return image_name(_with_tag(full)).familiar()
    name = annotations.get("org.opencontainers.image.ref.name")
    if not isinstance(name, str) or not name:
        return None
    if "/" in name or ":" in name:
        return image_name(_with_tag(name)).familiar() if valid_ref(_with_tag(name)) else None
    if default_name and valid_ref(f"{default_name}:{name}"):
        return f"{default_name}:{name}"
    return None


def _with_tag(ref: str) -> str:
    """``ref`` with ``:latest`` when it names no tag."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


_LAYER_TYPES: dict[str, str] = {
    MT_DOCKER_LAYER_GZIP: MT_OCI_LAYER_GZIP,
    MT_DOCKER_LAYER_ZSTD: MT_OCI_LAYER_ZSTD,  # containerd's and BuildKit's name for zstd with Docker media types
    MT_DOCKER_LAYER: MT_OCI_LAYER,
}


def normalize_layer_type(media_type: str) -> str:
    """The OCI media type for a layer media type a manifest gives (docker's names map to OCI's)."""
    return _LAYER_TYPES.get(media_type, media_type or MT_OCI_LAYER)
