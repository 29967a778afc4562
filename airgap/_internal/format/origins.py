"""Where each blob of an install comes from, decided in one place.

A blob is read from the parts of the bundle, from the parts of a delta's base bundle, rebuilt from a
recipe over an older layer, exported from the engine's own copy, or not read at all because the
target already holds it.  :func:`resolve` decides which; the install's precheck (:func:`parts_to_open`,
:attr:`Origin.size`) and its stream (:func:`iter_blob`) both follow that one answer, so what is checked
before anything is sent is exactly what is read afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass

from airgap._internal.delta.rebuild import decode
from airgap._internal.format.cache import VerifiedCache, file_key
from airgap._internal.format.parts import iter_part_data
from airgap._internal.format.reader import LoadedBundle, open_part
from airgap.errors import IntegrityError, UsageError
from airgap.model.manifest import Part
from airgap.progress import Transfer

BASE_HINT = "pass the base bundle with --base OLD_BUNDLE (or install the base bundle first)"


@dataclass(frozen=True)
class Held:
    """The target holds this blob already: nothing is read."""

    digest: str
    size: int = 0  # bytes read for it: none


@dataclass(frozen=True)
class Stored:
    """The blob's bytes are in the parts of ``bundle`` (the bundle itself or a delta's base bundle)."""

    bundle: LoadedBundle
    digest: str
    size: int


@dataclass(frozen=True)
class Exported:
    """Taken from the engine's export of ``image_id`` (an image holding it), checked against its digest on the way."""

    digest: str
    image_id: str
    size: int


@dataclass(frozen=True)
class Rebuilt:
    """Rebuilt from a recipe (stored in the delta) over an older layer (from ``source``)."""

    digest: str
    size: int
    recipe: Stored
    source: Stored | Rebuilt | Exported


Origin = Held | Stored | Exported | Rebuilt


def resolve(
    bundle: LoadedBundle,
    digest: str,
    held: frozenset[str] = frozenset(),
    exported: Mapping[str, str] | None = None,
    rebuilt_over_engine: Mapping[str, str] | None = None,
) -> Origin:
    """Where ``digest`` comes from for this install.

    ``held``: blobs the target holds (never read).  ``exported``: blobs taken from the engine's export of
    the image named (layer digest -> image ID).  ``rebuilt_over_engine``: rebuilt layers whose source layer
    is taken from the engine's export of the image named.  Otherwise: the bundle, then a delta's base
    bundle, each of which may rebuild the blob from a recipe."""
    if digest in held:
        return Held(digest)
    if exported and digest in exported:
        layer = next(d for image in bundle.manifest.images for d in image.layers if d.digest == digest)
        return Exported(digest, exported[digest], layer.size)
    manifest = bundle.manifest
    if manifest.has_blob(digest):
        return Stored(bundle, digest, manifest.blob(digest).size)
    rebuild = manifest.rebuild_of(digest)
    if rebuild is not None:
        recipe = Stored(bundle, rebuild.recipe, manifest.blob(rebuild.recipe).size)
        if rebuilt_over_engine and digest in rebuilt_over_engine:
            source: Stored | Rebuilt | Exported = Exported(rebuild.source, rebuilt_over_engine[digest], rebuild.source_size)
        elif bundle.base is not None:
            found = resolve(bundle.base, rebuild.source)
            if isinstance(found, (Held, Exported)):  # cannot happen without held/exported sets
                raise UsageError(f"layer {digest[:19]} is rebuilt from a layer the base bundle lacks", hint=BASE_HINT)
            source = found
        else:
            raise UsageError(f"layer {digest[:19]} is rebuilt from a layer of this delta's base bundle", hint=BASE_HINT)
        return Rebuilt(digest, rebuild.size, recipe, source)
    if bundle.base is not None and (bundle.base.manifest.has_blob(digest) or bundle.base.manifest.rebuild_of(digest)):
        return resolve(bundle.base, digest)
    raise UsageError(f"layer {digest[:19]} is not in this delta bundle, and the target does not hold it", hint=BASE_HINT)


def parts_to_open(origin: Origin) -> Iterator[tuple[LoadedBundle, Part]]:
    """Every part the origin reads, in the bundle that holds it: a precheck opens each before anything is sent."""
    if isinstance(origin, Stored):
        for part in origin.bundle.manifest.parts_of(origin.digest):
            yield origin.bundle, part
    elif isinstance(origin, Rebuilt):
        yield from parts_to_open(origin.recipe)
        yield from parts_to_open(origin.source)


def iter_blob(
    bundle: LoadedBundle,
    digest: str,
    block: int = 1 << 20,
    cache: VerifiedCache | None = None,
    transfer: Transfer | None = None,
) -> Generator[bytes, None, None]:
    """Yield a blob's bytes from the bundle (or its base), checking every part and finally the blob digest.

    Parts found in ``cache`` are not hashed again (the blob digest still covers them); parts hashed
    here are added to it.  ``transfer`` hears how each part was checked."""
    yield from iter_origin(resolve(bundle, digest), block, cache, transfer)


def iter_origin(
    origin: Origin,
    block: int = 1 << 20,
    cache: VerifiedCache | None = None,
    transfer: Transfer | None = None,
) -> Generator[bytes, None, None]:
    """Yield the bytes of a blob resolved to parts or to a recipe over parts (not Held or Exported ones)."""
    if isinstance(origin, Rebuilt):
        if isinstance(origin.source, Exported):
            raise UsageError(f"layer {origin.digest[:19]} is rebuilt over the engine's copy: read in the engine's export")
        with (
            closing(iter_origin(origin.recipe, block, cache, transfer)) as recipe,
            closing(iter_origin(origin.source, block, cache, transfer)) as source,
        ):
            yield from decode(recipe, source, origin.digest, origin.size, f"layer {origin.digest[:19]}")
        return
    if not isinstance(origin, Stored):
        raise UsageError(f"layer {origin.digest[:19]} is not read from the bundle", hint=BASE_HINT)
    bundle, digest = origin.bundle, origin.digest
    sha = hashlib.sha256()
    total = 0
    for part in bundle.manifest.parts_of(digest):
        with open_part(bundle, part) as fh:
            key = file_key(fh.fileno(), bundle.part_file(part), part) if cache is not None else ""
            known = cache is not None and key in cache
            for data in iter_part_data(fh, part, f"part {part.path}", block, check_hash=not known):
                sha.update(data)
                total += len(data)
                yield data
        if transfer is not None:
            transfer.part_checked(cached=known)
        if cache is not None and not known:
            cache.add(key)
    if "sha256:" + sha.hexdigest() != digest or total != origin.size:
        raise IntegrityError(
            f"blob {digest} rebuilt from its parts does not match its digest",
            hint="the manifest was built from different data; do not use this bundle",
        )
