"""pack: image sources -> parts -> signed manifest."""

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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap import __version__
from airgap._internal.clients.distribution import Registry, RegistryRef, parse_ref
from airgap._internal.clients.docker import Engine
from airgap._internal.delta import rebuild
from airgap._internal.format import wheelhouse
from airgap._internal.format.installer import installer_files
from airgap._internal.format.media import listing, listing_name, plan_volumes, volume_name
from airgap._internal.format.origins import iter_blob
from airgap._internal.format.parts import make_compressor, raw_chunk_size
from airgap._internal.format.reader import (
    MAX_MANIFEST_BYTES,
    LoadedBundle,
    load_trusted_bundle,
    read_signatures,
    refuse_unexpected,
)
from airgap._internal.format.writer import GUESS_HEAD, BundleWriter, SpeculationMiss
from airgap._internal.sources.archive import images_from_archive, read_archive
from airgap._internal.sources.registry import ResolvedImage, fetch, host_default, parse_platforms, platform_matches, resolve
from airgap._internal.util import fsutil
from airgap._internal.util.pipeline import PrefetchReader
from airgap._internal.util.tarstream import EntryReader
from airgap.errors import Error, FormatError, IntegrityError, TrustError, UsageError
from airgap.model.manifest import Compression, Image, Manifest, Part, Rebuild, Volume, format_time, parse_time
from airgap.model.mediatypes import MT_DOCKER_LAYER, MT_OCI_LAYER
from airgap.progress import NullReporter, Reporter, Transfer
from airgap.trust import keys
from airgap.trust import policy as trust
from airgap.trust.keys import PublicKey

DEFAULT_PART_SIZE = 1 << 30
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class Source:
    kind: str  # "docker", "docker-archive", "oci-archive", "registry"
    ref: str  # image reference (docker, registry: oci://HOST/REPO:TAG) or archive path
    name: str | None = None  # oci-archive:PATH:NAME, the repository used for bare OCI ref names

    def __str__(self) -> str:
        return self.ref if self.kind in ("docker", "registry") else f"{self.kind}:{self.ref}"


def parse_source(text: str) -> Source:
    for kind in ("docker-archive", "oci-archive"):
        if text.startswith(kind + ":"):
            rest = text[len(kind) + 1 :]
            path, name = rest, None
            if kind == "oci-archive" and ":" in rest and not Path(rest).exists():
                path, _, name = rest.partition(":")
            if not path:
                raise UsageError(f"source {text!r} names no file")
            return Source(kind, path, name)
    if text.startswith(("oci://", "docker://")):
        ref = "oci://" + text.split("://", 1)[1]
        parse_ref(ref, "oci", need_reference=False)  # validates early
        return Source("registry", ref)
    if text.startswith("docker-daemon:"):
        text = text[len("docker-daemon:") :]
    if not text or "://" in text:
        raise UsageError(
            f"cannot read image source {text!r}",
            hint="name an image in the engine, docker-archive:PATH, oci-archive:PATH or oci://HOST/REPO:TAG",
        )
    return Source("docker", text)


@dataclass(frozen=True)
class PackOptions:
    sources: tuple[Source, ...]
    out_dir: Path
    key_path: Path
    passphrase: bytes | None = None
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


@dataclass(frozen=True)
class PackResult:
    out_dir: Path
    manifest: Manifest
    signer: str
    input_bytes: int
    seconds: float
    reused_parts: int = 0  # staged by an interrupted pack and checked, not compressed again
    hashed_only_bytes: int = 0  # a delta's left-out layers, read and hashed but never compressed or written

    def to_dict(self) -> dict[str, object]:
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
        }


def _resume_key(options: PackOptions, private: Ed25519PrivateKey) -> str:
    """Names this pack in its resume journal: staging is reused only by a pack of the same sources with the
    same part-shaping options and signer.  An Ed25519 signature (deterministic) over them, so whoever lacks
    the key cannot forge a journal entry.  Leaves out what does not shape parts (name, expiry, volumes,
    installer) and speculate/overwrite, which the retry after a SpeculationMiss changes."""
    inputs = {
        "sources": [[s.kind, s.ref, s.name] for s in options.sources],
        "part_size": options.part_size,
        "level": options.level,
        "long_distance": options.long_distance,
        "platform": options.platform,
        "plain_http": options.plain_http,
        "since": str(options.since) if options.since is not None else None,
        "chunk_deltas": options.chunk_deltas,
        "tool": __version__,
    }
    return private.sign(b"airgap pack resume\0" + json.dumps(inputs, sort_keys=True).encode()).hex()


def _created() -> datetime:
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


def _trusted_for_base(options: PackOptions, private: Ed25519PrivateKey) -> tuple[PublicKey, ...]:
    own = PublicKey(private.public_key(), keys.fingerprint(private.public_key()), str(options.key_path))
    return (own, *options.trusted)


