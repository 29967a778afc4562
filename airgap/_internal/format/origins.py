"""Where each blob of an install comes from, decided in one place.

A blob is read from the parts of the bundle, from the parts of a delta's base bundle, rebuilt from a
recipe over an older layer, exported from the engine's own copy, or not read at all because the
target already holds it.  :func:`resolve` decides which; the install's precheck (:func:`parts_to_open`,
:attr:`Origin.size`) and its stream (:func:`iter_blob`) both follow that one answer, so what is checked
before anything is sent is exactly what is read afterwards.

A compressed layer a target cannot read is sent decompressed (:func:`decompress_layers`): read once before
anything is sent, to learn its size and check it against its diff_id, then again as it is sent, every
part hashed and the blob digest checked each time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Collection, Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass

import zstandard

from airgap._internal.delta.rebuild import decode
from airgap._internal.format.cache import VerifiedCache, file_key
from airgap._internal.format.parts import iter_part_data
from airgap._internal.format.reader import LoadedBundle, open_part
from airgap._internal.util.pipeline import threaded
from airgap.errors import FormatError, IntegrityError, UsageError
from airgap.model.manifest import Image, Part
from airgap.model.oci import compression_of
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


@dataclass(frozen=True)
class Decompressed:
    """A compressed layer sent decompressed, for a target that cannot read its compression: ``inner`` is read
    (every part hashed, the blob digest checked), decompressed on the way, and the result checked against the
    layer's diff_id and against ``size``, measured by a first read before anything was sent."""

    digest: str  # the stored (compressed) blob
    diff_id: str
    compression: str  # "gzip" or "zstd"
    inner: Stored | Rebuilt
    size: int  # bytes sent: the layer decompressed


Origin = Held | Stored | Exported | Rebuilt | Decompressed

MAX_LAYER_WINDOW = (
    1 << 31
)  # the largest zstd window a layer may ask for (zstd --long=31); libzstd allocates only what a frame needs


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
            if isinstance(found, (Held, Exported, Decompressed)):  # cannot happen without held/exported sets
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
    elif isinstance(origin, Decompressed):
        yield from parts_to_open(origin.inner)


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
    """Yield the bytes of a blob resolved to parts or to a recipe over parts (not Held or Exported ones); a
    Decompressed layer's bytes are its decompressed tar."""
    if isinstance(origin, Decompressed):
        yield from _iter_decompressed(origin, block, cache, transfer)
        return
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


# -- layers sent decompressed ---------------------------------------------------------------------------------
def decompress_layers(
    images: list[Image],
    origins: Mapping[str, Origin],
    compressions: Collection[str],
    cache: VerifiedCache | None = None,
) -> dict[str, Origin]:
    """``origins`` with every layer compressed in one of ``compressions`` (which the target cannot read) sent
    decompressed.  Each such layer is read through once now, before anything is sent: every part hashed, its
    blob digest checked, its decompressed bytes checked against the diff_id the image config gives, and
    counted (a tar member's size comes before its data).  Layers the target holds, or that come from the
    engine's own (uncompressed) copy, are left as they are."""
    result = dict(origins)
    for digest, (diff_id, compression) in to_decompress(images, origins, compressions).items():
        origin = result[digest]
        if isinstance(origin, Rebuilt) and isinstance(origin.source, Exported):
            raise UsageError(
                f"layer {digest[:19]} is {compression}-compressed, which the target cannot read, and is rebuilt "
                "over the engine's copy of an older layer: it cannot be measured before the upload",
                hint=BASE_HINT,
                digest=digest,
            )
        if isinstance(origin, (Stored, Rebuilt)):
            result[digest] = measure_decompressed(origin, diff_id, compression, cache)
    return result


def to_decompress(
    images: list[Image], origins: Mapping[str, Origin], compressions: Collection[str]
) -> dict[str, tuple[str, str]]:
    """The layers :func:`decompress_layers` decompresses: digest -> (diff_id, compression), each once, for
    layers compressed in one of ``compressions`` that are read from the bundle (not held, not exported)."""
    found: dict[str, tuple[str, str]] = {}
    for image in images:
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            compression = compression_of(layer.media_type)
            if compression is None or compression not in compressions or isinstance(origins[layer.digest], (Held, Exported)):
                continue
            known = found.setdefault(layer.digest, (diff_id, compression))[0]
            if known != diff_id:
                raise FormatError(
                    f"layer {layer.digest[:19]} has diff_id {known[:19]} in one image config and {diff_id[:19]} in another",
                    hint="one compressed layer has one uncompressed content: the bundle's images contradict each other",
                    digest=layer.digest,
                )
    return found


