"""install: verify the signature, then stream the parts into the Docker engine's image load.

The load stream is a docker-save archive (which every Docker version loads) built on the fly: layers
and configs decompressed straight from the parts, ``manifest.json`` last.  Every part is hashed while
it streams; if one fails, the upload is cut off before ``manifest.json`` is sent, and the engine,
which unpacks the whole upload before registering anything, loads nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from airgap._internal.clients.distribution import DEFAULT_CHUNK
from airgap._internal.clients.docker import Engine
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.check import PartsFailed, check_part
from airgap._internal.format.reader import LoadedBundle, attach_base, iter_blob, load_trusted_bundle, open_part, refuse_unexpected
from airgap._internal.sinks.engine_layers import ExportPlan, exported_layers, held_layers, plan_exports
from airgap._internal.sinks.engine_pull import pull_from_loopback
from airgap._internal.sinks.outputs import Target, oci_archive_stream, parse_target, push_to_registry, write_archive
from airgap._internal.util import fsutil, tarstream
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, DockerError, IntegrityError, UsageError
from airgap.model.manifest import Image, Platform, format_time
from airgap.model.oci import docker_save_layout
from airgap.progress import NullReporter, Reporter
from airgap.trust.keys import PublicKey
from airgap.trust.policy import TrustResult, check_rollback
from airgap.trust.rollback import InstallState, cache_path
from airgap.trust.rollback import default_path as default_state_path


@dataclass(frozen=True)
class InstallOptions:
    bundle: Path
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    replace: bool = False
    platform: str | None = None  # "os/arch[/variant]"; default: the engine's
    allow_expired: bool = False
    allow_downgrade: bool = False
    allow_unexpected: bool = False
    state: Path | None = None  # rollback state file; None: the default path
    target: str | None = None  # None: the Docker engine; registry://..., docker-archive:PATH, oci-archive:PATH
    plain_http: bool = False  # registry target without TLS (loopback registries always are)
    chunk_size: int = DEFAULT_CHUNK  # largest single upload request to a registry
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)
    base: Path | None = None  # a delta's base bundle, for layers the target does not hold
    via: str = "load"  # Docker engine: "load" (stream an image upload) or "registry" (the engine pulls from loopback)


@dataclass(frozen=True)
class InstalledImage:
    image_id: str
    ref_names: tuple[str, ...]
    platform: str
    action: str  # "loaded", "already present", "pushed", "written"
    location: str = ""  # registry reference or archive path (not for the engine)
    manifest_digest: str = ""  # registry sink
    blobs_sent: int = 0  # registry sink: uploaded now ...
    blobs_present: int = 0  # ... or already in the registry, not sent again


@dataclass(frozen=True)
class InstallResult:
    bundle: Path
    trust: TrustResult
    images: tuple[InstalledImage, ...]
    bytes_streamed: int
    seconds: float
    parts_hashed: int = 0
    parts_cached: int = 0  # verified before (by verify or an interrupted install) and not hashed again
    layers_present: int = 0  # layers the engine already held: not read from the bundle at all
    layers_from_engine: int = 0  # a delta's base layers the engine holds under another chain: exported and checked
    layers_rebuilt: int = 0  # a delta's layers rebuilt from a recipe (over --base or the engine's copy)

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "signatures": self.trust.to_dict(),
            "images": [
                {
                    "image_id": i.image_id,
                    "ref_names": list(i.ref_names),
                    "platform": i.platform,
                    "action": i.action,
                    **({"location": i.location} if i.location else {}),
                    **(
                        {"manifest_digest": i.manifest_digest, "blobs_sent": i.blobs_sent, "blobs_present": i.blobs_present}
                        if i.manifest_digest
                        else {}
                    ),
                }
                for i in self.images
            ],
            "bytes_streamed": self.bytes_streamed,
            "parts_hashed": self.parts_hashed,
            "parts_cached": self.parts_cached,
            "layers_present": self.layers_present,
            "layers_from_engine": self.layers_from_engine,
            "layers_rebuilt": self.layers_rebuilt,
            "seconds": round(self.seconds, 3),
        }


def select_images(images: tuple[Image, ...], wanted: Platform, explicit: bool, note: Callable[[str], None]) -> list[Image]:
    """The images for the target platform; a single-platform bundle loads on any engine."""
    chosen = [i for i in images if i.platform.matches(wanted)]
    if chosen:
        others = sorted({str(i.platform) for i in images} - {str(i.platform) for i in chosen})
        if others:
            how = "as asked" if explicit else "the engine's platform"
            note(f"installing {wanted} ({how}); the bundle also has {', '.join(others)}")
        return chosen
    platforms = sorted({str(i.platform) for i in images})
    if explicit or len(platforms) > 1:
        raise UsageError(
            f"the bundle has no image for {wanted} (it has {', '.join(platforms)})",
            hint="choose one with --platform",
        )
    note(f"note: the bundle's platform {platforms[0]} differs from the engine's {wanted}; loading it anyway")
    return list(images)


def load_stream(
    bundle: LoadedBundle,
    images: list[Image],
    on_bytes: Callable[[int], None],
    cache: VerifiedCache | None = None,
    counts: dict[str, int] | None = None,
    held: frozenset[str] = frozenset(),
    exported: ExportPlan | None = None,
    engine: Engine | None = None,
) -> Iterator[bytes]:
    """A docker-save archive of ``images``, built from verified parts; manifest.json comes last.

    Layers in ``held`` are left out: the engine has them (their chains) and does not open their files.
    Layers in ``exported`` come from the engine's export of other images, matched by their digest."""
    elsewhere: dict[str, str] = {}
    rebuilt: set[str] = set()
    if exported is not None and (exported.layers or exported.rebuild_from) and engine is not None:
        yield from exported_layers(engine, bundle, exported, elsewhere, rebuilt, on_bytes, cache, counts)
    entries, body = docker_save_layout(images, elsewhere)
    for name, digest, size in entries:
        if digest in held or digest in rebuilt:
            continue
        yield tarstream.header(name, size)
        if exported is not None and digest in exported.rebuild_from:
            raise IntegrityError(
                f"the engine's export of {exported.rebuild_from[digest][:19]} did not hold the layer that "
                f"layer {digest[:19]} is rebuilt from",
                hint="pass the base bundle with --base OLD_BUNDLE",
            )
        blocks = iter_blob(bundle, digest, cache=cache, counts=counts)
        with closing(blocks):
            for data in blocks:
                on_bytes(len(data))
                yield data
        yield tarstream.padding(size)
    yield tarstream.header("manifest.json", len(body)) + body + tarstream.padding(len(body)) + tarstream.END_OF_ARCHIVE