def _merge(images: list[Image]) -> list[Image]:
    """One entry per (image ID, platform): the same image from two sources keeps every name."""
    merged: dict[str, Image] = {}
    for image in images:
        old = merged.get(image.image_id)
        if old is None:
            merged[image.image_id] = image
        else:
            refs = old.ref_names + tuple(r for r in image.ref_names if r not in old.ref_names)
            merged[image.image_id] = Image(refs, old.config, old.layers, old.diff_ids, old.platform)
    return list(merged.values())


def _estimate(sources: tuple[Source, ...], engine: Engine | None) -> tuple[int, int]:
    """Bytes the sources will stream: (from the engine, from archives).  Registry sources are sized apart."""
    from_engine = from_files = 0
    for source in sources:
        if source.kind == "registry":
            continue
        if source.kind == "docker" and engine is not None:
            found = engine.inspect(source.ref)
            if found is None:
                raise UsageError(
                    f"image {source.ref} is not in the Docker engine",
                    hint="check 'docker images', or name an archive with docker-archive:PATH",
                )
            from_engine += int(found.get("Size") or 0)
        else:
            try:
                from_files += os.stat(source.ref).st_size
            except OSError as e:
                raise UsageError(f"cannot read archive {source.ref}: {e.strerror}") from e
    return from_engine, from_files


def pack(options: PackOptions, reporter: Reporter | None = None, connect: Callable[[], Engine] = Engine.connect) -> PackResult:
    reporter = reporter or NullReporter()
    if not options.sources:
        raise UsageError("no image to pack", hint="name at least one image or archive")
    raw_chunk_size(options.part_size)  # validates the part size before any work
    compressor = make_compressor(options.level, options.threads, options.long_distance)
    private = keys.load_private(options.key_path, options.passphrase)
    started = time.monotonic()
    engine = connect() if any(s.kind == "docker" for s in options.sources) else None
    try:
        engine_bytes, archive_bytes = _estimate(options.sources, engine)
        with ExitStack() as stack:
            remote = _resolve_registry_sources(options, stack, reporter)
            try:
                return _pack(options, reporter, compressor, private, engine, started, engine_bytes, archive_bytes, remote)
            except SpeculationMiss:
                reporter.note(
                    "a new layer looked like a base layer (same size and first MiB): reading the sources again, storing every layer"
                )
                retry = replace(options, speculate=False, overwrite=False)  # resumes from the parts staged so far
                return _pack(retry, reporter, compressor, private, engine, started, engine_bytes, archive_bytes, remote)
    finally:
        if engine is not None:
            engine.close()


def _resolve_registry_sources(options: PackOptions, stack: ExitStack, reporter: Reporter) -> list[tuple[Registry, ResolvedImage]]:
    wanted = parse_platforms(options.platform)
    explicit = options.platform is not None
    if wanted is None and not explicit:
        wanted = [host_default()]
    remote = []
    registries: dict[str, Registry] = {}
    for source in options.sources:
        if source.kind != "registry":
            continue
        ref = parse_ref(source.ref, "oci", need_reference=False)
        if ref.reference is None:
            ref = RegistryRef(ref.host, ref.repository, "latest")
        if ref.host not in registries:
            registries[ref.host] = stack.enter_context(Registry(ref.host, options.plain_http))
        registry = registries[ref.host]
        remote += [(registry, image) for image in resolve(registry, ref, wanted, explicit, reporter.note)]
    return remote


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
        stored = writer.store_stream(best.recipe_size, EntryReader(stream, best.recipe_size, "recipe"), f"recipe\0{layer.digest}")
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


def _platform_filter(images: list[Image], platform: str | None, label: str) -> list[Image]:
    """Archives keep every image unless --platform names some."""
    wanted = parse_platforms(platform)
    if wanted is None:
        return images
    kept = [i for i in images if any(platform_matches(i.platform, w) for w in wanted)]
    if not kept:
        have = ", ".join(sorted({str(i.platform) for i in images}))
        raise UsageError(f"{label} has no image for --platform {platform} (it has {have})")
    return kept