def measure_decompressed(
    origin: Stored | Rebuilt, diff_id: str, compression: str, cache: VerifiedCache | None = None
) -> Decompressed:
    """Read a compressed layer through once (every part hashed, the blob digest checked), decompress it, check
    the result against ``diff_id`` and return it as a :class:`Decompressed` origin of that size."""
    sha = hashlib.sha256()
    size = 0
    with closing(_inflate(origin, compression, 1 << 20, cache, None)) as blocks:
        for data in blocks:
            sha.update(data)
            size += len(data)
    if "sha256:" + sha.hexdigest() != diff_id:
        raise IntegrityError(
            f"layer {origin.digest[:19]} decompressed does not match diff_id {diff_id[:19]} in its image config",
            hint="the image was packed from a damaged or inconsistent source: pack it again from a good one",
            digest=origin.digest,
        )
    return Decompressed(origin.digest, diff_id, compression, origin, size)


def _iter_decompressed(
    origin: Decompressed, block: int, cache: VerifiedCache | None, transfer: Transfer | None
) -> Generator[bytes, None, None]:
    """A Decompressed layer's bytes: never more than its measured size (a tar member's header announced it),
    then checked against its size and diff_id at the end, before whatever follows the member is sent."""
    sha = hashlib.sha256()
    size = 0
    with closing(_inflate(origin.inner, origin.compression, block, cache, transfer)) as blocks:
        for data in blocks:
            size += len(data)
            if size > origin.size:
                raise IntegrityError(
                    f"layer {origin.digest[:19]} decompresses past the {origin.size} bytes it had before the upload",
                    hint="the bundle changed while it was read: copy it again from the original medium",
                    digest=origin.digest,
                )
            sha.update(data)
            yield data
    if size != origin.size or "sha256:" + sha.hexdigest() != origin.diff_id:
        raise IntegrityError(
            f"layer {origin.digest[:19]} decompressed does not match diff_id {origin.diff_id[:19]}",
            hint="the bundle changed while it was read: copy it again from the original medium",
            digest=origin.digest,
        )


class _BlockReader:
    """A file-like view of a blob's blocks, for the decompressors; :meth:`drain` reads the rest, so the
    blob's own checks (its parts, its digest) run whatever the decompressor made of it."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._chunk = b""
        self._off = 0
        self.failed: BaseException | None = None  # what reading the blob raised (not the decompressor's doing)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer at a block boundary); b"" only at the end of the blob."""
        while self._off >= len(self._chunk):
            try:
                chunk = next(self._blocks, None)
            except BaseException as e:
                self.failed = e
                raise
            if chunk is None:
                return b""
            self._chunk, self._off = chunk, 0
        end = len(self._chunk) if n is None or n < 0 else min(len(self._chunk), self._off + n)
        data = self._chunk[self._off : end] if (self._off or end < len(self._chunk)) else self._chunk
        self._off = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Not seekable: decompressors read straight through."""
        raise io.UnsupportedOperation("seek")

    def drain(self) -> None:
        """Read the blob to its end (its last checks run then)."""
        for _ in self._blocks:
            pass
        self._chunk, self._off = b"", 0


def _inflate(
    origin: Stored | Rebuilt, compression: str, block: int, cache: VerifiedCache | None, transfer: Transfer | None
) -> Generator[bytes, None, None]:
    """A compressed layer's tar, in blocks of at most ``block`` bytes: the stored blob is read (and checked) in a
    thread of its own while this one decompresses.  Every zstd frame and gzip member is read, as Docker's and
    containerd's readers do.  Data that is not what the media type says is a FormatError, once the blob's
    own checks passed (a damaged part is reported as such, not as bad compression)."""
    blocks = threaded(iter_origin(origin, block, cache, transfer))
    reader = _BlockReader(blocks)
    try:
        try:
            if compression == "zstd":
                dctx = zstandard.ZstdDecompressor(max_window_size=MAX_LAYER_WINDOW)
                with dctx.stream_reader(reader, read_size=block, read_across_frames=True, closefd=False) as zr:  # type: ignore[arg-type]
                    while data := zr.read(block):
                        yield data
            elif compression == "gzip":
                with gzip.GzipFile(fileobj=reader, mode="rb") as gz:
                    while data := gz.read(block):
                        yield data
            else:
                raise UsageError(f"layer {origin.digest[:19]}: no decompressor for {compression!r}")
        except (zstandard.ZstdError, zlib.error, EOFError, OSError) as e:
            if reader.failed is not None:
                raise reader.failed from None  # reading the blob failed (an I/O error), not its decompression
            reader.drain()
            raise FormatError(
                f"layer {origin.digest[:19]} is not valid {compression} data: {str(e)[:160]}",
                hint="its media type names a compression its bytes do not have: pack the image again from a good source",
                digest=origin.digest,
            ) from e
        reader.drain()
    finally:
        close = getattr(blocks, "close", None)  # a generator: closing it stops its reading thread
        if close is not None:
            close()
