"""What every install target is: the ``Sink`` protocol, the install plan, and the precheck they share.

An install runs the same steps whatever the target: the sink chooses the images it takes (platform),
refuses conflicts before anything is read (:meth:`Sink.prepare`), says which blobs it holds or takes from
elsewhere (:meth:`Sink.plan`, built with :func:`make_plan`, which resolves every blob's origin once and
opens every part that will be read), then receives the blobs (:meth:`Sink.deliver`), reading them only
through :func:`~airgap._internal.format.origins.iter_origin` (every part hashed, every blob digest checked).
A new target is one module implementing this protocol and one line where install chooses its sink.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from airgap._internal.clients.distribution import parse_host
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.check import PartsFailed, check_part
from airgap._internal.format.origins import Origin, Rebuilt, iter_origin, parts_to_open, resolve
from airgap._internal.format.reader import LoadedBundle, open_part, refuse_unexpected
from airgap.errors import FormatError, UsageError
from airgap.model import oci
from airgap.model.manifest import Image, Platform
from airgap.model.reference import valid_domain, valid_path
from airgap.progress import Transfer

DOCKER_ARCHIVE = "docker-archive:"
OCI_ARCHIVE = "oci-archive:"
REGISTRY = "registry://"
CONTAINERD = "containerd://"


@dataclass(frozen=True)
class Target:
    """Where install puts the images: ``docker`` (the engine), ``registry``, ``containerd``, ``docker-archive``
    or ``oci-archive``."""

    kind: str
    value: str = ""  # registry: HOST[:PORT][/PREFIX]; containerd: [SOCKET][?namespace=NS]; archives: the path

    def __str__(self) -> str:
        if self.kind == "docker":
            return "the Docker engine"
        if self.kind == "containerd":
            return f"{CONTAINERD}{self.value}"
        return f"{REGISTRY}{self.value}" if self.kind == "registry" else f"{self.kind}:{self.value}"


REGISTRY_HINT = (
    "write it as registry://HOST[:PORT][/PREFIX], e.g. registry://registry.site:5000/mirror (the PREFIX in lower case)"
)


def parse_target(text: str | None) -> Target:
    """``--to``: nothing or ``docker`` for the engine, ``registry://HOST[:PORT][/PREFIX]``,
    ``containerd://[SOCKET][?namespace=NS]``, ``docker-archive:PATH`` or ``oci-archive:PATH``."""
    if not text or text in ("docker", "docker-daemon"):
        return Target("docker")
    for kind in ("docker-archive", "oci-archive"):
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1 :]
            if not path:
                raise UsageError(f"--to {text!r} names no file")
            return Target(kind, path)
    if text.startswith(REGISTRY):
        rest = text[len(REGISTRY) :].rstrip("/")
        host, _, prefix = rest.partition("/")
        try:
            parse_host(host, "the host")
        except UsageError as e:
            raise UsageError(
                f"--to {text[:200]!r} is not a registry address: {e.message.removeprefix('the host: ')}",
                hint=e.hint if valid_domain(host) else REGISTRY_HINT,  # a port out of range has its own
            ) from e
        if prefix and not valid_path(prefix):
            raise UsageError(
                f"--to {text[:200]!r} is not a registry address: {prefix[:120]!r} is not a repository path", hint=REGISTRY_HINT
            )
        return Target("registry", rest)
    if text.startswith(CONTAINERD):
        return Target("containerd", text[len(CONTAINERD) :])  # its sink reads the socket and the namespace
    raise UsageError(
        f"cannot read install target {text!r}",
        hint="use registry://HOST[:PORT][/PREFIX], containerd://[SOCKET][?namespace=NS], docker-archive:PATH "
        "or oci-archive:PATH (default: the Docker engine)",
    )


@dataclass(frozen=True)
class InstalledImage:
    """One image at the target, and what happened to it."""

    image_id: str
    ref_names: tuple[str, ...]
    platform: str
    action: str  # "loaded", "already present", "pushed", "written", "imported" (containerd)
    location: str = ""  # registry reference, archive path or containerd address (not for the engine)
    manifest_digest: str = ""  # registry sink
    blobs_sent: int = 0  # registry sink: uploaded now ...
    blobs_present: int = 0  # ... or already in the registry, not sent again


@dataclass(frozen=True)
class Plan:
    """Where each blob of the chosen images comes from, and how many bytes the delivery moves."""

    origins: Mapping[str, Origin]  # every config and layer digest of the chosen images
    total: int  # bytes read for the delivery (from the bundle, its base, or the engine's export)
    layers_present: int = 0  # layers the target holds: not read at all
    layers_from_engine: int = 0  # a delta's base layers exported from the engine's own copy

    @property
    def layers_rebuilt(self) -> int:
        """Layers rebuilt from a recipe (over the base bundle or the engine's copy of the old layer)."""
        return sum(1 for origin in self.origins.values() if isinstance(origin, Rebuilt))


