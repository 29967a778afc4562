"""An OCI registry as install target: ``install --to registry://HOST[:PORT][/PREFIX]``.

Every blob is read through its checked origin; the registry checks the digest again when each upload
ends.  Tags are checked for every repository before any blob is sent, so a conflict changes nothing.
A blob one repository of the push already holds is mounted into the next (a refused mount falls back to an
upload); manifests go up by digest before a tag names them, so a tag never moves to a manifest the registry
stored under another digest.  Progress counts every blob once, against the plan's total of distinct blobs.

Each name goes to ``PREFIX/<its repository path>:<tag>``, the path as Docker normalizes the name (``busybox:1``
is ``library/busybox`` on Docker Hub, which a registry mirror of docker.io serves); the name's registry host
is left out, or kept as the first component below the prefix with --keep-host.  Two names that would land
on one repository and tag while naming different images are refused before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from types import TracebackType

from airgap._internal.clients.distribution import DEFAULT_CHUNK, Registry, parse_host
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.origins import BASE_HINT, Held, Origin, iter_origin
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.base import (
    InstalledImage,
    Plan,
    Target,
    blobs_of,
    kept_manifest,
    make_plan,
    plan_total,
    select_images,
)
from airgap.errors import FormatError, UsageError
from airgap.model import oci
from airgap.model.manifest import Descriptor, Image, Platform, SourceIndex, image_name
from airgap.model.mediatypes import INDEX_TYPES
from airgap.model.reference import host_as_component, valid_path
from airgap.progress import Transfer


def split_ref(ref: str) -> tuple[str, str]:
    """A bundle's image name -> (its repository path without the registry host, its tag), as Docker normalizes
    it: ``reg:5000/team/app:1`` -> ``team/app``, ``busybox:1`` -> ``library/busybox`` (Docker Hub's path)."""
    name = image_name(ref)
    return name.path, str(name.tag)


def repository_for(ref: str, prefix: str, keep_host: bool) -> tuple[str, str]:
    """Where a name goes below ``PREFIX``: (repository, tag).  With ``keep_host`` the name's registry host is the first
    component below the prefix (``reg1:5000/team/app:1`` -> ``PREFIX/reg1_5000/team/app:1``)."""
    name = image_name(ref)
    parts = [prefix] if prefix else []
    if keep_host:
        parts.append(host_as_component(name.host))
    return "/".join([*parts, name.path]), str(name.tag)


class RegistrySink:
    """Pushes every image of the bundle (or those of --platform) under its names, below the target's prefix.

    A delta without --base leaves its base layers to the registry: each is looked up when it is needed,
    and one the registry lacks stops the push before its manifest is written."""

    def __init__(
        self,
        target: Target,
        note: Callable[[str], None],
        platform: str | None = None,
        replace: bool = False,
        plain_http: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        keep_host: bool = False,
    ) -> None:
        self.label = str(target)
        host, _, self._prefix = target.value.partition("/")
        self._host = parse_host(host, f"--to {self.label}")
        if self._prefix and not valid_path(self._prefix):
            raise UsageError(
                f"--to {self.label}: {self._prefix[:120]!r} is not a repository path",
                hint="lower-case letters and digits, joined by '.', '_', '-' and '/'",
            )
        self._keep_host = keep_host
        self._platform = platform
        self._replace = replace
        self._plain_http = plain_http
        self._chunk = chunk_size
        self._note = note

    def __enter__(self) -> RegistrySink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def choose(self, images: tuple[Image, ...]) -> list[Image]:
        if self._platform is None:
            return list(images)
        return select_images(images, Platform.parse(self._platform), True, self._note)

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Refuse two names that would land on one repository and tag below the prefix while naming different images
        (``reg1:5000/team/app:1`` and ``reg2:5000/team/app:1`` both go to ``PREFIX/team/app:1`` unless --keep-host).
        Tags are checked against the registry at the start of the delivery."""
        sources: dict[tuple[str, str], dict[str, set[str]]] = {}  # target -> source name -> image IDs it names
        for image in images:
            for ref in image.ref_names:
                target = repository_for(ref, self._prefix, self._keep_host)
                sources.setdefault(target, {}).setdefault(image_name(ref).key, set()).add(image.image_id)
        for (repo, tag), by_name in sources.items():
            if len({frozenset(ids) for ids in by_name.values()}) > 1:
                first, second = sorted(by_name)[:2]
                raise UsageError(
                    f"{first} and {second} are different images but would both be pushed as {self._host}/{repo}:{tag}",
                    hint="pass --keep-host to keep each registry host in the path below the prefix "
                    f"({self._host}/{repository_for(first, self._prefix, True)[0]}:{tag}), or install them to different prefixes",
                )
        return None

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        # a delta's layers without --base: the registry may hold them already (checked blob by blob)
        external = frozenset(d.digest for d in bundle.manifest.external_layers()) if bundle.base is None else frozenset()
        origins = make_plan(bundle, images, allow_unexpected, held=external, also=self._kept_digests(bundle, images))
        return Plan(origins, plan_total(origins))

    def _kept_digests(self, bundle: LoadedBundle, images: list[Image]) -> list[str]:
        """The kept manifests of these images, and the kept indexes (with their extras) that may go up with them."""
        kept = [image.manifest.digest for image in images if image.manifest is not None]
        for index in self._indexes(bundle, images):
            kept += [d.digest for d in (index.index, *index.extras)]
        return kept

    def _indexes(self, bundle: LoadedBundle, images: list[Image]) -> list[SourceIndex]:
        """The kept indexes that may go up with these images: those named like one of them (or, untagged, with none)."""
        targets = {repository_for(ref, self._prefix, self._keep_host) for image in images for ref in image.ref_names}
        untagged = any(not image.ref_names for image in images)
        return [
            index
            for index in bundle.manifest.indexes
            if (untagged and not index.ref_names)
            or any(repository_for(ref, self._prefix, self._keep_host) in targets for ref in index.ref_names)
        ]

    def _names(self, bundle: LoadedBundle, images: list[Image]) -> dict[tuple[str, str | None], list[Image]]:
        """(repository, tag) -> images under that name, each once; untagged images go to PREFIX/<bundle name> by digest."""
        names: dict[tuple[str, str | None], dict[str, Image]] = {}
        for image in images:
            if not image.ref_names:
                repo = f"{self._prefix}/{bundle.manifest.name}".strip("/").lower()
                names.setdefault((repo, None), {})[image.image_id] = image
            for ref in image.ref_names:
                repo, tag = repository_for(ref, self._prefix, self._keep_host)
                names.setdefault((repo, tag), {})[image.image_id] = image
        return {target: list(group.values()) for target, group in names.items()}

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        kept = KeptBytes(plan, cache, transfer, self._kept_digests(bundle, images))
        candidates = self._indexes(bundle, images)
        plans = []
        for (repo, tag), group in self._names(bundle, images).items():
            manifests = [(image, *manifest_of(image, kept)) for image in group]
            index = self._kept_index(repo, tag, manifests, candidates, kept)
            extras: tuple[tuple[Descriptor, bool], ...] = ()
            if index is not None:
                top, top_type, extras = index
            elif len(group) == 1:
                top, top_type = manifests[0][1], manifests[0][2]
            else:
                top, top_type = oci.index_manifest([(data, mt, image.platform) for image, data, mt in manifests])
            plans.append((repo, tag, group, manifests, top, top_type, extras))

        delivered = []
        with Registry(self._host, self._plain_http) as registry:
            for repo, tag, _, _, top, _, _ in plans:  # refuse before sending anything
                if tag is not None:
                    registry.check_tag(repo, tag, oci.digest_of(top), self._replace)
            done: set[tuple[str, str]] = set()
            homes: dict[str, str] = {}  # blob -> a repository of this registry that has it
            counted: set[str] = set()  # blobs the progress has counted: once, however many repositories take them
            for repo, tag, group, manifests, top, top_type, extras in plans:
                sent = present = 0
                for digest, size in blobs_of(group):
                    if (repo, digest) in done:
                        continue
                    origin = plan.origins[digest]
                    home = homes.get(digest)
                    if registry.has_blob(repo, digest, push=True) or (
                        home is not None and registry.mount_blob(repo, digest, home)
                    ):
                        present += 1
                        if digest not in counted:
                            transfer.moved(origin.size)
                    else:
                        if isinstance(origin, Held):
                            raise UsageError(
                                f"layer {digest[:19]} is not in this delta bundle, and {self._host} does not hold it",
                                hint=BASE_HINT,
                            )
                        progress = None if digest in counted else transfer.moved
                        registry.upload_blob(repo, digest, size, _opener(origin, cache, transfer), self._chunk, progress)
                        sent += 1
                    counted.add(digest)
                    done.add((repo, digest))
                    homes.setdefault(digest, repo)
                for extra, is_manifest in extras:  # what a kept index lists besides images: blobs, then their manifests
                    if is_manifest:
                        registry.put_manifest(repo, extra.digest, kept.read(extra.digest), extra.media_type)
                    elif (repo, extra.digest) not in done:
                        if not registry.has_blob(repo, extra.digest, push=True):
                            opener = _opener(plan.origins[extra.digest], cache, transfer)
                            registry.upload_blob(repo, extra.digest, extra.size, opener, self._chunk, None)
                        kept.counted(extra.digest)
                    done.add((repo, extra.digest))
                for _image, data, mt in manifests:
                    registry.put_manifest(repo, oci.digest_of(data), data, mt)
                digest = oci.digest_of(top)
                if top_type in INDEX_TYPES:  # the index by its digest first: the tag below names only what was stored as sent
                    registry.put_manifest(repo, digest, top, top_type)
                if tag is not None:
                    registry.put_manifest(repo, tag, top, top_type)
                location = f"{self._host}/{repo}:{tag}" if tag else f"{self._host}/{repo}@{digest}"
                for image in group:
                    delivered.append(
                        InstalledImage(
                            image.image_id, image.ref_names, str(image.platform), "pushed", location, digest, sent, present
                        )
                    )
                self._note(f"pushed {location}  {digest}  ({sent} blob(s) sent, {present} already there)")
        kept.count_unread()
        return tuple(delivered)

    def _kept_index(
        self,
        repo: str,
        tag: str | None,
        manifests: list[tuple[Image, bytes, str]],
        candidates: list[SourceIndex],
        kept: KeptBytes,
    ) -> tuple[bytes, str, tuple[tuple[Descriptor, bool], ...]] | None:
        """The kept index to push as REPO:TAG's top: one named for it that lists exactly these images' manifests
        and, besides them, only its extras.  (bytes, media type, each extra with whether it is a manifest)."""
        pushed = {oci.digest_of(data) for _, data, _ in manifests}
        for index in candidates:
            named = any(repository_for(ref, self._prefix, self._keep_host) == (repo, tag) for ref in index.ref_names)
            if not (named or (tag is None and not index.ref_names)):
                continue
            data = kept.read(index.index.digest)
            listed = index_entries(data, index.index.digest)
            extra_digests = {x.digest for x in index.extras}
            platforms = {oci.digest_of(data): str(image.platform) for image, data, _ in manifests}
            if (
                set(listed) - extra_digests == pushed
                and set(listed) <= pushed | extra_digests
                # each image listed for its own platform; anything else for none (os "unknown"), which no
                # platform's pull picks: an entry without a platform would match every one
                and all(
                    platform == platforms[digest] if digest in pushed else platform.startswith("unknown/")
                    for digest, platform in listed.items()
                )
            ):
                return data, index.index.media_type, tuple((x, x.digest in listed) for x in index.extras)
            self._note(
                f"note: the index kept for {', '.join(index.ref_names) or 'this bundle'} ({index.index.digest[:19]}) lists "
                f"other manifests than those pushed to {repo}{':' + tag if tag else ''}: pushing a new index"
            )
        return None


class KeptBytes:
    """The bytes of kept manifests and indexes (at most 4 MiB each), read from the bundle once each (checked like
    every blob) and counted in the progress as read; the blobs an extra manifest names stream like layers
    (:meth:`counted`); :meth:`count_unread` counts what the push did not need."""

    def __init__(self, plan: Plan, cache: VerifiedCache, transfer: Transfer, planned: list[str]) -> None:
        """``planned``: the kept blobs the plan holds for a possible push."""
        self._plan = plan
        self._cache = cache
        self._transfer = transfer
        self._read: dict[str, bytes] = {}
        self._planned = set(planned)

    def read(self, digest: str) -> bytes:
        """The blob's checked bytes."""
        if digest not in self._read:
            origin = self._plan.origins[digest]
            self._read[digest] = b"".join(iter_origin(origin, cache=self._cache, transfer=self._transfer))
            self._transfer.moved(origin.size)
        return self._read[digest]

    def counted(self, digest: str) -> None:
        """A planned kept blob sent (or found there) without being read here: counted as moved now."""
        if digest not in self._read:
            self._read[digest] = b""
            self._transfer.moved(self._plan.origins[digest].size)

    def count_unread(self) -> None:
        """Count the planned kept blobs no push read, so the progress ends at its total."""
        for digest in self._planned - set(self._read):
            self._transfer.moved(self._plan.origins[digest].size)


def manifest_of(image: Image, kept: KeptBytes) -> tuple[bytes, str]:
    """The manifest a registry target gets for ``image``: the one its source registry served, kept byte for byte
    (checked by :func:`kept_manifest` to describe the image), else one built from the bundle's descriptors
    (:func:`oci.image_manifest`, the same bytes every time)."""
    if image.manifest is None:
        return oci.image_manifest(image)
    return kept_manifest(image, kept.read(image.manifest.digest)), image.manifest.media_type


def index_entries(data: bytes, digest: str) -> dict[str, str]:
    """The manifest digests a kept index lists, each with its platform as os/arch[/variant] ("" when it has none)."""
    try:
        listed = {}
        for entry in json.loads(data)["manifests"]:
            p = entry.get("platform")
            words = [p.get("os"), p.get("architecture"), p.get("variant")] if isinstance(p, dict) else []
            listed[str(entry["digest"])] = "/".join(str(w) for w in words if w)
        return listed
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"the index kept as {digest[:19]} is not an image index") from e


def _opener(origin: Origin, cache: VerifiedCache, transfer: Transfer) -> Callable[[], Iterator[bytes]]:
    """Opens a blob's checked bytes from the start, as often as an upload that resumes or starts over needs."""

    def open_blob() -> Iterator[bytes]:
        return iter_origin(origin, cache=cache, transfer=transfer)

    return open_blob
