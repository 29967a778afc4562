"""Image source: images in the Docker engine (DOCKER_HOST), named as ``docker images`` shows them.

Every engine image of one pack comes out of one export call (``GET /images/get``, what ``docker save``
does): the engine writes a docker-save archive, read like any other (``archive.py``).  Images without
layers (``FROM scratch`` and metadata only) come out of a call of their own: dockerd's export refuses
them ("empty export"), Podman's does not, so a refusal is told apart from an engine that went away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from airgap._internal.sources.archive import images_from_archive, read_archive
from airgap._internal.sources.base import BlobStore, ImageSource, OpenContext, Source, SourceKind
from airgap._internal.util import fsutil
from airgap._internal.util.pipeline import PrefetchReader
from airgap.errors import DockerError, UsageError
from airgap.model.manifest import Image, SourceIndex

if TYPE_CHECKING:
    from airgap.progress import Reporter

EXPORT_SLACK = 64 << 20  # room beyond the images' size the engine's temporary export copy may take


@dataclass(frozen=True)
class EngineImage(Source):
    """An image in the engine: a bare name, or ``docker-daemon:NAME`` (as skopeo writes it)."""

    kind: ClassVar[str] = "docker"
    prefixes: ClassVar[tuple[str, ...]] = ("", "docker-daemon:")
    ref: str

    @classmethod
    def parse(cls, prefix: str, rest: str) -> EngineImage:
        """Any name no other kind claims; one with a ``://`` is no image name."""
        if not rest or "://" in rest:
            raise UsageError(
                f"cannot read image source {rest!r}",
                hint="name an image in the engine, docker-archive:PATH, oci-archive:PATH or oci://HOST/REPO:TAG",
            )
        return cls(rest)

    def resume_inputs(self) -> list[str | None]:
        """``["docker", NAME, None]``."""
        return [self.kind, self.ref, None]

    def __str__(self) -> str:
        """The image's name."""
        return self.ref


class EngineExport:
    """The engine images of one pack, exported in one call; both their opener and their image source."""

    def __init__(self, ctx: OpenContext) -> None:
        """Connect to the engine: before any source is checked, as the first check is whether it answers."""
        self._engine = ctx.connect()
        ctx.stack.callback(self._engine.close)
        self._reporter: Reporter = ctx.reporter
        self._refs: list[str] = []
        self._layerless: list[str] = []  # images without layers: exported on their own
        self._size = 0

    def add(self, source: EngineImage) -> None:
        """Check that the engine has the image; its size there counts towards the estimate."""
        found = self._engine.inspect(source.ref)
        if found is None:
            raise UsageError(
                f"image {source.ref} is not in the Docker engine",
                hint="check 'docker images', or name an archive with docker-archive:PATH",
            )
        rootfs = found.get("RootFS")  # {"Type": "layers"} alone for an image without layers
        (self._layerless if isinstance(rootfs, dict) and not rootfs.get("Layers") else self._refs).append(source.ref)
        self._size += int(found.get("Size") or 0)

    def sources(self) -> list[ImageSource]:
        """This export, if an engine image was named."""
        return [self] if self._refs or self._layerless else []

    @property
    def name(self) -> str:
        """The images' names."""
        return ", ".join(self._refs + self._layerless)

    def estimate(self) -> int:
        """The images' sizes as the engine reports them."""
        return self._size

    def check_room(self) -> None:
        """The engine copies the images into a temporary directory of its data root before it streams them."""
        root = self._engine.root_dir()
        if root is not None:
            fsutil.require_space(root, self._size + EXPORT_SLACK, "the Docker engine's export (a temporary copy of the image)")

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Read the export into ``store``.  ``left_out`` is not known before a layer is read: the store's
        guesses leave out a delta's base layers."""
        self._reporter.note(f"exporting {self.name} from the Docker engine")
        images = []
        if self._layerless:  # first: they are small, and an engine that refuses them fails the pack before any work
            try:
                images += self._export(self._layerless, "Docker engine export of images without layers", store)
            except DockerError as e:
                self._engine.platform()  # raises DockerError itself if the engine no longer answers
                names = ", ".join(self._layerless)
                raise DockerError(
                    f"the Docker engine does not export {names}: an image without layers (dockerd's export refuses "
                    f"them: {e.message.removeprefix('Docker engine: ')[:160]})",
                    hint="push it to a registry (docker push) and pack it from there: oci://HOST/REPO:TAG",
                ) from e
        if self._refs:
            images += self._export(self._refs, "Docker engine export", store)
        return images

    def indexes(self) -> list[SourceIndex]:
        """None: the engine's export has no registry manifests to keep."""
        return []

    def _export(self, refs: list[str], label: str, store: BlobStore) -> list[Image]:
        """One export call's images, read into ``store``."""
        with self._engine.export(refs) as stream, PrefetchReader(stream) as ahead:
            contents = read_archive(ahead, label, store)
            return images_from_archive(contents, store)


KIND = SourceKind(EngineImage, EngineExport)
