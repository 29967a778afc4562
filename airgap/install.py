"""install: check the bundle's signatures and the rollback state, then deliver its images to one target.

Every target is a sink (``airgap._internal.sinks``): the Docker engine or Podman (a streamed docker-save
upload, or a pull from a loopback registry), containerd (``ctr images import`` fed an OCI layout stream), an
OCI registry, or an image archive.  The steps are the same for each:
choose the images, refuse conflicts, resolve where every blob comes from and open every part that will be
read (nothing is sent before that), then deliver, hashing every part and checking every blob on the way.

A split bundle can also come from one drive (``--one-drive``), its discs one after another in any order: each
disc is checked as it comes (:func:`~airgap._internal.format.discs.check_disc`), the stream reads whatever
disc is in the drive first, and a disc that fails stops the upload before its end, so the target keeps nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from airgap._internal.clients.distribution import DEFAULT_CHUNK
from airgap._internal.clients.docker import Engine, EngineClient
from airgap._internal.format import discs
from airgap._internal.format.cache import KnownBundles, VerifiedCache, known_dir
from airgap._internal.format.reader import LoadedBundle, attach_base, load_trusted_bundle, refuse_unexpected
from airgap._internal.sinks.archives import ArchiveSink
from airgap._internal.sinks.base import InstalledImage, Sink, parse_target
from airgap._internal.sinks.containerd import ContainerdSink
from airgap._internal.sinks.engine import EngineSink
from airgap._internal.sinks.registry import RegistrySink
from airgap.discs import Changer
from airgap.errors import UsageError
from airgap.model.manifest import format_time
from airgap.progress import NullReporter, Reporter, Transfer
from airgap.trust.keys import PublicKey
from airgap.trust.policy import TrustResult, check_rollback
from airgap.trust.rollback import InstallState, RecordedImage, cache_path
from airgap.trust.rollback import default_path as default_state_path

__all__ = ["InstallOptions", "InstallResult", "InstalledImage", "install"]


@dataclass(frozen=True)
class InstallOptions:
    """What to install and where: the bundle, the keys that must have signed it, and the target (Docker engine, registry or
    archive)."""

    bundle: Path
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    replace: bool = False
    platform: str | None = None  # "os/arch[/variant]"; default: the engine's
    allow_expired: bool = False
    allow_downgrade: bool = False
    allow_unexpected: bool = False
    state: Path | None = None  # rollback state file; None: the default path
    target: str | None = None  # None: the Docker engine; registry://..., containerd://..., docker-archive:PATH, oci-archive:PATH
    plain_http: bool = False  # registry target without TLS (loopback registries always are)
    chunk_size: int = DEFAULT_CHUNK  # largest single upload request to a registry
    search: tuple[Path, ...] = ()  # more directories holding parts (--from: other volumes)
    base: Path | None = None  # a delta's base bundle, for layers the target does not hold
    via: str = "load"  # Docker engine: "load" (stream an image upload) or "registry" (the engine pulls from loopback)
    keep_host: bool = False  # registry target: each name's registry host stays, as the first component below PREFIX
    changer: Changer | None = None  # --one-drive: ``bundle`` is a drive's directory, its discs come one after another


@dataclass(frozen=True)
class InstallResult:
    """An install: the signatures found, each image's outcome, and how many parts were hashed or known."""

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
        """The JSON report: signatures, each image's outcome and location, and the counters of what was read."""
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