def _precheck(bundle: LoadedBundle, images: list[Image], allow_unexpected: bool, skip: frozenset[str] = frozenset()) -> int:
    """Refuse unlisted files, and missing, linked or truncated parts, before sending anything.  Returns the blob bytes.

    ``skip``: layers the target already holds or that come from the engine (they are not read here).
    Layers of a delta's base bundle are checked in that bundle; rebuilt layers by their recipe and source."""
    refuse_unexpected(bundle, allow_unexpected)
    total = 0
    for digest in {d.digest for image in images for d in (image.config, *image.layers)} - skip:
        for source, blob in _where(bundle, digest):
            for part in source.manifest.parts_of(blob):
                open_part(source, part).close()
        rebuilt = bundle.manifest.rebuild_of(digest) if not bundle.manifest.has_blob(digest) else None
        total += rebuilt.size if rebuilt is not None else _owner(bundle, digest).manifest.blob(digest).size
    # the signed side files (the POSIX installer, its plans, volume listings, wheels) are small: a bundle with
    # one of them changed is not the bundle that was signed, whichever installer reads it
    bad = [r for r in (check_part(bundle, f) for f in bundle.manifest.files) if not r.ok]
    if bad:
        raise PartsFailed(bad)
    return total


def _owner(bundle: LoadedBundle, digest: str) -> LoadedBundle:
    if bundle.manifest.has_blob(digest):
        return bundle
    if bundle.base is not None and (bundle.base.manifest.has_blob(digest) or bundle.base.manifest.rebuild_of(digest)):
        return bundle.base
    raise UsageError(
        f"layer {digest[:19]} is not in this delta bundle, and the target does not hold it",
        hint="pass the base bundle with --base OLD_BUNDLE (or install the base bundle first)",
    )