def _pack(
    options: PackOptions,
    reporter: Reporter,
    compressor: zstandard.ZstdCompressor,
    private: Ed25519PrivateKey,
    engine: Engine | None,
    started: float,
    engine_bytes: int,
    archive_bytes: int,
    remote: list[tuple[Registry, ResolvedImage]],
) -> PackResult:
    estimate = engine_bytes + archive_bytes + sum(image.size for _, image in remote)
    _check_manifest_size(estimate // options.part_size * PART_ENTRY_BYTES, options.part_size)
    if engine is not None:
        root = engine.root_dir()
        if root is not None:
            # the engine's export copies the images into a temporary directory of its data root first
            fsutil.require_space(root, engine_bytes + (64 << 20), "the Docker engine's export (a temporary copy of the image)")
    target = options.out_dir if options.out_dir.exists() else options.out_dir.parent
    if target.exists():
        # worst case: incompressible data; zstd adds well under 1 %
        fsutil.require_space(target, estimate + estimate // 100 + (16 << 20), "packing")

    transfer = Transfer(reporter)
    created = _created()
    expires = expiry(options.expires, created)  # a bad --expires fails before any work
    since = _load_base(options.since, _trusted_for_base(options, private)) if options.since is not None else None
    # a delta: a member with the size and first MiB of a base layer is most likely that layer: hash it only
    guesses = _guesses(since.bundle, since.layers) if since and options.speculate else {}
    writer = BundleWriter(
        options.out_dir, options.part_size, compressor, options.overwrite, transfer, options.level, guesses,
        resume_key=_resume_key(options, private),
    )  # fmt: skip
    if writer.discarded_parts:
        reporter.note(
            f"{options.out_dir} held {writer.discarded_parts} part(s) staged by a pack of other sources, options or key: discarded"
        )
    if writer.resumable_parts:
        reporter.note(
            f"resuming an interrupted pack: {writer.resumable_parts} part(s) already staged are checked, not compressed again"
        )
    try:
        images: list[Image] = []
        reporter.start("pack", estimate)
        engine_refs = [s.ref for s in options.sources if s.kind == "docker"]
        if engine_refs and engine is not None:
            reporter.note(f"exporting {', '.join(engine_refs)} from the Docker engine")
            with engine.export(engine_refs) as stream, PrefetchReader(stream) as ahead:
                contents = read_archive(ahead, "Docker engine export", writer)
                images += images_from_archive(contents, writer)
        fetched: dict[str, int] = {}
        left_out = frozenset(since.layers) if since else frozenset()
        writer.guessing = False  # a registry names its layers' digests: left-out layers are simply not fetched
        for registry, resolved in remote:
            reporter.note(f"pulling {resolved.ref} ({resolved.manifest_digest[:19]}) from the registry")
            images.append(fetch(registry, resolved, writer, fetched, left_out))
        writer.guessing = True
        for source in options.sources:
            if source.kind in ("docker", "registry"):
                continue
            try:
                fh = open(source.ref, "rb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise UsageError(f"cannot read archive {source.ref}: {e.strerror}") from e
            with fh, PrefetchReader(fh) as ahead:
                contents = read_archive(ahead, str(source), writer)
                found = images_from_archive(contents, writer, source.name)
            images += _platform_filter(found, options.platform, str(source))
        reporter.finish()
        images = _merge(images)
        digests = [d.digest for image in images for d in (image.config, *image.layers)]
        base = None
        rebuilds: list[Rebuild] = []
        if options.since is not None and since is not None:
            base, old_layers = since.digest, since.layers
            configs = {image.config.digest for image in images}
            digests = [d for d in digests if d not in old_layers or d in configs]
            wanted = {layer.digest for image in images for layer in image.layers}
            reporter.note(
                f"delta since {options.since}: {len(wanted - set(old_layers))} new layer(s); "
                f"{len(wanted & set(old_layers))} left to the base bundle"
            )
            if since.bundle is not None and options.chunk_deltas:
                rebuilds = _recipes(images, old_layers, since.bundle, writer, reporter)
                replaced = {r.layer: r.recipe for r in rebuilds}
                digests = [replaced.get(d, d) for d in digests]
        blobs, parts = writer.commit_parts(digests)
        parts_by_blob: dict[str, list[Part]] = {}
        for part in parts:
            parts_by_blob.setdefault(part.blob, []).append(part)
        side: dict[str, bytes | Path] = dict(installer_files(images, parts_by_blob.get))
        with tempfile.TemporaryDirectory(prefix="wheels-", dir=writer.staging) as tmp:
            if options.with_installer:
                if options.wheelhouse is None:
                    reporter.note(
                        "building the wheelhouse (airgap and its dependencies for CPython 3.10-3.13, x86_64 and aarch64)"
                    )
                    wheelhouse.build(Path(tmp))
                side.update(wheelhouse.bundle_files(options.wheelhouse or Path(tmp)))
            files = writer.write_files(side)
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
            base=base,
            rebuilds=tuple(rebuilds),
        )
        if options.media_dir_size:
            manifest = _split_into_volumes(manifest, writer, options.media_dir_size)
        _check_manifest_size(len(manifest.to_bytes()), options.part_size)
        fingerprint, signature = trust.sign(manifest.to_bytes(), private)
        writer.write_manifest(manifest, {fingerprint: signature})
    except BaseException as e:
        error: BaseException = fsutil.io_error(e, f"bundle {options.out_dir}") if isinstance(e, OSError) else e
        if writer.keep_for_resume() and isinstance(error, Error):
            resume = "the parts staged so far are kept: run the same pack again to resume"
            error.with_hint(resume)
        if error is e:
            raise
        raise error from e
    writer.cleanup()
    return PackResult(
        options.out_dir, manifest, fingerprint, transfer.bytes, time.monotonic() - started, writer.reused_parts,
        sum(writer.hashed_only.values()),
    )  # fmt: skip
