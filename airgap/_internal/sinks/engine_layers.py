"""Layers for a Docker install that the engine itself supplies.

- Layers the engine holds with their whole chain: ``docker load`` skips them, so they are left out.
- Layers a delta leaves out that the engine holds under another chain (a layer above a changed one), and
  the old layers that recipes are rebuilt over: taken from the engine's own export of an image holding
  them, in one pass per image, matched by sha256 (whole layers) or by name or size (recipe sources, whose
  rebuilt layer is checked against its digest anyway).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

from airgap._internal.clients.docker import EngineClient, chain_id
from airgap._internal.delta.rebuild import decode
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.origins import iter_blob
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.util import tarstream
from airgap._internal.util.pipeline import PrefetchReader
from airgap.errors import IntegrityError
from airgap.model.manifest import Image
from airgap.progress import Transfer

_PODMAN_LAYER = re.compile(r"^[0-9a-f]{64}\.tar$")  # Podman's export: each layer at the top, named by its diff ID


def held_layers(engine: EngineClient, images: list[Image]) -> frozenset[str]:
    """Layers the engine already has, chain and all, for every image that uses them: docker load skips them."""
    chains = engine.layer_chains()
    held: set[str] = set()
    needed: set[str] = set()
    for image in images:
        chain = None
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            chain = chain_id(chain, diff_id)
            (held if chain in chains else needed).add(layer.digest)
    return frozenset(held - needed)


@dataclass(frozen=True)
class ExportPlan:
    """Layers a delta leaves out that the engine holds under other chains: they are exported from these images."""

    images: tuple[str, ...] = ()
    layers: dict[str, str] = field(default_factory=dict)  # layer digest -> its diff ID
    size: int = 0
    rebuild_from: dict[str, str] = field(default_factory=dict)  # rebuilt layer -> engine image holding its source


def plan_exports(engine: EngineClient, bundle: LoadedBundle, images: list[Image], held: frozenset[str]) -> ExportPlan:
    """What a delta leaves out and the engine holds under other chains: whole layers, and sources of recipes."""
    wanted: dict[str, str] = {}
    sources: dict[str, str] = {}  # rebuilt layer -> source diff ID
    size = 0
    base = bundle.base
    for image in images:
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            if layer.digest in held or bundle.manifest.has_blob(layer.digest):
                continue
            if base is not None and base.manifest.has_blob(layer.digest):
                continue
            r = bundle.manifest.rebuild_of(layer.digest)
            if r is not None:
                if base is None or not base.manifest.has_blob(r.source):
                    sources[layer.digest] = r.source
            elif layer.digest not in wanted:
                wanted[layer.digest] = diff_id
                size += layer.size
    if not wanted and not sources:
        return ExportPlan()
    holders, missing = engine.images_holding(set(wanted.values()))
    if missing:
        wanted, holders = {}, []  # _precheck names what is missing
    rebuild_from = {}
    for layer_digest, source in sources.items():
        found, _ = engine.images_holding({source})
        if found:
            rebuild_from[layer_digest] = found[0]
    return ExportPlan(tuple(holders), wanted, size, rebuild_from)


def _entry_blocks(reader: tarstream.EntryReader) -> Iterator[bytes]:
    """An export member's data, in blocks."""
    while reader.remaining:
        yield reader.read(min(1 << 20, reader.remaining))


def exported_layers(
    engine: EngineClient,
    bundle: LoadedBundle,
    plan: ExportPlan,
    names: dict[str, str],
    rebuilt: set[str],
    transfer: Transfer,
    cache: VerifiedCache | None,
) -> Iterator[bytes]:
    """One pass over the engine's export of each image the plan needs:

    - a layer file that is the source of a recipe becomes the rebuilt layer, under its own name (``rebuilt``);
    - other layer files go into the upload under names of their own; ``names`` records which member holds
      which wanted layer (by its sha256, its diff ID).  docker load ignores the members no image names."""
    by_diff = {diff: digest for digest, diff in plan.layers.items()}
    recipes = {layer: r for layer in plan.rebuild_from if (r := bundle.manifest.rebuild_of(layer)) is not None}
    n = 0
    for image_id in dict.fromkeys([*plan.images, *plan.rebuild_from.values()]):
        with engine.export([image_id]) as stream, PrefetchReader(stream) as ahead:
            for entry, reader in tarstream.iter_entries(ahead, "Docker engine export"):
                named = entry.name.removeprefix("blobs/sha256/")
                legacy = entry.name.endswith("/layer.tar") or bool(_PODMAN_LAYER.fullmatch(entry.name))
                is_layer = entry.kind == "file" and (legacy or named != entry.name)
                source_of = next(
                    (
                        layer
                        for layer, r in recipes.items()
                        if layer not in rebuilt
                        and plan.rebuild_from[layer] == image_id
                        and (f"sha256:{named}" == r.source or (legacy and entry.size == r.source_size))
                    ),
                    None,
                )
                if is_layer and source_of is not None:
                    r = recipes[source_of]
                    yield tarstream.header(f"{source_of.removeprefix('sha256:')}/layer.tar", r.size)
                    with closing(iter_blob(bundle, r.recipe, cache=cache, transfer=transfer)) as recipe:
                        for data in decode(recipe, _entry_blocks(reader), source_of, r.size, f"layer {source_of[:19]}"):
                            transfer.moved(len(data))
                            yield data
                    yield tarstream.padding(r.size)
                    rebuilt.add(source_of)
                    reader.drain()
                    continue
                unwanted = named != entry.name and f"sha256:{named}" not in by_diff  # OCI layout: the name is the digest
                if not is_layer or unwanted or all(d in names for d in plan.layers):
                    reader.drain()
                    continue
                n += 1
                member = f"from-engine-{n}/layer.tar"
                yield tarstream.header(member, entry.size)
                sha = hashlib.sha256()
                for data in _entry_blocks(reader):
                    sha.update(data)
                    transfer.moved(len(data))
                    yield data
                yield tarstream.padding(entry.size)
                digest = by_diff.get("sha256:" + sha.hexdigest())
                if digest is not None:
                    names[digest] = member
    lacking = [d for d in plan.layers if d not in names]
    if lacking:
        raise IntegrityError(
            f"the engine's export did not hold layer {plan.layers[lacking[0]][:19]} of the delta's base",
            hint="pass the base bundle with --base OLD_BUNDLE",
        )