def _where(bundle: LoadedBundle, digest: str) -> list[tuple[LoadedBundle, str]]:
    """The (bundle, blob) pairs whose parts make up ``digest``."""
    rebuilt = bundle.manifest.rebuild_of(digest) if not bundle.manifest.has_blob(digest) else None
    if rebuilt is not None:
        return [(bundle, rebuilt.recipe), *_where(_owner(bundle, rebuilt.source), rebuilt.source)]
    owner = _owner(bundle, digest)
    if owner is bundle:
        return [(bundle, digest)]
    return _where(owner, digest)


def _deliver(
    options: InstallOptions,
    target: Target,
    bundle: LoadedBundle,
    trust_result: TrustResult,
    reporter: Reporter,
    started: float,
    cache: VerifiedCache,
) -> InstallResult:
    """Install into a registry or write an archive: every image, or those of --platform."""
    images = list(bundle.manifest.images)
    if options.platform:
        images = select_images(bundle.manifest.images, Platform.parse(options.platform), True, reporter.note)
    # a delta's layers without --base: a registry may hold them already (checked blob by blob)
    external = frozenset(d.digest for d in bundle.manifest.external_layers())
    skip = external if target.kind == "registry" and bundle.base is None else frozenset()
    total = _precheck(bundle, images, options.allow_unexpected, skip)
    streamed = 0

    def on_bytes(n: int) -> None:
        nonlocal streamed
        streamed += n
        reporter.advance(n)

    counts: dict[str, int] = {}
    reporter.start(str(target), total)
    delivered: list[InstalledImage] = []
    if target.kind == "registry":
        pushed = push_to_registry(
            bundle, images, target, options.replace, options.plain_http, options.chunk_size,
            on_bytes, reporter.note, cache, counts,
        )  # fmt: skip
        for d in pushed:
            delivered.append(
                InstalledImage(
                    d.image.image_id,
                    d.image.ref_names,
                    str(d.image.platform),
                    "pushed",
                    d.location,
                    d.manifest_digest,
                    d.blobs_sent,
                    d.blobs_present,
                )
            )
    else:
        path = Path(target.value)
        if target.kind == "docker-archive":
            stream = load_stream(bundle, images, on_bytes, cache, counts)
        else:
            stream = oci_archive_stream(bundle, images, on_bytes, cache, counts)
        fsutil.require_space(path.parent if path.parent.exists() else Path("."), total + (16 << 20), f"writing {path}")
        write_archive(path, threaded(stream), options.replace)
        delivered = [InstalledImage(i.image_id, i.ref_names, str(i.platform), "written", str(path)) for i in images]
    reporter.finish()
    return InstallResult(
        options.bundle, trust_result, tuple(delivered), streamed, time.monotonic() - started,
        counts.get("hashed", 0), counts.get("cached", 0),
    )  # fmt: skip


def install(
    options: InstallOptions,
    reporter: Reporter | None = None,
    connect: Callable[[], Engine] = Engine.connect,
) -> InstallResult:
    reporter = reporter or NullReporter()
    started = time.monotonic()
    bundle, trust_result = load_trusted_bundle(
        options.bundle, options.trusted, options.threshold, options.allow_expired, options.search
    )
    for line in trust_result.notes():
        reporter.note(line)
    if options.base is not None:
        base, _ = load_trusted_bundle(options.base, options.trusted, options.threshold, True)
        refuse_unexpected(base, options.allow_unexpected)  # the base is held to the same line as the bundle
        bundle = attach_base(bundle, base)
    manifest = bundle.manifest
    manifest_sha256 = hashlib.sha256(bundle.manifest_bytes).hexdigest()
    state_path = options.state or default_state_path()
    state = InstallState(state_path)
    check_rollback(manifest.name, manifest.sequence, manifest_sha256, state.get(manifest.name), options.allow_downgrade)
    target = parse_target(options.target)
    cache = VerifiedCache(cache_path(state_path))
    if target.kind == "docker":
        with connect() as engine:
            result = _install(options, bundle, trust_result, engine, reporter, started, cache)
    else:
        result = _deliver(options, target, bundle, trust_result, reporter, started, cache)
    state.record(manifest.name, manifest.sequence, manifest_sha256, format_time(datetime.now(timezone.utc)))
    return result


