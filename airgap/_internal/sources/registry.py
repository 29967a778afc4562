"""Image source: an OCI registry (``oci://HOST[:PORT]/REPO:TAG``), no Docker engine needed.

The manifest (or index, then one manifest per chosen platform) is resolved first, so pack knows
how many bytes will come; then each layer streams from the registry straight into the bundle's
parts, its digest checked as it goes.  Blobs keep their registry form (gzip or zstd layers stay
compressed), so the image ID, the config digest, does not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
import urllib3

from airgap._internal.clients.distribution import Registry, RegistryRef, data_hint, parse_ref
from airgap._internal.sources.archive import config_facts, normalize_layer_type
from airgap._internal.sources.base import BlobStore, ImageSource, OpenContext, Source, SourceKind, host_default, parse_platforms
from airgap._internal.util.pipeline import PrefetchReader
from airgap._internal.util.tarstream import EntryReader
from airgap.errors import FormatError, IntegrityError, RegistryError, UsageError
from airgap.model.manifest import (
    EXTRA_BLOB_LIMIT,
    MAX_EXTRA_ENTRIES,
    MAX_EXTRAS,
    Descriptor,
    Image,
    Platform,
    SourceIndex,
    valid_media_type,
)
from airgap.model.mediatypes import (
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG,
    MT_OCI_LAYER,
    MT_OCI_MANIFEST,
)

CONFIG_LIMIT = 16 << 20


# -- the source: an image in a registry named on the command line ----------------------------------------
@dataclass(frozen=True)
class RegistryImage(Source):
    """An image in a registry: ``oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`` (``docker://`` means the same)."""

    kind: ClassVar[str] = "registry"
    prefixes: ClassVar[tuple[str, ...]] = ("oci://", "docker://")
    ref: str  # always written oci://...

    @classmethod
    def parse(cls, prefix: str, rest: str) -> RegistryImage:
        """The reference, checked now (a bad one fails before any work)."""
        ref = "oci://" + rest
        parse_ref(ref, "oci", need_reference=False)
        return cls(ref)

    def resume_inputs(self) -> list[str | None]:
        """``["registry", "oci://...", None]``."""
        return [self.kind, self.ref, None]

    def __str__(self) -> str:
        """``oci://HOST/REPO[:TAG]``."""
        return self.ref


class RegistryImages:
    """The registry images of one pack; both their opener and their image source.

    They are resolved (manifest, index, the chosen platforms' manifests) when estimated, asking each host
    through one client; a layer two of them share is fetched once."""

    def __init__(self, ctx: OpenContext) -> None:
        """Nothing is asked of a registry before :meth:`estimate`."""
        self._stack: ExitStack = ctx.stack
        self._note: Callable[[str], None] = ctx.reporter.note
        self._platform = ctx.platform
        self._plain_http = ctx.plain_http
        self._named: list[RegistryImage] = []
        self._resolved: tuple[list[tuple[Registry, ResolvedImage]], list[tuple[Registry, ResolvedIndex]]] | None = None
        self._kept: list[SourceIndex] = []

    def add(self, source: RegistryImage) -> None:
        """Nothing to check before the registry is asked (the reference was checked when parsed)."""
        self._named.append(source)

    def sources(self) -> list[ImageSource]:
        """These images, if one was named."""
        return [self] if self._named else []

    @property
    def name(self) -> str:
        """The references as named."""
        return ", ".join(map(str, self._named))

    def estimate(self) -> int:
        """Resolves every image: the sizes of their configs, layers and manifests, and of the indexes kept."""
        images, indexes = self._resolve()
        return sum(image.size for _, image in images) + sum(index.size for _, index in indexes)

    def check_room(self) -> None:
        """A registry needs no room here."""

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Fetch every image's config, layers and manifest into ``store``, then the indexes kept and what they list
        besides the images; layers in ``left_out`` are not fetched."""
        fetched: dict[str, int] = {}
        images = []
        resolved, indexes = self._resolve()
        for registry, image in resolved:
            self._note(f"pulling {image.ref} ({image.manifest_digest[:19]}) from the registry")
            images.append(fetch(registry, image, store, fetched, left_out))
        self._kept = [fetch_index(registry, index, store) for registry, index in indexes]
        return images

    def indexes(self) -> list[SourceIndex]:
        """The indexes :meth:`stream` kept."""
        return list(self._kept)

    def _resolve(self) -> tuple[list[tuple[Registry, ResolvedImage]], list[tuple[Registry, ResolvedIndex]]]:
        """The image manifests to fetch and the indexes to keep, each with its host's client: resolved on first
        use, in the order named."""
        if self._resolved is not None:
            return self._resolved
        wanted = parse_platforms(self._platform)
        explicit = self._platform is not None
        if wanted is None and not explicit:
            wanted = [host_default()]
        resolved = []
        indexes = []
        registries: dict[str, Registry] = {}
        for source in self._named:
            ref = parse_ref(source.ref, "oci", need_reference=False)
            if ref.reference is None:
                ref = RegistryRef(ref.host, ref.repository, "latest")
            if ref.host not in registries:
                registries[ref.host] = self._stack.enter_context(Registry(ref.host, self._plain_http))
            registry = registries[ref.host]
            images, index = resolve(registry, ref, wanted, explicit, self._note)
            resolved += [(registry, image) for image in images]
            if index is not None:
                indexes.append((registry, index))
        self._resolved = (resolved, indexes)
        return self._resolved


KIND = SourceKind(RegistryImage, RegistryImages)  # they open together: they share clients and layers


# -- resolving and fetching -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedImage:
    """One image manifest in a registry, read and checked: its config's and layers' descriptors, and its bytes
    as served (kept in the bundle, so a registry target serves them under the same digest)."""

    ref: RegistryRef
    manifest_digest: str
    config: dict[str, Any]  # the descriptor
    layers: tuple[dict[str, Any], ...]
    docker_schema: bool
    platform: Platform | None  # from the index, when there was one
    manifest: bytes
    manifest_type: str

    @property
    def size(self) -> int:
        """The bytes its config and layers take, as the manifest says, and the manifest's own."""
        return int(self.config["size"]) + sum(int(layer["size"]) for layer in self.layers) + len(self.manifest)


@dataclass(frozen=True)
class ResolvedIndex:
    """An index every image entry of which is packed: its bytes as served, and what else it lists (attestations,
    signatures), each as (manifest digest, manifest bytes, media type, its blobs' descriptors)."""

    ref: RegistryRef
    data: bytes
    media_type: str
    digest: str
    extras: tuple[tuple[str, bytes, str, tuple[dict[str, Any], ...]], ...]

    @property
    def size(self) -> int:
        """The bytes the index and its extras take."""
        return len(self.data) + sum(len(m) + sum(int(b["size"]) for b in blobs) for _, m, _, blobs in self.extras)


def _descriptor(d: Any, where: str) -> dict[str, Any]:
    """A manifest's descriptor, checked: a sha256 digest and a size that is a whole number."""
    if (
        not isinstance(d, dict)
        or not isinstance(d.get("digest"), str)
        or not d["digest"].startswith("sha256:")
        or len(d["digest"]) != 71
        or isinstance(d.get("size"), bool)
        or not isinstance(d.get("size"), int)
        or d["size"] < 0
    ):
        raise FormatError(f"{where}: malformed descriptor")
    return d


def resolve(
    registry: Registry, ref: RegistryRef, wanted: list[Platform] | None, explicit: bool, note: Callable[[str], None]
) -> tuple[list[ResolvedImage], ResolvedIndex | None]:
    """The image manifest(s) behind ``ref``: for an index, those of the wanted platforms, and the index itself when
    the pack keeps every image it lists (see :func:`_keep_index`)."""
    found = registry.get_manifest(ref.repository, ref.reference or "latest")
    if found is None:
        raise UsageError(f"{ref} is not in the registry", hint="check the repository and tag (skopeo list-tags docker://...)")
    data, media_type, digest = found
    body = _json(data, str(ref))
    if media_type not in INDEX_TYPES and "manifests" not in body:
        return [_image_manifest(body, media_type, digest, ref, None, data)], None
    entries = []
    others = []  # what the index lists besides images for a platform: attestations, signatures
    for i, desc in enumerate(body.get("manifests") or []):
        desc = _descriptor(desc, f"{ref} index entry {i}")
        p = desc.get("platform") or {}
        if not isinstance(p, dict) or p.get("os") in (None, "unknown"):
            others.append(desc)
            continue
        try:
            entries.append((desc, Platform(str(p.get("os")), str(p.get("architecture")), p.get("variant") or None)))
        except FormatError as e:
            raise FormatError(f"{ref} index entry {i}: {e.message}", hint="the registry's index is malformed") from e
    available = ", ".join(str(p) for _, p in entries)
    targets = wanted if wanted is not None else [p for _, p in entries]
    chosen = []
    for want in targets:
        match = next(((d, p) for d, p in entries if p.matches(want) and (d, p) not in chosen), None)
        if match is None:
            if wanted is not None and (explicit or len(targets) > 1):
                raise UsageError(f"{ref} has no image for {want} (it has {available})", hint="choose with --platform")
            continue
        chosen.append(match)
    if not chosen:
        raise UsageError(
            f"{ref} has no image for {', '.join(map(str, targets))} (it has {available})", hint="choose with --platform"
        )
    if wanted is not None and not explicit and len(entries) > len(chosen):
        note(f"note: {ref} also has {available}; packing {', '.join(str(p) for _, p in chosen)} (--platform all takes every one)")
    images = []
    for desc, p in chosen:
        sub = registry.get_manifest(ref.repository, desc["digest"])
        if sub is None:
            raise FormatError(f"{ref}: the index names manifest {desc['digest'][:19]}, which the registry does not hold")
        sub_data, sub_type, sub_digest = sub
        images.append(_image_manifest(_json(sub_data, str(ref)), sub_type, sub_digest, ref, p, sub_data))
    return images, _keep_index(registry, ref, (data, media_type, digest), len(chosen) == len(entries), others, note)


EXTRA_LIMIT = EXTRA_BLOB_LIMIT  # the largest blob of an attestation or signature an index's digest is kept for


def _keep_index(
    registry: Registry,
    ref: RegistryRef,
    served: tuple[bytes, str, str],
    every_image: bool,
    others: list[dict[str, Any]],
    note: Callable[[str], None],
) -> ResolvedIndex | None:
    """The index, kept when the pack takes every image it lists and what else it lists is a manifest with small
    blobs (an attestation, a signature): then a registry target serves it under the digest it has here.  Else a
    note says the index's digest will not be served (the images' own manifests keep theirs)."""
    data, media_type, digest = served
    why = None if every_image else "it lists platforms this pack leaves out (--platform all takes every one)"
    if why is None and len(others) > MAX_EXTRAS:
        why = f"it lists {len(others)} manifests besides images (at most {MAX_EXTRAS} are kept)"
    unplaced = next((d for d in others if not isinstance(d.get("platform"), dict) or d["platform"].get("os") != "unknown"), None)
    if why is None and unplaced is not None:  # an entry without a platform matches every platform for containerd
        why = f"it lists {unplaced['digest'][:19]} with no platform: an image for every platform that this pack does not take"
    extras = []
    for desc in others if why is None else ():
        found = registry.get_manifest(ref.repository, desc["digest"])
        body = _json(found[0], str(ref)) if found is not None else {}
        if found is None or found[1] not in IMAGE_MANIFEST_TYPES or not isinstance(body.get("layers"), list):
            why = f"it lists {desc['digest'][:19]}, which is not an image manifest this registry serves"
            break
        blobs = tuple(_descriptor(b, f"{ref} manifest {desc['digest'][:19]}") for b in (body.get("config"), *body["layers"]))
        if any(int(b["size"]) > EXTRA_LIMIT or not valid_media_type(str(b.get("mediaType", ""))) for b in blobs):
            why = f"what it lists besides images ({desc['digest'][:19]}) has a blob over {EXTRA_LIMIT >> 20} MiB or without a media type"
            break
        extras.append((found[2], found[0], found[1], blobs))
    if why is None and sum(1 + len(blobs) for *_, blobs in extras) > MAX_EXTRA_ENTRIES:
        why = f"what it lists besides images names more than {MAX_EXTRA_ENTRIES} blobs"
    if why is None and media_type in INDEX_TYPES:
        return ResolvedIndex(ref, data, media_type, digest, tuple(extras))
    note(
        f"note: the index of {ref} ({digest[:19]}) is not kept: {why or 'its media type is not an index'}; a registry "
        "target serves each image's own manifest digest and a new index"
    )
    return None


def _json(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object from the registry; anything else is a FormatError naming ``where``."""
    try:
        body = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{where}: the manifest is not JSON") from e
    if not isinstance(body, dict):
        raise FormatError(f"{where}: the manifest is not a JSON object")
    return body


def _image_manifest(
    body: dict[str, Any], media_type: str, digest: str, ref: RegistryRef, p: Platform | None, data: bytes
) -> ResolvedImage:
    """An image manifest's config and layers (schema 2 or OCI; schema 1 is refused), with its bytes as served."""
    where = f"{ref} manifest {digest[:19]}"
    if not isinstance(body.get("layers"), list):
        raise FormatError(f"{where} is not an image manifest (schema 1 manifests are not supported)")
    config = _descriptor(body.get("config"), where)
    layers = tuple(_descriptor(layer, where) for layer in body["layers"])
    docker = media_type == MT_DOCKER_MANIFEST or config.get("mediaType") == MT_DOCKER_CONFIG
    if media_type not in IMAGE_MANIFEST_TYPES:  # served without a known type: the one its body or config says
        media_type = MT_DOCKER_MANIFEST if docker else MT_OCI_MANIFEST
    return ResolvedImage(ref, digest, config, layers, docker, p, data, media_type)


class _ResponseStream:
    """A blob response body as a readable stream; transport failures become RegistryError."""

    def __init__(self, res: requests.Response, label: str) -> None:
        """Read ``res``'s body undecoded; ``label`` names the blob in errors."""
        self._raw = res.raw
        self._label = label

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all with -1); b"" at the end."""
        try:
            return bytes(self._raw.read(n))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise RegistryError(f"download of {self._label} was cut off: {str(e)[:160]}", hint="run the same pack again") from e


def fetch(
    registry: Registry, image: ResolvedImage, store: BlobStore, stored: dict[str, int], skip: frozenset[str] = frozenset()
) -> Image:
    """Stream the config and layers of ``image`` into ``store``; check every digest.

    ``stored`` (digest -> size) lists blobs already in the store, shared by the images of one pack:
    a layer two platforms share is fetched once.  Layers in ``skip`` (a delta's base has them) are not
    downloaded at all."""
    ref = image.ref
    config_digest = image.config["digest"]
    config_bytes = registry.read_blob(ref.repository, config_digest, CONFIG_LIMIT)
    stored_config = store.store_bytes(config_bytes)
    diff_ids, platform = config_facts(_json(config_bytes, f"{ref} config"), f"{ref} config")
    if len(diff_ids) != len(image.layers):
        raise FormatError(f"{ref}: the config lists {len(diff_ids)} layers, the manifest {len(image.layers)}")
    layers = []
    for i, desc in enumerate(image.layers):
        digest, size = desc["digest"], int(desc["size"])
        label = f"layer {digest[:19]} of {ref}"
        if stored.get(digest) != size and digest not in skip:
            res, _ = registry.open_blob(ref.repository, digest)
            with res, PrefetchReader(_ResponseStream(res, label)) as ahead:
                # the registry names every digest before it is read: the store need not guess at base layers
                blob = store.store_stream(size, EntryReader(ahead, size, label), f"{ref}\0{digest}", guess=False)
                if ahead.read(1):
                    raise IntegrityError(
                        f"{label} is longer than the manifest says ({size} bytes)", hint=data_hint(ref.host), digest=digest
                    )
            if blob.digest != digest:
                raise IntegrityError(f"{label} does not match its digest", hint=data_hint(ref.host), digest=digest)
            stored[digest] = size
        media_type = normalize_layer_type(str(desc.get("mediaType", "")))
        if media_type in (MT_DOCKER_LAYER, MT_OCI_LAYER) and digest != diff_ids[i]:
            raise FormatError(f"{label} is uncompressed but does not match diff_id {diff_ids[i][:19]}")
        layers.append(Descriptor(digest, size, media_type))
    kept = _store_small(store, image.manifest, image.manifest_digest, image.manifest_type, f"manifest of {ref}", ref.host)
    try:
        return Image(
            ref_names=_names(ref),
            config=Descriptor(
                stored_config.digest, stored_config.size, MT_DOCKER_CONFIG if image.docker_schema else MT_OCI_CONFIG
            ),
            layers=tuple(layers),
            diff_ids=diff_ids,
            platform=platform,
            manifest=kept,
        )
    except FormatError as e:
        raise FormatError(f"{ref}: {e.message}", hint=e.hint) from e


def fetch_index(registry: Registry, index: ResolvedIndex, store: BlobStore) -> SourceIndex:
    """Store a kept index and what it lists besides images: each extra manifest's blobs, then the manifest."""
    ref = index.ref
    extras = []
    for manifest_digest, data, media_type, blobs in index.extras:
        for b in blobs:
            blob = registry.read_blob(ref.repository, b["digest"], EXTRA_LIMIT)
            extras.append(
                _store_small(store, blob, b["digest"], str(b["mediaType"]), f"blob {b['digest'][:19]} of {ref}", ref.host)
            )
        extras.append(
            _store_small(store, data, manifest_digest, media_type, f"manifest {manifest_digest[:19]} of {ref}", ref.host)
        )
    kept = _store_small(store, index.data, index.digest, index.media_type, f"index of {ref}", ref.host)
    try:
        return SourceIndex(_names(ref), kept, tuple(dict.fromkeys(extras)))
    except FormatError as e:
        raise FormatError(f"{ref}: {e.message}", hint=e.hint) from e


def _names(ref: RegistryRef) -> tuple[str, ...]:
    """The name an image or index packed from ``ref`` keeps: HOST/REPO:TAG, none when it was named by digest."""
    tag = ref.reference if ref.reference and not ref.is_digest else None
    return (f"{ref.host}/{ref.repository}:{tag}",) if tag else ()


def _store_small(store: BlobStore, data: bytes, digest: str, media_type: str, label: str, host: str) -> Descriptor:
    """Store bytes the registry served (a manifest, an index, an attestation's blob) and their descriptor; the digest
    they were asked by must be theirs."""
    stored = store.store_bytes(data)
    if stored.digest != digest:
        raise IntegrityError(f"{label} does not match its digest {digest[:19]}", hint=data_hint(host), digest=digest)
    try:
        return Descriptor(digest, len(data), media_type)
    except FormatError as e:
        raise FormatError(f"{label}: {e.message}", hint="the registry serves a malformed manifest") from e
