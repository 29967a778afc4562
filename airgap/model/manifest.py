"""The bundle manifest: frozen dataclasses, strict parsing, canonical bytes.

The manifest file's exact bytes are what signatures cover.  :func:`Manifest.to_bytes` is
deterministic (sorted keys, fixed indentation, ASCII, integers only), so the same bundle always
signs the same, and :func:`Manifest.from_bytes` rejects anything the schema in
``manifests/bundle-v1.schema.json`` does not allow, with a :class:`~airgap.errors.FormatError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airgap.errors import FormatError, UsageError
from airgap.model.mediatypes import IMAGE_MANIFEST_TYPES, INDEX_TYPES
from airgap.model.reference import InvalidReference, Reference

SCHEMA_VERSION = 1
MANIFEST_MEDIA_TYPE = "application/vnd.airgap.bundle.manifest.v1+json"
MANIFEST_NAME = "manifest.json"
SIGNATURES_DIR = "signatures"
PARTS_DIR = "parts"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_PLATFORM_WORD_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")

MAX_PART_INDEX = 99999


def part_path(blob_digest: str, index: int) -> str:
    """The one path a part may have: derived from its blob's digest and its index."""
    return f"{PARTS_DIR}/{blob_digest.removeprefix('sha256:')}.{index:05d}.zst"


def format_time(moment: datetime) -> str:
    """A moment as the manifest writes it: UTC, to the second, like 2026-01-31T12:00:00Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """A manifest time (checked against the pattern by the caller) as an aware UTC datetime; ValueError if it is no date."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def image_name(ref: Any) -> Reference:
    """``ref`` read with Docker's reference grammar (:mod:`airgap.model.reference`), which must give a tag and no
    digest: REPOSITORY:TAG, the only names a bundle keeps.  InvalidReference otherwise."""
    if not isinstance(ref, str):
        raise InvalidReference("an image name must be a string")
    parsed = Reference.parse(ref)
    if parsed.tag is None or parsed.digest is not None:
        raise InvalidReference("an image name is REPOSITORY:TAG, with a tag and no digest")
    return parsed


def valid_media_type(text: str) -> bool:
    """Whether ``text`` is a media type a descriptor of the bundle may carry (type/subtype, no parameters)."""
    return bool(_MEDIA_TYPE_RE.fullmatch(text))


def valid_ref(ref: str) -> bool:
    """Whether ``ref`` is a Docker reference with a tag and no digest (REPOSITORY:TAG), the only names a bundle keeps."""
    try:
        image_name(ref)
    except InvalidReference:
        return False
    return True


# --- strict field readers -------------------------------------------------------------------


def _obj(value: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    """A JSON object with every ``required`` field and none beyond ``optional``; else a FormatError naming ``where``."""
    if not isinstance(value, dict):
        raise FormatError(f"manifest: {where} must be an object")
    keys = set(value)
    missing = required - keys
    if missing:
        raise FormatError(f"manifest: {where} lacks field {sorted(missing)[0]!r}")
    unknown = keys - required - optional
    if unknown:
        raise FormatError(f"manifest: {where} has unknown field {sorted(unknown)[0]!r}")
    return value


MAX_INT = (1 << 63) - 1  # sizes, offsets and sequences: what every tool reading the manifest can hold


def _int(value: Any, where: str, minimum: int = 0) -> int:
    """A JSON integer from ``minimum`` to 2^63-1 (a bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise FormatError(f"manifest: {where} must be an integer from {minimum} to 2^63-1")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> str:
    """A JSON string, matching ``pattern`` in full when one is given."""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise FormatError(f"manifest: {where} is not a valid value: {str(value)[:80]!r}")
    return value


def _ref(value: Any, where: str) -> str:
    """An image name: a JSON string that Docker's reference grammar reads as REPOSITORY:TAG."""
    if not valid_ref(value):
        raise FormatError(f"manifest: {where} is not a valid value: {str(value)[:80]!r}")
    return str(value)


def _list(value: Any, where: str) -> list[Any]:
    """A JSON array."""
    if not isinstance(value, list):
        raise FormatError(f"manifest: {where} must be a list")
    return value


def _checked(value: Any, what: str, pattern: re.Pattern[str]) -> str:
    """A value from a source or a bundle that must match its grammar before it is used anywhere."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise FormatError(f"{what} {str(value)[:120]!r} is not valid")
    return value


def _count(value: Any, what: str) -> int:
    """A byte count from a source or a bundle: a whole number from 0 to 2^63-1, else a FormatError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise FormatError(f"{what} {str(value)[:40]!r} is not a whole number of bytes")
    return value


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """A content-addressed blob as an image refers to it."""

    digest: str
    size: int
    media_type: str

    def __post_init__(self) -> None:
        """Refuse a digest, media type or size outside its grammar, whoever builds the descriptor."""
        _checked(self.digest, "digest", _DIGEST_RE)
        _checked(self.media_type, "media type", _MEDIA_TYPE_RE)
        _count(self.size, "size")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Descriptor:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"digest", "size", "media_type"})
        return cls(
            digest=_str(d["digest"], f"{where}.digest", _DIGEST_RE),
            size=_int(d["size"], f"{where}.size"),
            media_type=_str(d["media_type"], f"{where}.media_type", _MEDIA_TYPE_RE),
        )


