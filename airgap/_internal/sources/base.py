"""What an image source is, to pack.

A source is named on the command line and parsed into a :class:`Source`: one subclass per kind, each in a
module of its own (``engine.py``, ``archive.py``, ``registry.py``) that also says how the kind opens (its
:class:`SourceKind`), listed once in ``kinds.py``.  For one pack the named sources of each kind are opened
together by that kind's :class:`Opener`, which checks each as it is named and yields :class:`ImageSource`
objects.  An image source says how many bytes it will stream, then streams its images' blobs into the
bundle writer (a :class:`BlobStore`) and returns the images as :class:`~airgap.model.manifest.Image`
records, which check their names, platforms and digests themselves.
"""

from __future__ import annotations

import platform as host_platform
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from airgap._internal.util.tarstream import EntryReader
from airgap.model.manifest import Image, Platform, SourceIndex
from airgap.progress import Reporter

if TYPE_CHECKING:
    from airgap._internal.clients.docker import EngineClient


@dataclass(frozen=True)
class StoredBlob:
    """A blob handed to a :class:`BlobStore`: its digest, size and first bytes (which tell a layer's
    compression)."""

    digest: str
    size: int
    head: bytes


class BlobStore(Protocol):
    """Where sources put blobs: the bundle writer, which splits, compresses and stages them as parts."""

    def store_stream(self, size: int, reader: EntryReader, name: str, *, guess: bool = True) -> StoredBlob:
        """Store the ``size`` bytes ``reader`` yields.  ``name`` names the member the same way in every run of
        the same pack (a resumed pack finds its staged parts by it).  ``guess=False``: the source knows its
        blobs' digests before reading them and leaves out a delta's base layers itself, so the store must not
        guess at base layers from a member's size and first MiB."""
        ...

    def store_bytes(self, data: bytes) -> StoredBlob:
        """Store a small blob held in memory (a config, a small layer)."""
        ...

    def read_small(self, digest: str, limit: int) -> bytes:
        """A stored blob's bytes again (an archive's index or config met before it was known to be one);
        larger than ``limit``: a FormatError."""
        ...


class ImageSource(Protocol):
    """Images pack reads from one place, opened for one pack."""

    @property
    def name(self) -> str:
        """What messages call this source (as named on the command line)."""
        ...

    def estimate(self) -> int:
        """The bytes :meth:`stream` will read: pack checks free space and sizes its progress by it.  A source
        that must ask a server what it holds (a registry) asks here, once."""
        ...

    def check_room(self) -> None:
        """Raise DiskSpaceError before any work if the source itself needs room it lacks (the Docker engine
        copies the images it exports into its data root first)."""
        ...

    def stream(self, store: BlobStore, left_out: frozenset[str]) -> list[Image]:
        """Stream every image's config and layers into ``store`` and return the images, checked.
        ``left_out``: layer digests a delta's base bundle holds; a source that knows its layers' digests
        before reading them does not read these at all."""
        ...

    def indexes(self) -> list[SourceIndex]:
        """After :meth:`stream`: the source's indexes the bundle keeps byte for byte (a registry's, when every
        image it lists was packed); none for sources that rebuild their manifests."""
        ...


@dataclass(frozen=True)
class OpenContext:
    """What pack lends the sources it opens."""

    stack: ExitStack  # connections a source opens (the engine, registry clients) are closed when the pack ends
    connect: Callable[[], EngineClient]  # connects to the Docker engine (DOCKER_HOST)
    reporter: Reporter  # for notes: what is exported or pulled, the platforms a registry has besides
    platform: str | None = None  # --platform as given (PackOptions checked it): None, "all" or "os/arch[,...]"
    plain_http: bool = False  # registries without TLS (loopback registries always are)


@dataclass(frozen=True)
class Source(ABC):
    """An image source as named on the command line, parsed: one subclass per kind."""

    kind: ClassVar[str]  # the kind's word in the resume key: "docker", "docker-archive", "oci-archive", "registry"
    prefixes: ClassVar[tuple[str, ...]]  # what a name of this kind starts with ("" claims a bare name)

    @classmethod
    @abstractmethod
    def parse(cls, prefix: str, rest: str) -> Source:
        """The source named ``prefix + rest``, ``prefix`` one of :attr:`prefixes`; a malformed name is a
        UsageError."""

    @abstractmethod
    def resume_inputs(self) -> list[str | None]:
        """What the resume key records of this source: ``[kind, reference or path, name]``."""

    @abstractmethod
    def __str__(self) -> str:
        """The source as messages name it."""


S_contra = TypeVar("S_contra", bound=Source, contravariant=True)


class Opener(Protocol[S_contra]):
    """Opens the named sources of one kind for one pack."""

    def add(self, source: S_contra) -> None:
        """Take one more source of this kind, checked now and cheaply (the engine has the image, the file is
        there): pack adds the sources in the order they are named, so the first bad one is the one reported."""
        ...

    def sources(self) -> list[ImageSource]:
        """The image sources to stream, once every source is added."""
        ...


@dataclass(frozen=True)
class SourceKind:
    """One kind of image source: how it is named, and what opens its sources for one pack (made only when
    the pack names one)."""

    source: type[Source]
    opener: Callable[[OpenContext], Opener[Any]]


_MACHINE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def host_default() -> Platform:
    """This machine's platform: what a registry index is narrowed to when --platform is not given."""
    machine = host_platform.machine().lower()
    return Platform("linux", _MACHINE.get(machine, machine), "v7" if machine == "armv7l" else None)


def parse_platforms(text: str | None) -> list[Platform] | None:
    """--platform: None (the default), "all", or a comma-separated list of os/arch[/variant]."""
    if text is None or text.strip() == "all":
        return None
    return [Platform.parse(item) for item in text.split(",")]