def _install(
    options: InstallOptions,
    bundle: LoadedBundle,
    trust_result: TrustResult,
    engine: Engine,
    reporter: Reporter,
    started: float,
    cache: VerifiedCache,
) -> InstallResult:
    wanted = Platform.parse(options.platform) if options.platform else engine.platform()
    images = select_images(bundle.manifest.images, wanted, options.platform is not None, reporter.note)

    # never move a tag silently
    present = True
    for image in images:
        if engine.inspect(image.image_id) is None:
            present = False
        for ref in image.ref_names:
            current = engine.image_id(ref)
            if current != image.image_id:
                present = False
            if current is not None and current != image.image_id and not options.replace:
                raise ConflictError(
                    f"tag {ref} already names image {current[:19]}, the bundle has {image.image_id[:19]}",
                    hint="pass --replace to move the tag to the bundle's image",
                )
    if present:
        done = tuple(InstalledImage(i.image_id, i.ref_names, str(i.platform), "already present") for i in images)
        return InstallResult(options.bundle, trust_result, done, 0, time.monotonic() - started)

    held = held_layers(engine, images) if options.via == "load" else frozenset()
    exported = plan_exports(engine, bundle, images, held) if options.via == "load" else ExportPlan()
    from_engine = held | frozenset(exported.layers) | frozenset(exported.rebuild_from)
    total = _precheck(bundle, images, options.allow_unexpected, from_engine)
    total += exported.size
    for layer_digest in exported.rebuild_from:
        rebuilt = bundle.manifest.rebuild_of(layer_digest)
        if rebuilt is not None:
            for part in bundle.manifest.parts_of(rebuilt.recipe):
                open_part(bundle, part).close()
            total += rebuilt.size
    if held:
        reporter.note(f"{len(held)} layer(s) already in the engine: not read from the bundle")
    if exported.rebuild_from:
        reporter.note(
            f"{len(exported.rebuild_from)} layer(s) rebuilt from their recipe and the engine's own copy of the old layer "
            "(exported; the result is checked against the layer digest)"
        )
    if exported.layers:
        reporter.note(
            f"{len(exported.layers)} layer(s) of the delta's base taken from the engine's own copy "
            f"(exported from {len(exported.images)} image(s), each checked against its digest)"
        )
    root = engine.root_dir()
    if root is not None:
        # the engine unpacks the whole upload into its data root, then registers the layers there
        fsutil.require_space(root, 2 * total + (64 << 20), "loading into Docker")
    else:
        reporter.note("note: the engine's data root is not on this host; its free space was not checked")

    streamed = 0

    def on_bytes(n: int) -> None:
        nonlocal streamed
        streamed += n
        reporter.advance(n)

    reporter.start("install", total)
    counts: dict[str, int] = {}
    if options.via == "registry":
        pull_from_loopback(engine, bundle, images, cache, counts, on_bytes)
    else:
        engine.load(threaded(load_stream(bundle, images, on_bytes, cache, counts, held, exported, engine)))
    reporter.finish()

    loaded = []
    for image in images:
        if engine.inspect(image.image_id) is None:
            raise DockerError(f"the engine did not keep image {image.image_id[:19]} after loading it")
        for ref in image.ref_names:
            if engine.image_id(ref) != image.image_id:
                raise DockerError(f"after loading, tag {ref} does not name image {image.image_id[:19]}")
        loaded.append(InstalledImage(image.image_id, image.ref_names, str(image.platform), "loaded"))
    return InstallResult(
        options.bundle,
        trust_result,
        tuple(loaded),
        streamed,
        time.monotonic() - started,
        counts.get("hashed", 0),
        counts.get("cached", 0),
        len(held),
        len(exported.layers),
        sum(1 for d in {layer.digest for image in images for layer in image.layers} - held if bundle.manifest.rebuild_of(d)),
    )