@dataclass(frozen=True)
class Platform:
    """The os/architecture[/variant] an image runs on, each word checked against one grammar."""

    os: str
    architecture: str
    variant: str | None = None

    def __post_init__(self) -> None:
        """Refuse platform words outside the grammar, wherever they came from (a source's config, a bundle, --platform)."""
        _checked(self.os, "platform os", _PLATFORM_WORD_RE)
        _checked(self.architecture, "platform architecture", _PLATFORM_WORD_RE)
        if self.variant is not None:
            _checked(self.variant, "platform variant", _PLATFORM_WORD_RE)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """A platform given on the command line: os/arch[/variant]."""
        fields = text.strip().split("/")
        usage = UsageError(f"cannot read platform {text!r}", hint="use os/arch[/variant], e.g. linux/arm64")
        if len(fields) not in (2, 3) or not all(fields):
            raise usage
        try:
            return cls(fields[0], fields[1], fields[2] if len(fields) == 3 else None)
        except FormatError as e:
            raise usage from e

    def matches(self, wanted: Platform) -> bool:
        """This image's platform is the one wanted (a wanted platform without variant matches every variant)."""
        return (
            self.os == wanted.os
            and self.architecture == wanted.architecture
            and (not wanted.variant or self.variant == wanted.variant)
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (no ``variant`` key when there is none)."""
        d: dict[str, Any] = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Platform:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"os", "architecture"}, frozenset({"variant"}))
        variant = d.get("variant")
        return cls(
            os=_str(d["os"], f"{where}.os", _PLATFORM_WORD_RE),
            architecture=_str(d["architecture"], f"{where}.architecture", _PLATFORM_WORD_RE),
            variant=None if variant is None else _str(variant, f"{where}.variant", _PLATFORM_WORD_RE),
        )


@dataclass(frozen=True)
class Image:
    """One image of the bundle: its names, its config (whose digest is the image ID) and layers."""

    ref_names: tuple[str, ...]
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    platform: Platform
    # the image manifest its registry served, carried as a blob: a registry target serves it under the same digest
    manifest: Descriptor | None = None

    def __post_init__(self) -> None:
        """Refuse names that are not Docker references, a name listed twice, diff IDs that do not match the layers,
        and a kept source manifest that is no image manifest."""
        for ref in self.ref_names:
            try:
                image_name(ref)
            except InvalidReference as e:
                raise FormatError(
                    f"image name {str(ref)[:200]!r} is not a valid Docker reference (REPOSITORY:TAG): {e}",
                    hint="Docker would refuse it: rename the image in its source",
                ) from e
        if len(set(self.ref_names)) != len(self.ref_names):
            raise FormatError(f"image {self.config.digest[:19]} lists the name {self.ref_names[0]!r} twice")
        for diff_id in self.diff_ids:
            _checked(diff_id, "diff_id", _DIGEST_RE)
        if len(self.diff_ids) != len(self.layers):
            raise FormatError(f"image {self.config.digest[:19]} has {len(self.layers)} layers but {len(self.diff_ids)} diff_ids")
        if self.manifest is not None and self.manifest.media_type not in IMAGE_MANIFEST_TYPES:
            raise FormatError(f"image {self.config.digest[:19]}: {self.manifest.media_type[:80]!r} is not an image manifest type")
        if self.manifest is not None and self.manifest.size > MANIFEST_BLOB_LIMIT:
            raise FormatError(f"image {self.config.digest[:19]}: its kept manifest is larger than airgap keeps")

    @property
    def image_id(self) -> str:
        """The image ID Docker gives the image: its config's digest."""
        return self.config.digest

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (``manifest`` only when the source's is kept)."""
        return {
            "ref_names": list(self.ref_names),
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "diff_ids": list(self.diff_ids),
            "platform": self.platform.to_dict(),
            **({"manifest": self.manifest.to_dict()} if self.manifest is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Image:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"ref_names", "config", "layers", "diff_ids", "platform"}, frozenset({"manifest"}))
        refs = tuple(_ref(r, f"{where}.ref_names[{i}]") for i, r in enumerate(_list(d["ref_names"], f"{where}.ref_names")))
        layers = tuple(
            Descriptor.from_dict(x, f"{where}.layers[{i}]") for i, x in enumerate(_list(d["layers"], f"{where}.layers"))
        )
        diff_ids = tuple(
            _str(x, f"{where}.diff_ids[{i}]", _DIGEST_RE) for i, x in enumerate(_list(d["diff_ids"], f"{where}.diff_ids"))
        )
        if len(diff_ids) != len(layers):
            raise FormatError(f"manifest: {where} has {len(layers)} layers but {len(diff_ids)} diff_ids")
        if len(set(refs)) != len(refs):
            raise FormatError(f"manifest: {where}.ref_names lists a name twice")
        return cls(
            ref_names=refs,
            config=Descriptor.from_dict(d["config"], f"{where}.config"),
            layers=layers,
            diff_ids=diff_ids,
            platform=Platform.from_dict(d["platform"], f"{where}.platform"),
            manifest=Descriptor.from_dict(d["manifest"], f"{where}.manifest") if "manifest" in d else None,
        )


MANIFEST_BLOB_LIMIT = 4 << 20  # a kept manifest or index: what registries serve at most, and install reads whole
EXTRA_BLOB_LIMIT = 16 << 20  # a blob an attestation or a signature of a kept index names
MAX_EXTRAS = 256  # manifests a kept index lists besides images
MAX_EXTRA_ENTRIES = 4096  # those manifests and their blobs


@dataclass(frozen=True)
class SourceIndex:
    """An image index (manifest list) as the source registry served it, carried as a blob with what it lists
    besides the bundle's images (attestations, signatures: ``extras``, their blobs before the manifests naming
    them), so a registry target serves the index, and every manifest it names, under the same digests."""

    ref_names: tuple[str, ...]  # the names it had in its source (as the images' ref_names write them)
    index: Descriptor
    extras: tuple[Descriptor, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a name that is not REPOSITORY:TAG and a descriptor that is no index (an index packed by digest has
        no name)."""
        for ref in self.ref_names:
            if not valid_ref(ref):
                raise FormatError(f"index name {str(ref)[:120]!r} is not a valid Docker reference (REPOSITORY:TAG)")
        if self.index.media_type not in INDEX_TYPES:
            raise FormatError(f"index {self.index.digest[:19]}: {self.index.media_type[:80]!r} is not an index type")
        if self.index.size > MANIFEST_BLOB_LIMIT or len(self.extras) > MAX_EXTRA_ENTRIES:
            raise FormatError(f"index {self.index.digest[:19]} is larger, or lists more, than airgap keeps")
        for extra in self.extras:
            limit = MANIFEST_BLOB_LIMIT if extra.media_type in IMAGE_MANIFEST_TYPES else EXTRA_BLOB_LIMIT
            if extra.size > limit:
                raise FormatError(f"index {self.index.digest[:19]}: {extra.digest[:19]} is larger than airgap keeps")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {
            "ref_names": list(self.ref_names),
            "index": self.index.to_dict(),
            "extras": [x.to_dict() for x in self.extras],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SourceIndex:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"ref_names", "index", "extras"})
        refs = tuple(_ref(r, f"{where}.ref_names[{i}]") for i, r in enumerate(_list(d["ref_names"], f"{where}.ref_names")))
        extras = tuple(
            Descriptor.from_dict(x, f"{where}.extras[{i}]") for i, x in enumerate(_list(d["extras"], f"{where}.extras"))
        )
        try:
            return cls(refs, Descriptor.from_dict(d["index"], f"{where}.index"), extras)
        except FormatError as e:
            if e.message.startswith("manifest: "):
                raise
            raise FormatError(f"manifest: {where}: {e.message}") from e


@dataclass(frozen=True)
class Part:
    """One part file: an independent zstd frame holding bytes [offset, offset+length) of one blob."""

    path: str
    size: int
    sha256: str
    blob: str
    index: int
    offset: int
    length: int

    def __post_init__(self) -> None:
        """Refuse a part whose path is not the one derived from its blob and index (an edited manifest
        cannot point a part at another file)."""
        _checked(self.blob, "blob digest", _DIGEST_RE)
        _checked(self.sha256, "sha256", _HEX64_RE)
        if not 0 <= self.index <= MAX_PART_INDEX or self.path != part_path(self.blob, self.index):
            raise FormatError(
                f"part path {str(self.path)[:120]!r} is not the name airgap gives part {self.index} of {self.blob[:19]}",
                hint="part paths are derived from the blob digest; a different path means an edited manifest",
            )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "blob": self.blob,
            "index": self.index,
            "offset": self.offset,
            "length": self.length,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Part:
        """Parse the manifest's JSON form strictly; every error is reported as the manifest's, naming ``where``."""
        d = _obj(d, where, {"path", "size", "sha256", "blob", "index", "offset", "length"})
        try:
            return cls(
                path=_str(d["path"], f"{where}.path"),
                size=_int(d["size"], f"{where}.size", 1),
                sha256=_str(d["sha256"], f"{where}.sha256", _HEX64_RE),
                blob=_str(d["blob"], f"{where}.blob", _DIGEST_RE),
                index=_int(d["index"], f"{where}.index"),
                offset=_int(d["offset"], f"{where}.offset"),
                length=_int(d["length"], f"{where}.length"),
            )
        except FormatError as e:
            if e.message.startswith("manifest: "):
                raise
            raise FormatError(f"manifest: {where}: {e.message}", hint=e.hint) from e


# the paths a bundle file (not a part) may have; install.sh, audit.sh and the bundle schema spell the same
FILE_PATH_PATTERN = r"installer/[A-Za-z0-9_+-][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*|volume-[0-9]{2,3}\.txt|sbom/[0-9a-f]{64}\.cdx\.json"
_FILE_PATH_RE = re.compile(rf"^(?:{FILE_PATH_PATTERN})$")
_VOLUME_RE = re.compile(r"^vol-[0-9]{2,3}$")
INSTALLER_DIR = "installer"
SBOM_DIR = "sbom"  # each image's CycloneDX SBOM: sbom/<image-id>.cdx.json
SBOM_MODES = ("off", "on", "require")  # pack --sbom: no inventory; one with its warnings noted; one without warnings or no bundle


@dataclass(frozen=True)
class BundleFile:
    """A signed file that travels with the bundle besides its parts (the POSIX installer, a wheelhouse)."""

    path: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        """Refuse a path outside ``installer/`` and the volume listings, an overlong path, or a bad hash or size."""
        _checked(self.path, "bundle file path", _FILE_PATH_RE)
        if len(self.path) > 300:
            raise FormatError(f"bundle file path {self.path[:60]!r}... is too long")
        _checked(self.sha256, "sha256", _HEX64_RE)
        _count(self.size, "size")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> BundleFile:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"path", "size", "sha256"})
        path = _str(d["path"], f"{where}.path", _FILE_PATH_RE)
        if len(path) > 300:
            raise FormatError(f"manifest: {where}.path is too long")
        return cls(path=path, size=_int(d["size"], f"{where}.size"), sha256=_str(d["sha256"], f"{where}.sha256", _HEX64_RE))


@dataclass(frozen=True)
class Volume:
    """One medium of a bundle split with --media-dir-size: the parts and files it carries.
    manifest.json and the signatures are on the first volume."""

    name: str
    paths: tuple[str, ...]

    def __post_init__(self) -> None:
        """Refuse a volume name other than vol-NN or vol-NNN (it becomes a folder name)."""
        _checked(self.name, "volume name", _VOLUME_RE)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {"name": self.name, "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Volume:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"name", "paths"})
        paths = tuple(_str(x, f"{where}.paths[{i}]") for i, x in enumerate(_list(d["paths"], f"{where}.paths")))
        return cls(name=_str(d["name"], f"{where}.name", _VOLUME_RE), paths=paths)


@dataclass(frozen=True)
class Rebuild:
    """A layer a delta does not carry as bytes but as a recipe over a layer of its base bundle."""

    layer: str  # digest of the rebuilt layer (an image layer; not among the blobs)
    size: int
    recipe: str  # blob digest of the recipe (among the blobs)
    source: str  # digest of the base bundle's layer the recipe copies from (uncompressed, so also its diff ID)
    source_size: int

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {
            "layer": self.layer,
            "size": self.size,
            "recipe": self.recipe,
            "source": self.source,
            "source_size": self.source_size,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Rebuild:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"layer", "size", "recipe", "source", "source_size"})
        return cls(
            layer=_str(d["layer"], f"{where}.layer", _DIGEST_RE),
            size=_int(d["size"], f"{where}.size"),
            recipe=_str(d["recipe"], f"{where}.recipe", _DIGEST_RE),
            source=_str(d["source"], f"{where}.source", _DIGEST_RE),
            source_size=_int(d["source_size"], f"{where}.source_size"),
        )


@dataclass(frozen=True)
class Blob:
    """A blob the bundle carries in its parts (a config, a layer, a delta's recipe): its digest and uncompressed size."""

    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {"digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Blob:
        """Parse the manifest's JSON form strictly; errors name ``where``."""
        d = _obj(d, where, {"digest", "size"})
        return cls(digest=_str(d["digest"], f"{where}.digest", _DIGEST_RE), size=_int(d["size"], f"{where}.size"))


@dataclass(frozen=True)
class Compression:
    """How the parts are compressed: zstd (the only algorithm read) at a level of 1 or more."""

    algorithm: str
    level: int

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {"algorithm": self.algorithm, "level": self.level}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Compression:
        """Parse the manifest's JSON form strictly; an algorithm other than zstd is a FormatError."""
        d = _obj(d, where, {"algorithm", "level"})
        algorithm = _str(d["algorithm"], f"{where}.algorithm")
        if algorithm != "zstd":
            raise FormatError(f"manifest: unsupported compression {algorithm[:40]!r}")
        return cls(algorithm=algorithm, level=_int(d["level"], f"{where}.level", 1))


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds.  Written once, last, and signed as exact bytes."""

    name: str
    sequence: int
    created: str
    tool_version: str
    part_size: int
    compression: Compression
    images: tuple[Image, ...]
    blobs: tuple[Blob, ...]
    parts: tuple[Part, ...]
    expires: str | None = None
    base: str | None = None
    files: tuple[BundleFile, ...] = ()
    volumes: tuple[Volume, ...] = ()
    rebuilds: tuple[Rebuild, ...] = ()
    indexes: tuple[SourceIndex, ...] = ()
    schema_version: int = SCHEMA_VERSION
    media_type: str = MANIFEST_MEDIA_TYPE
    _blob_index: dict[str, Blob] = field(default_factory=dict, init=False, repr=False, compare=False)
    _parts_index: dict[str, list[Part]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _volume_index: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _rebuild_index: dict[str, Rebuild] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the manifest as a whole (see :meth:`_check`), then index blobs, parts, volumes and rebuilds for lookups."""
        self._check()
        self._blob_index.update({b.digest: b for b in self.blobs})
        for part in self.parts:
            self._parts_index.setdefault(part.blob, []).append(part)
        self._volume_index.update({path: v.name for v in self.volumes for path in v.paths})
        self._rebuild_index.update({r.layer: r for r in self.rebuilds})

    # -- semantic checks shared by writer and reader --------------------------------------------
    def _check(self) -> None:
        """The rules that span records, for the writer and the reader alike: each name on one image per platform,
        every image blob listed (a delta may leave out layers), parts in order and adding up to their blob,
        no path twice, rebuilds only in a delta, every path on exactly one volume, times in UTC."""
        if not self.images:
            raise FormatError("manifest: the bundle lists no image")
        _checked(self.name, "bundle name", _NAME_RE)
        named: dict[tuple[str, str], str] = {}
        for image in self.images:
            for ref in image.ref_names:  # compared as Docker normalizes them: busybox:1 is docker.io/library/busybox:1
                other = named.setdefault((image_name(ref).key, str(image.platform)), image.image_id)
                if other != image.image_id:
                    raise FormatError(
                        f"manifest: the name {ref} is given to two {image.platform} images ({other[:19]} and {image.image_id[:19]})",
                        hint="one name can point at one image per platform: rename one of them before packing",
                    )
        if not self.parts:
            raise FormatError("manifest: the bundle lists no part")
        blob_digests = [b.digest for b in self.blobs]
        if len(set(blob_digests)) != len(blob_digests):
            raise FormatError("manifest: a blob is listed twice")
        sizes = {b.digest: b.size for b in self.blobs}
        for image in self.images:
            for desc in (image.config, *image.layers, *([image.manifest] if image.manifest else [])):
                if desc.digest not in sizes:
                    if self.base is not None and desc in image.layers:
                        continue  # a delta: the layer comes from the base bundle
                    raise FormatError(f"manifest: image blob {desc.digest} is not among the bundle's blobs")
                if sizes[desc.digest] != desc.size:
                    raise FormatError(f"manifest: blob {desc.digest} has two different sizes")
        kept = {image.manifest.digest for image in self.images if image.manifest}
        for index in self.indexes:
            for desc in (index.index, *index.extras):
                if sizes.get(desc.digest) != desc.size:
                    raise FormatError(f"manifest: index blob {desc.digest} is not among the bundle's blobs with its size")
            if not kept:
                raise FormatError(f"manifest: index {index.index.digest} is kept, but no image manifest is")
        paths = set()
        expected_offset: dict[str, int] = {}
        expected_index: dict[str, int] = {}
        for part in self.parts:
            if part.path in paths:
                raise FormatError(f"manifest: part {part.path} is listed twice")
            paths.add(part.path)
            if part.blob not in sizes:
                raise FormatError(f"manifest: part {part.path} belongs to no listed blob")
            if part.offset != expected_offset.get(part.blob, 0) or part.index != expected_index.get(part.blob, 0):
                raise FormatError(f"manifest: part {part.path} is out of order or leaves a gap in its blob")
            expected_offset[part.blob] = part.offset + part.length
            expected_index[part.blob] = part.index + 1
            if part.size > self.part_size:
                raise FormatError(f"manifest: part {part.path} is larger than the bundle's part size")
        for f in self.files:
            if f.path in paths:
                raise FormatError(f"manifest: file {f.path} is listed twice")
            paths.add(f.path)
        layer_sizes = {layer.digest: layer.size for image in self.images for layer in image.layers}
        for r in self.rebuilds:
            if self.base is None:
                raise FormatError("manifest: only a delta (with a base) rebuilds layers")
            if layer_sizes.get(r.layer) != r.size or r.layer in sizes:
                raise FormatError(f"manifest: rebuilt layer {r.layer} is not an image layer left out of the bundle")
            if r.recipe not in sizes or r.source in sizes:
                raise FormatError(f"manifest: the recipe of layer {r.layer} is not a blob, or its source is not in the base")
        if len({r.layer for r in self.rebuilds}) != len(self.rebuilds):
            raise FormatError("manifest: a layer is rebuilt twice")
        if self.volumes:
            placed: set[str] = set()
            names = [v.name for v in self.volumes]
            if len(set(names)) != len(names):
                raise FormatError("manifest: a volume is listed twice")
            for volume in self.volumes:
                for path in volume.paths:
                    if path not in paths or path in placed:
                        raise FormatError(
                            f"manifest: volume {volume.name} lists {path[:120]!r}, not a part or file of the bundle once"
                        )
                    placed.add(path)
            if placed != paths:
                raise FormatError("manifest: some parts are on no volume")
        for digest, size in sizes.items():
            if digest not in expected_offset:
                raise FormatError(f"manifest: blob {digest} has no part")
            if expected_offset[digest] != size:
                raise FormatError(f"manifest: the parts of blob {digest} do not add up to its size")
        for label, stamp in (("created", self.created), ("expires", self.expires)):
            if stamp is None:
                continue
            try:
                valid = isinstance(stamp, str) and bool(_TIME_RE.fullmatch(stamp)) and bool(parse_time(stamp))
            except ValueError:
                valid = False
            if not valid:
                raise FormatError(f"manifest: {label} is not a UTC time like 2026-01-31T12:00:00Z")
        for label, number in (("sequence", self.sequence), ("part_size", self.part_size)):
            _int(number, label, 1 if label == "part_size" else 0)

    # -- queries --------------------------------------------------------------------------------
    def external_layers(self) -> list[Descriptor]:
        """Layers a delta bundle does not carry: they come from its base bundle (or are in the target already)."""
        seen: dict[str, Descriptor] = {}
        for image in self.images:
            for layer in image.layers:
                if layer.digest not in self._blob_index and layer.digest not in self._rebuild_index:
                    seen.setdefault(layer.digest, layer)
        return list(seen.values())

    def rebuild_of(self, digest: str) -> Rebuild | None:
        """How a delta rebuilds this layer, or None when it does not."""
        return self._rebuild_index.get(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the bundle carries this blob in its parts."""
        return digest in self._blob_index

    def volume_of(self, path: str) -> str | None:
        """The volume carrying this part or file, or None when the bundle is not split."""
        return self._volume_index.get(path)

    def blob(self, digest: str) -> Blob:
        """The listed blob with this digest (KeyError when the bundle does not carry it)."""
        return self._blob_index[digest]

    def parts_of(self, digest: str) -> list[Part]:
        """The parts of a blob, in order (empty when the bundle does not carry it)."""
        return list(self._parts_index.get(digest, ()))

    @property
    def total_part_bytes(self) -> int:
        """The bytes of every part: what the bundle takes on disk besides its manifest and side files."""
        return sum(p.size for p in self.parts)

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form; ``files``, ``volumes``, ``rebuilds`` and ``indexes`` appear only when not empty."""
        return {
            "schema_version": self.schema_version,
            "media_type": self.media_type,
            "name": self.name,
            "sequence": self.sequence,
            "created": self.created,
            "expires": self.expires,
            "base": self.base,
            "tool": {"name": "airgap", "version": self.tool_version},
            "part_size": self.part_size,
            "compression": self.compression.to_dict(),
            "images": [i.to_dict() for i in self.images],
            "blobs": [b.to_dict() for b in self.blobs],
            "parts": [p.to_dict() for p in self.parts],
            **({"files": [f.to_dict() for f in self.files]} if self.files else {}),
            **({"volumes": [v.to_dict() for v in self.volumes]} if self.volumes else {}),
            **({"rebuilds": [r.to_dict() for r in self.rebuilds]} if self.rebuilds else {}),
            **({"indexes": [x.to_dict() for x in self.indexes]} if self.indexes else {}),
        }

    def to_bytes(self) -> bytes:
        """The exact bytes written and signed: sorted keys, indented, ASCII, integers only, so the same manifest always
        gives the same bytes."""
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Parse a manifest strictly: an unsupported schema_version, a missing or unknown field, or a broken rule
        is a FormatError.  An unknown field says the bundle may come from a newer airgap, naming the version it
        names."""
        try:
            return cls._from_dict(d)
        except FormatError as e:
            if "has unknown field" in e.message:
                tool = d.get("tool") if isinstance(d, dict) else None
                made_by = tool.get("version") if isinstance(tool, dict) else None
                named = f" (it names airgap {str(made_by)[:40]})" if isinstance(made_by, str) else ""
                e.hint = (
                    f"a field this airgap does not read: a newer airgap may have made the bundle{named}; read it with "
                    "that version or a newer one (a bundle edited by hand fails its signature instead)"
                )
            raise

    @classmethod
    def _from_dict(cls, d: Any) -> Manifest:
        """:meth:`from_dict` without the hint for fields of newer versions."""
        if isinstance(d, dict) and d.get("schema_version") != SCHEMA_VERSION:
            raise FormatError(
                f"manifest: schema_version {str(d.get('schema_version'))[:20]} is not supported",
                hint=f"this airgap reads schema_version {SCHEMA_VERSION}; a newer bundle needs a newer airgap",
            )
        d = _obj(
            d,
            "the manifest",
            {
                "schema_version",
                "media_type",
                "name",
                "sequence",
                "created",
                "expires",
                "base",
                "tool",
                "part_size",
                "compression",
                "images",
                "blobs",
                "parts",
            },
            frozenset({"files", "volumes", "rebuilds", "indexes"}),
        )
        if d["media_type"] != MANIFEST_MEDIA_TYPE:
            raise FormatError("manifest: media_type is not an airgap bundle manifest")
        tool = _obj(d["tool"], "tool", {"name", "version"})
        if tool["name"] != "airgap":
            raise FormatError("manifest: tool.name must be 'airgap'")
        expires = d["expires"]
        base = d["base"]
        return cls(
            name=_str(d["name"], "name", _NAME_RE),
            sequence=_int(d["sequence"], "sequence"),
            created=_str(d["created"], "created", _TIME_RE),
            expires=None if expires is None else _str(expires, "expires", _TIME_RE),
            base=None if base is None else _str(base, "base", _DIGEST_RE),
            tool_version=_str(tool["version"], "tool.version", re.compile(r"^[0-9A-Za-z.+-]{1,40}$")),
            part_size=_int(d["part_size"], "part_size", 1),
            compression=Compression.from_dict(d["compression"], "compression"),
            images=tuple(Image.from_dict(x, f"images[{i}]") for i, x in enumerate(_list(d["images"], "images"))),
            blobs=tuple(Blob.from_dict(x, f"blobs[{i}]") for i, x in enumerate(_list(d["blobs"], "blobs"))),
            parts=tuple(Part.from_dict(x, f"parts[{i}]") for i, x in enumerate(_list(d["parts"], "parts"))),
            files=tuple(BundleFile.from_dict(x, f"files[{i}]") for i, x in enumerate(_list(d.get("files", []), "files"))),
            volumes=tuple(Volume.from_dict(x, f"volumes[{i}]") for i, x in enumerate(_list(d.get("volumes", []), "volumes"))),
            rebuilds=tuple(
                Rebuild.from_dict(x, f"rebuilds[{i}]") for i, x in enumerate(_list(d.get("rebuilds", []), "rebuilds"))
            ),
            indexes=tuple(
                SourceIndex.from_dict(x, f"indexes[{i}]") for i, x in enumerate(_list(d.get("indexes", []), "indexes"))
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest.json's bytes: JSON without floats, NaN or Infinity, then :meth:`from_dict`.  Every failure,
        including deep nesting or huge integers, is a FormatError."""
        try:
            parsed = json.loads(data.decode("utf-8"), parse_float=_reject_float, parse_constant=_reject_float)
        except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, an integer of thousands of digits, deep nesting
            raise FormatError(f"manifest: not valid JSON ({str(e)[:80]})") from e
        return cls.from_dict(parsed)


def _reject_float(text: str) -> Any:
    """JSON parse hook: a manifest holds no floating point numbers (they would not sign the same everywhere)."""
    raise FormatError(f"manifest: floating point numbers are not allowed ({text[:20]!r})")