def install(
    options: InstallOptions,
    reporter: Reporter | None = None,
    connect: Callable[[], EngineClient] = Engine.connect,
) -> InstallResult:
    """Check the bundle's signatures, expiry and sequence (no rollback), then deliver its images to the target, every byte
    checked against the manifest."""
    reporter = reporter or NullReporter()
    started = time.monotonic()
    state_path = options.state or default_state_path()
    bundle, trust_result = _open(options, KnownBundles(known_dir(state_path)), reporter)
    for line in trust_result.notes():
        reporter.note(line)
    if options.base is not None:
        base, _ = load_trusted_bundle(options.base, options.trusted, options.threshold, True)
        refuse_unexpected(base, options.allow_unexpected)  # the base is held to the same line as the bundle
        bundle = attach_base(bundle, base)
    manifest = bundle.manifest
    manifest_sha256 = hashlib.sha256(bundle.manifest_bytes).hexdigest()
    state = InstallState(state_path)
    check_rollback(manifest.name, manifest.sequence, manifest_sha256, state.get(manifest.name), options.allow_downgrade)
    state.check_writable()  # a state that cannot be written fails now, before anything is delivered
    cache = VerifiedCache(cache_path(state_path))
    with _sink(options, reporter, connect) as sink:
        result = _deliver(options, sink, bundle, trust_result, reporter, started, cache)
    state.record(
        manifest.name,
        manifest.sequence,
        manifest_sha256,
        format_time(datetime.now(timezone.utc)),
        signatures=trust_result,
        images=[RecordedImage(i.image_id, i.ref_names, i.platform) for i in result.images],
    )
    return result


def _open(options: InstallOptions, known: KnownBundles, reporter: Reporter) -> tuple[LoadedBundle, TrustResult]:
    """The bundle and its trust check: from its directory (and --from), or from one drive, each disc checked as it
    comes (every part there with its size, its signed files matching, nothing else on it)."""
    args = (options.trusted, options.threshold, options.allow_expired)
    if options.changer is None:
        return load_trusted_bundle(options.bundle, *args, options.search)
    if options.search:
        raise UsageError("--one-drive reads every volume from BUNDLE, the drive's directory", hint="leave out --from")
    if options.via == "registry":
        raise UsageError(
            "--one-drive needs --via load: an engine pulling from the loopback registry reads several blobs at once, "
            "in its own order",
            hint="leave out --via registry",
        )
    return discs.open_drive(
        options.bundle,
        options.changer,
        *args,
        known,
        reporter.note,
        check_each_disc=True,
        allow_unexpected=options.allow_unexpected,
    )


def _sink(options: InstallOptions, reporter: Reporter, connect: Callable[[], EngineClient]) -> Sink:
    """The install target named by --to (the Docker engine by default)."""
    target = parse_target(options.target)
    if target.kind == "registry":
        return RegistrySink(
            target, reporter.note, options.platform, options.replace, options.plain_http, options.chunk_size, options.keep_host
        )
    if target.kind in ("docker-archive", "oci-archive"):
        return ArchiveSink(target, reporter.note, options.platform, options.replace)
    if target.kind == "containerd":
        return ContainerdSink(target, reporter.note, options.platform, options.replace)
    return EngineSink(connect, reporter.note, options.platform, options.replace, options.via)


def _deliver(
    options: InstallOptions,
    sink: Sink,
    bundle: LoadedBundle,
    trust_result: TrustResult,
    reporter: Reporter,
    started: float,
    cache: VerifiedCache,
) -> InstallResult:
    """The same steps for every target: choose the images, refuse conflicts, plan and precheck, deliver."""
    images = sink.choose(bundle.manifest.images)
    done = sink.prepare(images)
    if done is not None:
        return InstallResult(options.bundle, trust_result, done, 0, time.monotonic() - started)
    plan = sink.plan(bundle, images, options.allow_unexpected)
    transfer = Transfer(reporter)
    reporter.start(sink.label, plan.total)
    delivered = sink.deliver(bundle, images, plan, transfer, cache)
    reporter.finish()
    return InstallResult(
        options.bundle,
        trust_result,
        delivered,
        transfer.bytes,
        time.monotonic() - started,
        transfer.parts_hashed,
        transfer.parts_cached,
        plan.layers_present,
        plan.layers_from_engine,
        plan.layers_rebuilt,
    )
