"""What the inventory finds, as frozen records, and how one image's layers merge into its inventory.

A layer's walk yields a :class:`LayerInventory`: records by the path they were read from, the paths its
whiteouts delete and the folders it makes opaque.  :func:`merge` applies the layers of one image bottom to
top, as the container runtime does: a whiteout deletes a path and everything below it in the layers
beneath, an opaque folder hides everything below it in the layers beneath, and a file at the same path
replaces the one beneath (an upper layer's unreadable dpkg database still hides the lower one).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

MAX_WARNINGS = 50  # per layer and per image; more are counted, not kept


@dataclass(frozen=True)
class Package:
    """One installed package: from a dpkg or apk database, a Python distribution or an npm package."""

    ecosystem: str  # "deb", "apk", "pypi", "npm"
    name: str
    version: str
    path: str  # the file it was read from
    location: str  # where it is installed: the database, the site-packages or node_modules folder
    licenses: tuple[str, ...] = ()  # as stated: SPDX ids or expressions, or license names
    arch: str | None = None
    origin: str | None = None  # a deb's Source, an apk's origin
    layer: str = ""  # the diff_id of the layer it was read from (set when merged)


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says of the model (read from the header only)."""

    version: int
    tensor_count: int
    architecture: str | None = None
    name: str | None = None
    size_label: str | None = None
    license: str | None = None
    file_type: str | None = None  # general.file_type by name ("Q5_K_M"), or the dominant tensor type
    context_length: int | None = None
    parameter_count: int | None = None  # the tensors' elements, summed; None when the header was not read that far
    metadata: tuple[tuple[str, str], ...] = ()  # the other general.* entries kept, as text


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file, or any blob in an Ollama model store: its path, size and sha256 (computed while it
    streamed), the digest its name claims, and the GGUF header's facts."""

    path: str
    size: int
    sha256: str
    named_sha256: str | None = None  # Ollama's blobs are named sha256-<hex> after their content
    gguf: GgufInfo | None = None
    layer: str = ""

    @property
    def name_matches(self) -> bool | None:
        """Whether the sha256 in its name is its content's; None when the name carries none."""
        return None if self.named_sha256 is None else self.named_sha256 == self.sha256


@dataclass(frozen=True)
class OllamaBlob:
    """One blob an Ollama manifest names."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class OllamaManifest:
    """An Ollama model manifest: ``models/manifests/HOST/NAMESPACE/MODEL/TAG`` and the blobs it names."""

    path: str
    name: str  # HOST/NAMESPACE/MODEL
    tag: str
    blobs: tuple[OllamaBlob, ...]
    layer: str = ""

    @property
    def store(self) -> str:
        """The model store folder it belongs to (the one holding ``manifests`` and ``blobs``)."""
        return self.path.rsplit("/manifests/", 1)[0]

    @property
    def short_name(self) -> str:
        """``MODEL:TAG`` for the public library, else ``HOST/NAMESPACE/MODEL:TAG``, as Ollama shows them."""
        host, _, rest = self.name.partition("/")
        namespace, _, model = rest.partition("/")
        if host == "registry.ollama.ai" and namespace == "library":
            return f"{model}:{self.tag}"
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class OsRelease:
    """/etc/os-release: the distribution the dpkg or apk database belongs to."""

    id: str
    version_id: str
    pretty_name: str


@dataclass(frozen=True)
class PackageDb:
    """A file listing packages: a dpkg or apk database, a METADATA or a package.json."""

    packages: tuple[Package, ...]


@dataclass(frozen=True)
class Copyright:
    """A Debian machine-readable copyright file's licenses (``usr/share/doc/PACKAGE/copyright``)."""

    package: str
    licenses: tuple[str, ...]


Record = PackageDb | ModelFile | OllamaManifest | OsRelease | Copyright | None  # None: a file that hides one beneath


@dataclass
class LayerInventory:
    """What one layer holds for the inventory."""

    records: dict[str, Record] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    dropped_warnings: int = 0

    def warn(self, message: str) -> None:
        """Keep a warning (the first :data:`MAX_WARNINGS`; the rest are counted)."""
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.dropped_warnings += 1

    def all_warnings(self) -> list[str]:
        """The warnings, and how many more there were."""
        more = [f"{self.dropped_warnings} more warning(s) like these"] if self.dropped_warnings else []
        return self.warnings + more


