"""pack: image sources -> parts -> signed manifest.

:func:`pack` reads as the pipeline: open the sources (each checked as named) -> estimate their bytes and
check space -> stream each source into the bundle writer -> a delta's recipes -> commit the parts -> side
files (installer, wheels) -> the manifest (split into volumes) -> sign, and write the manifest last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import zstandard

from airgap._internal.clients.docker import Engine, EngineClient
from airgap._internal.delta import rebuild
from airgap._internal.format import wheelhouse
from airgap._internal.format.installer import installer_files
from airgap._internal.format.media import LISTING_RESERVE, listing, listing_name, plan_volumes, volume_name
from airgap._internal.format.origins import iter_blob
from airgap._internal.format.parts import MIN_PART_SIZE, make_compressor
from airgap._internal.format.reader import (
    MAX_MANIFEST_BYTES,
    LoadedBundle,
    load_trusted_bundle,
    read_signatures,
    refuse_unexpected,
)
from airgap._internal.format.writer import GUESS_HEAD, BundleWriter, SpeculationMiss
from airgap._internal.inventory import cyclonedx
from airgap._internal.inventory.tap import InventoryTap
from airgap._internal.sources.base import ImageSource, OpenContext, Source, parse_platforms
from airgap._internal.sources.kinds import open_sources, parse_source
from airgap._internal.util import fsutil
from airgap._internal.util.tarstream import EntryReader
from airgap._version import __version__
from airgap.errors import Error, FormatError, IntegrityError, TrustError, UsageError
from airgap.model.manifest import (
    SBOM_DIR,
    SBOM_MODES,
    BundleFile,
    Compression,
    Descriptor,
    Image,
    Manifest,
    Part,
    Rebuild,
    SourceIndex,
    Volume,
    format_time,
    parse_time,
)
from airgap.model.mediatypes import MT_DOCKER_LAYER, MT_OCI_LAYER
from airgap.progress import NullReporter, Reporter, Transfer
from airgap.trust import keys
from airgap.trust import policy as trust
from airgap.trust.keys import PublicKey, Signer, SigningKey

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_PART_SIZE",
    "SBOM_MODES",
    "PackOptions",
    "PackResult",
    "Source",
    "expiry",
    "pack",
    "parse_source",
]

DEFAULT_PART_SIZE = 1 << 30
DEFAULT_LEVEL = 3
NOTED_WARNINGS = 10  # inventory warnings shown per image; all are in its SBOM


@dataclass(frozen=True)
class PackOptions:
    """What to pack and how; checked when made (the part size, --platform), so a bad option fails before
    any work."""

    sources: tuple[Source, ...]  # parsed by parse_source
    out_dir: Path
    key: SigningKey | Path  # a key file (a bare Path: unencrypted) or a key on a token; keys.open_signer opens either
    part_size: int = DEFAULT_PART_SIZE
    level: int = DEFAULT_LEVEL
    overwrite: bool = False
    name: str | None = None
    sequence: int | None = None
    expires: str | None = None  # "30d", "12h", "90m" after creation, or a UTC time "2027-01-31T00:00:00Z"
    threads: int = os.cpu_count() or 1
    long_distance: bool = False  # zstd --long (128 MiB window): smaller bundles of repetitive images, more memory
    platform: str | None = None  # registry and OCI sources: "os/arch[,os/arch...]" or "all"; default: this host's
    plain_http: bool = False  # registry sources without TLS (loopback registries always are)
    with_installer: bool = False  # add a wheelhouse (installer/wheels) so the offline host can pip-install airgap
    wheelhouse: Path | None = None  # ... taken from this directory instead of built with pip
    media_dir_size: int | None = None  # split the bundle into vol-NN folders, each fitting a medium this large
    since: Path | None = None  # a delta: leave out the layers of this older bundle (its directory or manifest.json)
    trusted: tuple[PublicKey, ...] = ()  # with --since: keys besides the packing key that may have signed the base
    chunk_deltas: bool = True  # with --since DIR: carry changed layers as recipes over the old layers' chunks
    speculate: bool = True  # with --since: only hash members the size of a base layer (retried without on a miss)
    sbom: str = "on"  # one of SBOM_MODES: a signed CycloneDX inventory of each image (sbom/<image-id>.cdx.json)

    def __post_init__(self) -> None:
        """The one check of the part size (the parts' writer relies on it), of --platform and of --sbom; and
        that the options agree with each other, so that no pack exports a whole image to fail on them."""
        if self.part_size < MIN_PART_SIZE:
            raise UsageError(f"part size {self.part_size} is too small", hint=f"use at least {MIN_PART_SIZE} bytes")
        parse_platforms(self.platform)
        if self.sbom not in SBOM_MODES:
            raise UsageError(f"--sbom {self.sbom!r} is not one of {', '.join(SBOM_MODES)}")
        if self.media_dir_size is not None and self.media_dir_size < self.part_size + LISTING_RESERVE:
            raise UsageError(
                f"--part-size {fsutil.human_bytes(self.part_size)} does not fit on a medium of --media-dir-size "
                f"{fsutil.human_bytes(self.media_dir_size)} (each volume keeps {fsutil.human_bytes(LISTING_RESERVE)} "
                "for its listing)",
                hint="choose a --part-size well below --media-dir-size, or a larger medium",
            )
        if self.trusted and self.since is None:
            raise UsageError("--trust is for --since", hint="it names keys that may have signed the older bundle")
        if self.wheelhouse is not None:
            if not self.wheelhouse.is_dir():
                raise UsageError(f"--wheelhouse {self.wheelhouse} is not a directory", hint="build one with 'make wheelhouse'")
            wheelhouse.wheels(self.wheelhouse)  # one without an airgap wheel fails now, not after the export


@dataclass(frozen=True)
class PackResult:
    """What a pack made: the bundle's manifest, its signer, and what was read to make it."""

    out_dir: Path
    manifest: Manifest
    signer: str
    input_bytes: int
    seconds: float
    reused_parts: int = 0  # staged by an interrupted pack and checked, not compressed again
    hashed_only_bytes: int = 0  # a delta's left-out layers, read and hashed but never compressed or written
    sbom: str = "on"  # the --sbom mode it was packed with
    inventory_warnings: tuple[str, ...] = ()  # what the inventory could not read, "IMAGE: warning"

    def to_dict(self) -> dict[str, object]:
        """The result as ``pack --json`` prints it."""
        return {
            "bundle": str(self.out_dir),
            "name": self.manifest.name,
            "sequence": self.manifest.sequence,
            "signer": self.signer,
            "images": [
                {"ref_names": list(i.ref_names), "image_id": i.image_id, "platform": str(i.platform)}
                for i in self.manifest.images
            ],
            "parts": len(self.manifest.parts),
            "bundle_bytes": self.manifest.total_part_bytes,
            "input_bytes": self.input_bytes,
            "reused_parts": self.reused_parts,
            "hashed_only_bytes": self.hashed_only_bytes,
            "seconds": round(self.seconds, 3),
            "sbom": {
                "mode": self.sbom,
                "files": [f.path for f in self.manifest.files if f.path.startswith(f"{SBOM_DIR}/")],
                "warnings": list(self.inventory_warnings),
            },
        }


# -- the pipeline ---------------------------------------------------------------------------------------
def pack(
    options: PackOptions, reporter: Reporter | None = None, connect: Callable[[], EngineClient] = Engine.connect
) -> PackResult:
    """Pack the images ``options`` names into a signed bundle in ``options.out_dir``.

    ``reporter`` hears the progress and the notes; ``connect`` reaches the Docker engine (made only when an
    engine image is named).  A pack that fails keeps the parts it staged: the same pack, run again, resumes
    from them.  Every failure is an :class:`airgap.errors.Error`."""
    reporter = reporter or NullReporter()
    if not options.sources:
        raise UsageError("no image to pack", hint="name at least one image or archive")
    compressor = make_compressor(options.level, options.threads, options.long_distance)
    started = time.monotonic()
    with ExitStack() as stack:
        signer = stack.enter_context(keys.open_signer(options.key))  # a key on a token stays logged in until the end
        ctx = OpenContext(stack, connect, reporter, options.platform, options.plain_http)
        sources = tuple(open_sources(options.sources, ctx))
        estimate = sum(source.estimate() for source in sources)
        run = _Run(options, reporter, compressor, signer, sources, estimate, started)
        try:
            return _pack(run)
        except SpeculationMiss:
            reporter.note(
                "a new layer looked like a base layer (same size and first MiB): reading the sources again, storing every layer"
            )
            retry = replace(options, speculate=False, overwrite=False)  # resumes from the parts staged so far
            return _pack(replace(run, options=retry))


@dataclass(frozen=True)
class _Run:
    """One pack's context, handed down the pipeline."""

    options: PackOptions
    reporter: Reporter
    compressor: zstandard.ZstdCompressor
    signer: Signer  # signs the manifest and names the pack in its resume journal
    sources: tuple[ImageSource, ...]  # opened, in the order they stream
    estimate: int  # the bytes they will stream
    started: float  # time.monotonic() when the pack began


def _pack(run: _Run) -> PackResult:
    """The pipeline from the space checks on: stream the sources into the writer, a delta's recipes, commit
    the parts, the side files, the manifest, sign.  Run again without guessing after a SpeculationMiss."""
    options, reporter = run.options, run.reporter
    _check_space(run)
    transfer = Transfer(reporter)
    created = _created()
    expires = expiry(options.expires, created)  # a bad --expires fails before any work
    base = _load_base(options.since, _trusted_for_base(options, run.signer)) if options.since is not None else None
    tap = InventoryTap() if options.sbom != "off" else None
    writer = _open_writer(run, base, transfer, tap)
    try:
        images = _stream_sources(run, writer, base)
        indexes = _kept_indexes(run, images)
        sboms, warnings = _inventory(images, tap, options, reporter, format_time(created))
        digests, rebuilds = _delta(images, base, writer, options, reporter)
        digests += [d.digest for index in indexes for d in (index.index, *index.extras)]
        blobs, parts = writer.commit_parts(digests)
        files = _side_files(images, parts, writer, options, reporter, sboms)
        manifest = Manifest(
            name=options.name or _default_name(images),
            sequence=options.sequence if options.sequence is not None else int(created.timestamp()),
            expires=expires,
            created=format_time(created),
            tool_version=__version__,
            part_size=options.part_size,
            compression=Compression("zstd", options.level),
            images=tuple(images),
            blobs=tuple(blobs),
            parts=tuple(parts),
            files=tuple(files),
            base=base.digest if base is not None else None,
            rebuilds=tuple(rebuilds),
            indexes=tuple(indexes),
        )
        if options.media_dir_size:
            manifest = _split_into_volumes(manifest, writer, options.media_dir_size)
        _check_manifest_size(len(manifest.to_bytes()), options.part_size)
        fingerprint, signature = trust.sign(manifest.to_bytes(), run.signer)
        writer.write_manifest(manifest, {fingerprint: signature})
    except BaseException as e:
        error: BaseException = fsutil.io_error(e, f"bundle {options.out_dir}") if isinstance(e, OSError) else e
        if writer.keep_for_resume() and isinstance(error, Error):
            if isinstance(error, UsageError):  # the same pack would fail the same way
                resume = "the parts staged so far are kept: a pack of the same sources, --part-size and key reuses them"
            else:
                resume = "the parts staged so far are kept: run the same pack again to resume"
            error.with_hint(resume)
        if error is e:
            raise
        raise error from e
    writer.cleanup()
    return PackResult(
        options.out_dir, manifest, fingerprint, transfer.bytes, time.monotonic() - run.started, writer.reused_parts,
        sum(writer.hashed_only.values()), options.sbom, tuple(warnings),
    )  # fmt: skip


# -- the steps --------------------------------------------------------------------------------------------
def _check_space(run: _Run) -> None:
    """Before any work: the manifest will stay readable, each source has the room it needs of its own, and
    the output directory's disk holds the worst case."""
    options = run.options
    _check_manifest_size(run.estimate // options.part_size * PART_ENTRY_BYTES, options.part_size)
    if options.media_dir_size:
        parts = run.estimate // options.part_size + 1
        first_reserve = 2 * parts * PART_ENTRY_BYTES + 100 * parts + (64 << 10)  # as _split_into_volumes reserves it
        if first_reserve + LISTING_RESERVE >= options.media_dir_size:
            raise UsageError(
                f"--media-dir-size {fsutil.human_bytes(options.media_dir_size)} leaves no room beside the manifest of "
                f"about {parts} parts",
                hint="use a larger medium size, or a larger --part-size (fewer parts)",
            )
    for source in run.sources:
        source.check_room()
    target = options.out_dir if options.out_dir.exists() else options.out_dir.parent
    if target.exists():
        # worst case: incompressible data; zstd adds well under 1 %
        fsutil.require_space(target, run.estimate + run.estimate // 100 + (16 << 20), "packing")


def _open_writer(run: _Run, base: _Base | None, transfer: Transfer, tap: InventoryTap | None = None) -> BundleWriter:
    """The bundle writer for the output directory, keeping what an interrupted run of this same pack staged;
    ``tap``: the inventory, which reads every layer as it is staged."""
    options = run.options
    # a delta: a member with the size and first MiB of a base layer is most likely that layer: hash it only
    guesses = _guesses(base.bundle, base.layers) if base and options.speculate else {}
    writer = BundleWriter(
        options.out_dir, options.part_size, run.compressor, options.overwrite, transfer, options.level, guesses,
        resume_key=_resume_key(options, run.signer), tap=tap,
    )  # fmt: skip
    if writer.discarded_parts:
        run.reporter.note(
            f"{options.out_dir} held {writer.discarded_parts} part(s) staged by a pack of other sources, options or key: discarded"
        )
    if writer.resumable_parts:
        run.reporter.note(
            f"resuming an interrupted pack: {writer.resumable_parts} part(s) already staged are checked, not compressed again"
        )
    return writer


def _stream_sources(run: _Run, writer: BundleWriter, base: _Base | None) -> list[Image]:
    """Stream every source into the writer, in order; the images, one per image ID with every name kept."""
    left_out = frozenset(base.layers) if base else frozenset()
    run.reporter.start("pack", run.estimate)
    images = [image for source in run.sources for image in source.stream(writer, left_out)]
    run.reporter.finish()
    return _merge(images)


def _kept_indexes(run: _Run, images: list[Image]) -> list[SourceIndex]:
    """The sources' indexes kept byte for byte, each once, and only while every image manifest they list is in the
    bundle with its own bytes (two sources of one image may have merged it under one manifest)."""
    kept_manifests = {image.manifest.digest for image in images if image.manifest is not None}
    found: dict[str, SourceIndex] = {}
    for source in run.sources:
        for index in source.indexes():
            if index.index.digest in found:  # named twice: one index, every name
                old = found[index.index.digest]
                names = old.ref_names + tuple(r for r in index.ref_names if r not in old.ref_names)
                found[index.index.digest] = replace(old, ref_names=names)
            elif kept_manifests:
                found[index.index.digest] = index
    return list(found.values())


def _delta(
    images: list[Image], base: _Base | None, writer: BundleWriter, options: PackOptions, reporter: Reporter
) -> tuple[list[str], list[Rebuild]]:
    """The blobs the bundle carries: every config, layer and kept manifest, but for a delta not the base's layers
    (configs and manifests always), and changed layers as recipes over the base's old ones where that pays.  Also
    the recipes."""
    digests = [d.digest for image in images for d in (image.config, *image.layers, *_kept(image))]
    if base is None:
        return digests, []
    configs = {d.digest for image in images for d in (image.config, *_kept(image))}
    digests = [d for d in digests if d not in base.layers or d in configs]
    wanted = {layer.digest for image in images for layer in image.layers}
    reporter.note(
        f"delta since {options.since}: {len(wanted - set(base.layers))} new layer(s); "
        f"{len(wanted & set(base.layers))} left to the base bundle"
    )
    rebuilds: list[Rebuild] = []
    if base.bundle is not None and options.chunk_deltas:
        rebuilds = _recipes(images, base.layers, base.bundle, writer, reporter)
        replaced = {r.layer: r.recipe for r in rebuilds}
        digests = [replaced.get(d, d) for d in digests]
    return digests, rebuilds


def _inventory(
    images: list[Image], tap: InventoryTap | None, options: PackOptions, reporter: Reporter, created: str
) -> tuple[dict[str, bytes], list[str]]:
    """Each image's SBOM (``sbom/<image-id>.cdx.json``) and the inventory's warnings, each noted; with
    --sbom=require a warning fails the pack (its staged parts are kept for a resume)."""
    if tap is None:
        return {}, []
    sboms: dict[str, bytes] = {}
    warnings: list[str] = []
    for image in images:
        inventory = tap.image(image)
        sboms[cyclonedx.sbom_path(image.image_id)] = cyclonedx.write(image, inventory, created, __version__)
        name = image.ref_names[0] if image.ref_names else image.image_id[:19]
        warnings += [f"{name}: {w}" for w in inventory.warnings]
        for w in inventory.warnings[:NOTED_WARNINGS]:
            reporter.note(f"inventory of {name}: {w}")
        if len(inventory.warnings) > NOTED_WARNINGS:
            reporter.note(
                f"inventory of {name}: {len(inventory.warnings) - NOTED_WARNINGS} more warning(s), recorded in its SBOM"
            )
    if warnings and options.sbom == "require":
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise FormatError(
            f"the inventory is incomplete: {warnings[0]}{more}",
            hint="with --sbom=on the bundle carries the inventory and its warnings; --sbom=require packs only a complete one",
        )
    return sboms, warnings


def _side_files(
    images: list[Image],
    parts: list[Part],
    writer: BundleWriter,
    options: PackOptions,
    reporter: Reporter,
    sboms: dict[str, bytes] | None = None,
) -> list[BundleFile]:
    """Write the signed side files: the POSIX installer, the images' SBOMs and, with --with-installer, the wheelhouse."""
    parts_by_blob: dict[str, list[Part]] = {}
    for part in parts:
        parts_by_blob.setdefault(part.blob, []).append(part)
    side: dict[str, bytes | Path] = dict(installer_files(images, parts_by_blob.get))
    side.update(sboms or {})
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=writer.staging) as tmp:
        if options.with_installer:
            if options.wheelhouse is None:
                reporter.note("building the wheelhouse (airgap and its dependencies for CPython 3.10-3.13, x86_64 and aarch64)")
                wheelhouse.build(Path(tmp))
            side.update(wheelhouse.bundle_files(options.wheelhouse or Path(tmp)))
        return writer.write_files(side)


def _resume_key(options: PackOptions, signer: Signer) -> str:
    """Names this pack in its resume journal: staging is reused only by a pack of the same sources with the
    same part-shaping options and signer.  An Ed25519 signature (deterministic) over them, so whoever lacks
    the key cannot forge a journal entry.  Leaves out what does not shape parts (name, expiry, volumes,
    installer) and speculate/overwrite, which the retry after a SpeculationMiss changes."""
    inputs = {
        "sources": [s.resume_inputs() for s in options.sources],
        "part_size": options.part_size,
        "level": options.level,
        "long_distance": options.long_distance,
        "platform": options.platform,
        "plain_http": options.plain_http,
        "since": str(options.since) if options.since is not None else None,
        "chunk_deltas": options.chunk_deltas,
        "tool": __version__,
    }
    return signer.sign(b"airgap pack resume\0" + json.dumps(inputs, sort_keys=True).encode()).hex()


def _created() -> datetime:
    """The bundle's creation time: SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
        except ValueError as e:
            raise UsageError("SOURCE_DATE_EPOCH is not a whole number of seconds") from e
    return datetime.now(timezone.utc).replace(microsecond=0)


def expiry(text: str | None, created: datetime) -> str | None:
    """--expires: a duration after creation (30d, 12h, 90m) or a UTC time; must lie after creation."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        moment = created + timedelta(**{unit: int(m.group(1))})
    else:
        try:
            moment = parse_time(text.strip())
        except ValueError as e:
            raise UsageError(
                f"cannot read --expires {text!r}",
                hint="use a duration such as 30d, 12h, 90m, or a UTC time like 2027-01-31T00:00:00Z",
            ) from e
    if moment <= created:
        raise UsageError(f"--expires {text!r} is not after the bundle's creation time {format_time(created)}")
    return format_time(moment)


def _default_name(images: list[Image]) -> str:
    """The bundle's name (the key of rollback protection) when --name is not given: the repository of the
    first of the images' names in sorted order, so the order of the sources never changes it."""
    refs = sorted(ref for image in images for ref in image.ref_names)
    if not refs:
        return "bundle"
    repo = refs[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", repo)[:100].lstrip("._-") or "bundle"


PART_ENTRY_BYTES = 330  # what one part adds to manifest.json, about


def _check_manifest_size(size: int, part_size: int) -> None:
    """Verifiers read at most MAX_MANIFEST_BYTES of a manifest: never sign one they would refuse."""
    if size > MAX_MANIFEST_BYTES:
        raise UsageError(
            f"with --part-size {fsutil.human_bytes(part_size)} the manifest would be about {fsutil.human_bytes(size)}, "
            f"over the {fsutil.human_bytes(MAX_MANIFEST_BYTES)} airgap reads",
            hint="use a larger --part-size (fewer parts)",
        )


def _trusted_for_base(options: PackOptions, signer: Signer) -> tuple[PublicKey, ...]:
    """The keys a --since base bundle may be signed by: the packing key and those given with --trust."""
    own = PublicKey(signer.public_key(), keys.fingerprint(signer.public_key()), str(options.key))
    return (own, *options.trusted)


def _kept(image: Image) -> tuple[Descriptor, ...]:
    """The image's source manifest, when the bundle keeps it."""
    return (image.manifest,) if image.manifest is not None else ()


def _merge(images: list[Image]) -> list[Image]:
    """One entry per (image ID, platform): the same image from two sources keeps every name, and the first source
    manifest kept for the layers it keeps."""
    merged: dict[str, Image] = {}
    for image in images:
        old = merged.get(image.image_id)
        if old is None:
            merged[image.image_id] = image
        else:
            refs = old.ref_names + tuple(r for r in image.ref_names if r not in old.ref_names)
            manifest = old.manifest or (image.manifest if image.layers == old.layers else None)
            merged[image.image_id] = Image(refs, old.config, old.layers, old.diff_ids, old.platform, manifest)
    return list(merged.values())


CHUNK_MIN_LAYER = 4 << 20  # smaller layers are carried whole
SPECULATE_MIN = 1 << 20  # smaller base layers are not worth guessing: they are stored, then dropped


def _recipes(
    images: list[Image], old_layers: dict[str, int], old: LoadedBundle, writer: BundleWriter, reporter: Reporter
) -> list[Rebuild]:
    """For each new uncompressed layer, try a recipe over an old layer the new images no longer use."""
    plain = (MT_DOCKER_LAYER, MT_OCI_LAYER)
    in_use = {layer.digest: layer for image in images for layer in image.layers}
    candidates = [
        layer
        for layer in in_use.values()
        if layer.digest not in old_layers and layer.media_type in plain and layer.size >= CHUNK_MIN_LAYER
    ]
    sources = {
        layer.digest
        for image in old.manifest.images
        for layer in image.layers
        if layer.digest not in in_use
        and layer.media_type in plain
        and layer.size >= CHUNK_MIN_LAYER
        and old.manifest.has_blob(layer.digest)
    }
    if not candidates or not sources:
        return []
    reporter.note(f"indexing {len(sources)} replaced layer(s) of the base bundle in content-defined chunks")
    indexes = {digest: rebuild.index_chunks(iter_blob(old, digest)) for digest in sources}
    made = []
    for layer in candidates:
        best_source, best = None, None
        for digest, index in indexes.items():
            p = rebuild.plan(writer.iter_staged(layer.digest), index)
            if best is None or p.literal_bytes < best.literal_bytes:
                best_source, best = digest, p
        if best is None or best_source is None or not best.worth_it:
            continue
        stream = rebuild.BlockReader(rebuild.encode(best, writer.iter_staged(layer.digest)))
        reader = EntryReader(stream, best.recipe_size, "recipe")
        stored = writer.store_stream(best.recipe_size, reader, f"recipe\0{layer.digest}", guess=False)  # made here: no base layer
        made.append(Rebuild(layer.digest, layer.size, stored.digest, best_source, old.manifest.blob(best_source).size))
        reporter.note(
            f"layer {layer.digest[:19]}: {best.literal_bytes} of {layer.size} bytes new; "
            f"the rest is rebuilt from layer {best_source[:19]} of the base bundle"
        )
    return made


def _guesses(old: LoadedBundle | None, old_layers: dict[str, int]) -> dict[int, frozenset[str]]:
    """The base bundle's layers by size, with the sha256 of their first MiB (read from its parts)."""
    if old is None:
        return {}
    heads: dict[int, set[str]] = {}
    for digest, size in old_layers.items():
        if size < SPECULATE_MIN or not old.manifest.has_blob(digest):
            continue
        first = bytearray()
        with closing(iter_blob(old, digest)) as blocks:
            for block in blocks:
                first += block[: GUESS_HEAD - len(first)]
                if len(first) >= min(size, GUESS_HEAD):
                    break
        heads.setdefault(size, set()).add(hashlib.sha256(bytes(first)).hexdigest())
    return {size: frozenset(h) for size, h in heads.items()}


@dataclass(frozen=True)
class _Base:
    """The bundle a delta builds on (--since), authenticated: its manifest digest, its layers, and the bundle
    itself when a directory was given (its parts feed the guesses and recipes)."""

    digest: str
    layers: dict[str, int]  # every layer its images have: digest -> size
    bundle: LoadedBundle | None


def _load_base(since: Path, trusted: tuple[PublicKey, ...]) -> _Base:
    """Read --since: a bundle directory or its manifest.json, signed by one of ``trusted`` (the packing key and
    --trust).  Its expiry does not matter: it is only what the delta is measured against."""
    hint = "name an older bundle signed by the packing key or by a key given with --trust"
    try:
        if since.is_dir():
            bundle, _ = load_trusted_bundle(since, trusted, 1, allow_expired=True)
            refuse_unexpected(bundle, allow=False)  # held to the same line as install --base
            data, manifest = bundle.manifest_bytes, bundle.manifest
        else:
            bundle = None
            data = fsutil.read_capped(since, str(since), MAX_MANIFEST_BYTES)
            signatures = read_signatures(since.parent, frozenset(k.fingerprint for k in trusted))
            manifest, _ = trust.check_trust(data, signatures, trusted, 1, True, datetime.now(timezone.utc))
    except TrustError as e:
        raise TrustError(f"--since {since}: {e.message}", hint=hint) from e
    except (FormatError, IntegrityError) as e:
        raise type(e)(f"--since {since}: {e.message}", hint=hint) from e
    layers = {layer.digest: layer.size for image in manifest.images for layer in image.layers}
    return _Base("sha256:" + hashlib.sha256(data).hexdigest(), layers, bundle)


def _split_into_volumes(manifest: Manifest, writer: BundleWriter, capacity: int) -> Manifest:
    """Assign every part and file to a volume, write each volume's listing, and return the manifest saying so."""
    items = [(f.path, f.size) for f in manifest.files] + [(p.path, p.size) for p in manifest.parts]
    # room on the first volume for manifest.json (it grows by the volume lists) and a few signatures
    first_reserve = 2 * len(manifest.to_bytes()) + 100 * len(items) + (64 << 10)
    groups = plan_volumes(items, capacity, first_reserve)
    count = len(groups)
    listings = {
        listing_name(i, count): listing(manifest.name, manifest.sequence, i, count, group)
        for i, group in enumerate(groups, start=1)
    }
    written = {f.path: f for f in writer.write_files(dict(listings.items()))}
    volumes = tuple(
        Volume(volume_name(i, count), (listing_name(i, count), *(path for path, _ in group)))
        for i, group in enumerate(groups, start=1)
    )
    return replace(manifest, files=(*manifest.files, *written.values()), volumes=volumes)