def make_plan(
    bundle: LoadedBundle,
    images: list[Image],
    allow_unexpected: bool,
    held: frozenset[str] = frozenset(),
    exported: Mapping[str, str] | None = None,
    rebuilt_over_engine: Mapping[str, str] | None = None,
    also: Sequence[str] = (),
) -> dict[str, Origin]:
    """Resolve the origin of every config and layer of ``images`` and of the blobs ``also`` names (kept manifests),
    and refuse, before anything is sent, unlisted files and missing, linked or truncated parts among those that
    will be read, then changed signed side files."""
    refuse_unexpected(bundle, allow_unexpected)
    digests = dict.fromkeys([*(d.digest for image in images for d in (image.config, *image.layers)), *also])
    origins = {d: resolve(bundle, d, held, exported, rebuilt_over_engine) for d in digests}
    for origin in origins.values():
        for owner, part in parts_to_open(origin):
            if owner.at_hand(part):  # read from one drive, a disc not in it is checked when it comes (discs.check_disc)
                open_part(owner, part).close()
    # the signed side files (the POSIX installer, its plans, volume listings, wheels) are small: a bundle with
    # one of them changed is not the bundle that was signed, whichever installer reads it
    bad = [r for r in (check_part(bundle, f) for f in bundle.manifest.files if bundle.at_hand(f)) if not r.ok]
    if bad:
        raise PartsFailed(bad)
    return origins


def kept_manifest(image: Image, data: bytes) -> bytes:
    """The manifest kept for ``image`` (its source registry's, read from the bundle), refused unless it describes
    the image: its config and its layers, in order."""
    try:
        body = json.loads(data)
        config = body["config"]["digest"]
        layers = [layer["digest"] for layer in body["layers"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"the manifest kept for image {image.image_id[:19]} is not an image manifest") from e
    if config != image.config.digest or layers != [layer.digest for layer in image.layers]:
        raise FormatError(
            f"the manifest kept for image {image.image_id[:19]} ({oci.digest_of(data)[:19]}) does not describe it",
            hint="the bundle was built wrongly or edited before it was signed: do not use it",
        )
    return data


def kept_digests(images: list[Image], types: Collection[str]) -> list[str]:
    """The kept manifests of ``images`` whose media type is among ``types`` (blobs a plan adds with ``also``)."""
    return [i.manifest.digest for i in images if i.manifest is not None and i.manifest.media_type in types]


def read_kept(
    images: list[Image], origins: Mapping[str, Origin], types: Collection[str], cache: VerifiedCache, transfer: Transfer
) -> dict[str, tuple[bytes, str]]:
    """Image ID -> (bytes, media type) of each kept manifest of a type in ``types``, read through its checked origin
    (counted as moved) and checked to describe its image."""
    kept = {}
    for image in images:
        if image.manifest is None or image.manifest.media_type not in types or image.image_id in kept:
            continue
        origin = origins[image.manifest.digest]
        data = b"".join(iter_origin(origin, cache=cache, transfer=transfer))
        transfer.moved(origin.size)
        kept[image.image_id] = (kept_manifest(image, data), image.manifest.media_type)
    return kept


def plan_total(origins: Mapping[str, Origin]) -> int:
    """The bytes a delivery reads for these origins."""
    return sum(origin.size for origin in origins.values())


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


def blobs_of(images: list[Image]) -> list[tuple[str, int]]:
    """Each distinct config and layer of ``images`` (digest, size), in first-use order."""
    seen: dict[str, int] = {}
    for image in images:
        for desc in (image.config, *image.layers):
            seen.setdefault(desc.digest, desc.size)
    return list(seen.items())


class Sink(Protocol):
    """An install target.  Used as a context manager: connections live from ``__enter__`` to ``__exit__``.
    Remarks for the user (steps, notes) go to the ``note`` callable each sink is made with."""

    label: str  # names the target in progress and messages

    def __enter__(self) -> Sink: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def choose(self, images: tuple[Image, ...]) -> list[Image]:
        """The bundle's images this target takes (its platform, or --platform)."""
        ...

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Refuse conflicts (a tag naming another image) before anything is read; the images as installed
        when the target has them all already (nothing to do), else None."""
        ...

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        """Where each blob comes from (see :func:`make_plan`), with the space the delivery needs checked."""
        ...

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        """Send the images, reading blobs as the plan says; check the target holds them afterwards."""
        ...