@dataclass(frozen=True)
class ImageInventory:
    """One image's inventory: its distribution, packages, model files and Ollama manifests, and what
    could not be read (``warnings``: an image with warnings may hold more than is listed)."""

    os: OsRelease | None
    packages: tuple[Package, ...]
    models: tuple[ModelFile, ...]
    ollama: tuple[OllamaManifest, ...]
    warnings: tuple[str, ...]


def _hidden(path: str, deleted: set[str]) -> bool:
    """Whether ``path`` or one of its parent folders is in ``deleted``."""
    while path:
        if path in deleted:
            return True
        path = posixpath.dirname(path)
    return False


def merge(layers: Sequence[tuple[str, LayerInventory | None]]) -> ImageInventory:
    """One image's inventory from its layers, bottom first, each with its diff_id (None: a layer that was
    not read, named in a warning)."""
    state: dict[str, tuple[str, Record]] = {}
    warnings: list[str] = []
    for diff_id, layer in layers:
        if layer is None:
            warnings.append(
                f"layer {diff_id[:19]} was not read (a --since base layer the source left out): its packages are not listed"
            )
            continue
        warnings += [f"layer {diff_id[:19]}: {w}" for w in layer.all_warnings()]
        if layer.whiteouts or layer.opaque:
            opaque = {d.rstrip("/") for d in layer.opaque}
            for path in list(state):
                if _hidden(path, layer.whiteouts) or _hidden(posixpath.dirname(path), opaque):
                    del state[path]
        for path, record in layer.records.items():
            state[path] = (diff_id, record)
    return _collect(state, warnings)


def _collect(state: dict[str, tuple[str, Record]], warnings: list[str]) -> ImageInventory:
    """The merged records as an inventory: packages with their layer and, for debs, the licenses of their
    copyright files; models; Ollama manifests; the distribution."""
    copyrights = {r.package: r.licenses for _, r in state.values() if isinstance(r, Copyright)}
    packages: list[Package] = []
    models: list[ModelFile] = []
    ollama: list[OllamaManifest] = []
    os_files: dict[str, OsRelease] = {}
    for path, (layer, record) in sorted(state.items()):
        if isinstance(record, PackageDb):
            for p in record.packages:
                if p.ecosystem == "deb" and not p.licenses and p.name in copyrights:
                    p = replace(p, licenses=copyrights[p.name])
                packages.append(replace(p, layer=layer))
        elif isinstance(record, ModelFile):
            models.append(replace(record, layer=layer))
        elif isinstance(record, OllamaManifest):
            ollama.append(replace(record, layer=layer))
        elif isinstance(record, OsRelease):
            os_files[path] = record
    os_release = os_files.get("etc/os-release") or os_files.get("usr/lib/os-release")
    have = {m.path: m for m in models}
    for manifest in ollama:
        for blob in manifest.blobs:
            where = f"{manifest.store}/blobs/sha256-{blob.digest.removeprefix('sha256:')}"
            found = have.get(where)
            if found is None:
                warnings.append(
                    f"Ollama model {manifest.short_name} names blob {blob.digest[:19]}, which the image does not hold"
                )
            elif f"sha256:{found.sha256}" != blob.digest:
                warnings.append(f"Ollama model {manifest.short_name}: blob {blob.digest[:19]} does not hash to its name")
    for m in models:
        if m.name_matches is False:
            warnings.append(f"{m.path} does not hash to the sha256 in its name (its content is sha256:{m.sha256[:12]}...)")
    more = len(warnings) - MAX_WARNINGS
    kept = warnings[:MAX_WARNINGS] + ([f"{more} more warning(s)"] if more > 0 else [])
    return inventory_of(os_release, packages, models, ollama, kept)


def inventory_of(
    os: OsRelease | None, packages: list[Package], models: list[ModelFile], ollama: list[OllamaManifest], warnings: list[str]
) -> ImageInventory:
    """An inventory with its packages, models and Ollama manifests in one order (read back, it is equal)."""
    packages.sort(key=lambda p: (p.ecosystem, p.name, p.arch or "", p.location, p.version, p.path))
    models.sort(key=lambda m: m.path)
    ollama.sort(key=lambda o: o.path)
    return ImageInventory(os, tuple(packages), tuple(models), tuple(ollama), tuple(warnings))
