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
from airgap.model.manifest import Descriptor, Image, Platform
from airgap.model.mediatypes import (
    INDEX_TYPES,
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG,
    MT_OCI_LAYER,
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
        self._resolved: list[tuple[Registry, ResolvedImage]] | None = None

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
        """Resolves every image: the sizes of their configs and layers, as their manifests give them."""
        return sum(image.size for _, image in self._resolve())

    def check_room(self) -> None:
        """A registry needs no room here."""

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Fetch every image's config and layers into ``store``; layers in ``left_out`` are not fetched."""
        fetched: dict[str, int] = {}
        images = []
        for registry, resolved in self._resolve():
            self._note(f"pulling {resolved.ref} ({resolved.manifest_digest[:19]}) from the registry")
            images.append(fetch(registry, resolved, store, fetched, left_out))
        return images

    def _resolve(self) -> list[tuple[Registry, ResolvedImage]]:
        """The image manifests to fetch, each with its host's client: resolved on first use, in the order named."""
        if self._resolved is not None:
            return self._resolved
        wanted = parse_platforms(self._platform)
        explicit = self._platform is not None
        if wanted is None and not explicit:
            wanted = [host_default()]
        resolved = []
        registries: dict[str, Registry] = {}
        for source in self._named:
            ref = parse_ref(source.ref, "oci", need_reference=False)
            if ref.reference is None:
                ref = RegistryRef(ref.host, ref.repository, "latest")
            if ref.host not in registries:
                registries[ref.host] = self._stack.enter_context(Registry(ref.host, self._plain_http))
            registry = registries[ref.host]
            resolved += [(registry, image) for image in resolve(registry, ref, wanted, explicit, self._note)]
        self._resolved = resolved
        return resolved


KIND = SourceKind(RegistryImage, RegistryImages)  # they open together: they share clients and layers


# -- resolving and fetching -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedImage:
    """One image manifest in a registry, read and checked: its config's and layers' descriptors."""

    ref: RegistryRef
    manifest_digest: str
    config: dict[str, Any]  # the descriptor
    layers: tuple[dict[str, Any], ...]
    docker_schema: bool
    platform: Platform | None  # from the index, when there was one

    @property
    def size(self) -> int:
        """The bytes its config and layers take, as the manifest says."""
        return int(self.config["size"]) + sum(int(layer["size"]) for layer in self.layers)


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
) -> list[ResolvedImage]:
    """The image manifest(s) behind ``ref``: for an index, those of the wanted platforms."""
    found = registry.get_manifest(ref.repository, ref.reference or "latest")
    if found is None:
        raise UsageError(f"{ref} is not in the registry", hint="check the repository and tag (skopeo list-tags docker://...)")
    data, media_type, digest = found
    body = _json(data, str(ref))
    if media_type not in INDEX_TYPES and "manifests" not in body:
        return [_image_manifest(body, media_type, digest, ref, None)]
    entries = []
    for i, desc in enumerate(body.get("manifests") or []):
        desc = _descriptor(desc, f"{ref} index entry {i}")
        p = desc.get("platform") or {}
        if not isinstance(p, dict) or p.get("os") in (None, "unknown"):
            continue  # attestations and other non-images
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
        images.append(_image_manifest(_json(sub_data, str(ref)), sub_type, sub_digest, ref, p))
    return images


def _json(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object from the registry; anything else is a FormatError naming ``where``."""
    try:
        body = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{where}: the manifest is not JSON") from e
    if not isinstance(body, dict):
        raise FormatError(f"{where}: the manifest is not a JSON object")
    return body


def _image_manifest(body: dict[str, Any], media_type: str, digest: str, ref: RegistryRef, p: Platform | None) -> ResolvedImage:
    """An image manifest's config and layers (schema 2 or OCI; schema 1 is refused)."""
    where = f"{ref} manifest {digest[:19]}"
    if not isinstance(body.get("layers"), list):
        raise FormatError(f"{where} is not an image manifest (schema 1 manifests are not supported)")
    config = _descriptor(body.get("config"), where)
    layers = tuple(_descriptor(layer, where) for layer in body["layers"])
    docker = media_type == MT_DOCKER_MANIFEST or config.get("mediaType") == MT_DOCKER_CONFIG
    return ResolvedImage(ref, digest, config, layers, docker, p)


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
    tag = ref.reference if ref.reference and not ref.is_digest else None
    try:
        return Image(
            ref_names=(f"{ref.host}/{ref.repository}:{tag}",) if tag else (),
            config=Descriptor(
                stored_config.digest, stored_config.size, MT_DOCKER_CONFIG if image.docker_schema else MT_OCI_CONFIG
            ),
            layers=tuple(layers),
            diff_ids=diff_ids,
            platform=platform,
        )
    except FormatError as e:
        raise FormatError(f"{ref}: {e.message}", hint=e.hint) from e
