"""Docker image references: the one grammar every image name in airgap is read with.

This is the grammar of Docker's ``distribution/reference`` package, and its normalization, so that a name
means here what it means to docker, containerd, the kubelet and podman::

    reference  := name [":" tag] ["@" digest]
    name       := [domain "/"] path
    domain     := host [":" port]      a host is a DNS-like name (letters of either case, digits, "-"
                                       inside, joined by "."), an IPv4 address, or an IPv6 address in
                                       brackets ("[::1]", no zone); a port is digits
    path       := component ["/" component]*    lower case only
    component  := [a-z0-9]+ [separator [a-z0-9]+]*    separator: ".", "_", "__", or "-" repeated
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := sha256:<64 hex> | sha384:<96 hex> | sha512:<128 hex>   (lower-case hex)

Normalization (``ParseNormalizedNamed``): the first element of a name is a registry host only when it holds
a "." or a ":", is ``localhost``, or has an upper-case letter; otherwise the image is on Docker Hub,
``docker.io``, and a one-element path there is an official image, under ``library/``.
``index.docker.io`` is ``docker.io``; the registry's API answers at ``registry-1.docker.io``.  A bare
64-digit hexadecimal string is an image ID, never a name.  The name with its host is at most 255
characters (as Docker 20.10 and containerd 1.6 count it).  Where Docker's reading is ambiguous, it is refused
or spelled in full: a first element that looks like a host but is none (``a.b_c/app``, which Docker reads
as a name without registry) is refused; a Docker Hub path whose first element holds a dot keeps
``docker.io/`` in its familiar spelling (``docker.io/a.b/c``, which would otherwise read as registry ``a.b``).

Two spellings of one reference: :meth:`Reference.familiar` is what ``docker images`` shows
(``busybox:1.36``, ``team/app:1``, ``reg:5000/app:1``); :meth:`Reference.normalized` is what containerd,
the kubelet and podman store and look up (``docker.io/library/busybox:1.36``; a name with neither tag nor
digest gets ``:latest``, one with both keeps only the digest, as ``ParseDockerRef`` does).  Host names
are compared without regard to case (:attr:`Reference.key`); their spelling is kept, as Docker keeps it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TAG",
    "DOCKER_HUB",
    "DOCKER_HUB_AUTH_KEY",
    "DOCKER_HUB_ENDPOINT",
    "InvalidReference",
    "Reference",
]

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = "index.docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"  # where Docker Hub's registry API answers
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"  # where `docker login` keeps Docker Hub's credentials
DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, LEGACY_DOCKER_HUB, DOCKER_HUB_ENDPOINT})
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME = 255  # host "/" path
_MAX_TEXT = 1024  # longer text is refused before any pattern runs: a name, a tag and a digest fit well below

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST_SYNTAX = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(rf"((?:{_DOMAIN}/)?{_PATH})(?::({_TAG}))?(?:@({_DIGEST_SYNTAX}))?", re.ASCII)
_NAME_RE = re.compile(rf"(?:({_DOMAIN})/)?({_PATH})", re.ASCII)
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_PATH_RE = re.compile(_PATH, re.ASCII)
_COMPONENT_RE = re.compile(_COMPONENT, re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}  # the algorithms Docker registers


class InvalidReference(ValueError):
    """Text that is not a Docker reference; the message says why, in Docker's words where it has them."""


@dataclass(frozen=True)
class Reference:
    """A Docker reference, normalized: ``host`` is the registry (``docker.io`` for Docker Hub, otherwise as
    written, port included), ``path`` the repository on it (``library/busybox``), ``tag`` and ``digest``
    as given (either may be None).  Built only from valid parts: every constructor checks them."""

    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        """Refuse parts outside the grammar, whoever builds the reference."""
        if not isinstance(self.host, str) or not _DOMAIN_RE.fullmatch(self.host):
            raise InvalidReference(f"{str(self.host)[:80]!r} is not a registry host")
        if not isinstance(self.path, str) or not _PATH_RE.fullmatch(self.path):
            raise InvalidReference(f"{str(self.path)[:80]!r} is not a repository path (lower-case components)")
        if self.host == LEGACY_DOCKER_HUB or (self.host == DOCKER_HUB and "/" not in self.path):
            raise InvalidReference(f"{self}: not normalized (Reference.of_repository normalizes a registry's names)")
        if len(self.name) > MAX_NAME:
            raise InvalidReference(f"repository name must not be more than {MAX_NAME} characters")
        if self.tag is not None and (not isinstance(self.tag, str) or not _TAG_RE.fullmatch(self.tag)):
            raise InvalidReference(f"{str(self.tag)[:140]!r} is not a valid tag")
        if self.digest is not None:
            _check_digest(self.digest)

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Reference:
        """``text`` as Docker reads a name the user typed (``ParseNormalizedNamed``): familiar or full,
        with an optional tag and digest.  InvalidReference when it is not one."""
        if not isinstance(text, str) or not text:
            raise InvalidReference("repository name must have at least one component")
        if len(text) > _MAX_TEXT or not text.isascii():
            raise InvalidReference("invalid reference format")
        if _IDENTIFIER_RE.fullmatch(text):
            raise InvalidReference(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
        domain, remainder = _split_docker_domain(text)
        remote = remainder.partition(":")[0]
        if remote.lower() != remote:
            raise InvalidReference(f"repository name ({remote[:200]}) must be lowercase")
        match = _REFERENCE_RE.fullmatch(f"{domain}/{remainder}")
        if match is None:
            raise InvalidReference("invalid reference format")
        name, tag, digest = match.group(1), match.group(2), match.group(3)
        named = _NAME_RE.fullmatch(name)
        if named is None or named.group(1) != domain:
            # Docker reads "a.b_c/app" as a name with no registry at all (its first element looks like a host but
            # is none); no registry serves such a name, and containerd and podman read it differently: refused
            raise InvalidReference(f"{domain[:120]!r} looks like a registry host but is not one")
        return cls(domain, named.group(2), tag, digest)

    @classmethod
    def of_repository(cls, host: str, path: str, tag: str | None = None, digest: str | None = None) -> Reference:
        """The reference to ``path`` on registry ``host`` as a registry names it (``docker.io``/``index.docker.io``
        with a one-element path is an official image: ``library/`` is added)."""
        if host == LEGACY_DOCKER_HUB:
            host = DOCKER_HUB
        if host == DOCKER_HUB and "/" not in path:
            path = OFFICIAL_PREFIX + path
        return cls(host, path, tag, digest)

    # -- spellings --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The repository with its host: ``docker.io/library/busybox``."""
        return f"{self.host}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it: ``busybox``, ``team/app``, ``reg:5000/app``.  A Docker Hub path whose
        first component reads as a host (``docker.io/a.b/c``) keeps ``docker.io/``: docker would show ``a.b/c``,
        which names another registry when read back."""
        if self.host != DOCKER_HUB:
            return self.name
        first = self.path.partition("/")[0]
        if "." in first or first == "localhost":
            return self.name
        rest = self.path.removeprefix(OFFICIAL_PREFIX)
        return rest if rest != self.path and "/" not in rest else self.path

    def familiar(self) -> str:
        """What docker shows: the familiar name, with the tag and digest as given."""
        return self.familiar_name + self._suffix()

    def normalized(self) -> str:
        """What containerd, the kubelet and podman use (``ParseDockerRef``): the full name with its tag
        (``latest`` when none is given), or with only its digest when it has one."""
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        """The full name with the tag and digest as given."""
        return self.name + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag is not None else "") + (f"@{self.digest}" if self.digest is not None else "")

    @property
    def key(self) -> str:
        """The normalized reference with the host in lower case: two names with one key name one image."""
        return f"{self.host.lower()}/{self.normalized().partition('/')[2]}"

    # -- the registry -----------------------------------------------------------------------------
    @property
    def hostname(self) -> str:
        """The host without its port, in lower case; an IPv6 address without brackets."""
        return hostname_of(self.host)

    def with_tag(self, tag: str) -> Reference:
        """The same repository under ``tag`` (no digest)."""
        return Reference(self.host, self.path, tag)


ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# the image-spec's grammar of org.opencontainers.image.ref.name, which skopeo and podman check a PATH:REF against
_OCI_REF_NAME_RE = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*", re.ASCII
)


def layout_annotations(refs: Iterable[str]) -> dict[str, dict[str, str]]:
    """The annotations of an OCI layout's ``index.json`` entry for each of ``refs`` (tagged names), so that each
    name finds its image in every peer, and no selector finds two.

    ``io.containerd.image.name`` is the normalized name (``docker.io/team/app:1``): containerd's import and
    podman's load name the image by it, as containerd's export writes it.  ``org.opencontainers.image.ref.name``
    selects an entry (``skopeo ... oci-archive:PATH:REF``, ``podman pull oci-archive:PATH:REF``, umoci): the
    bare tag, as containerd's export writes it, while every name of the layout has a tag of its own; the
    normalized name, as ``podman save`` writes it, for every entry once two names share a tag.  A selector
    outside the image-spec's grammar (an IPv6 host) is left out; the entry keeps its image name."""
    parsed = {ref: Reference.parse(ref) for ref in refs}
    tag_of = {r.normalized(): r.tag for r in parsed.values()}  # one name spelled twice counts once
    tags = list(tag_of.values())
    own_tags = None not in tags and len(set(tags)) == len(tags)
    annotations: dict[str, dict[str, str]] = {}
    for ref, r in parsed.items():
        selector = str(r.tag) if own_tags else r.normalized()
        annotations[ref] = {ANNOTATION_IMAGE_NAME: r.normalized()}
        if _OCI_REF_NAME_RE.fullmatch(selector):
            annotations[ref][ANNOTATION_REF_NAME] = selector
    return annotations


def hostname_of(domain: str) -> str:
    """``HOST[:PORT]`` (an IPv6 address in brackets) -> the host in lower case, without port or brackets."""
    domain = domain.lower()
    if domain.startswith("["):
        return domain[1:].partition("]")[0]
    return domain.partition(":")[0]


def registry_endpoint(domain: str) -> str:
    """Where the registry API of ``domain`` answers: Docker Hub's is ``registry-1.docker.io``."""
    return DOCKER_HUB_ENDPOINT if domain.lower() in (DOCKER_HUB, LEGACY_DOCKER_HUB) else domain


def is_docker_hub(domain: str) -> bool:
    """Whether ``domain`` is one of Docker Hub's names (docker.io, index.docker.io, registry-1.docker.io)."""
    return domain.lower() in DOCKER_HUB_HOSTS


def valid_domain(text: str) -> bool:
    """Whether ``text`` is a registry host as the grammar has it: ``HOST[:PORT]``, an IPv6 host in brackets."""
    return isinstance(text, str) and len(text) <= _MAX_TEXT and bool(_DOMAIN_RE.fullmatch(text))


def valid_path(text: str) -> bool:
    """Whether ``text`` is a repository path: lower-case components joined by "/"."""
    return isinstance(text, str) and len(text) <= _MAX_TEXT and bool(_PATH_RE.fullmatch(text))


def host_as_component(domain: str) -> str:
    """A registry host as one path component, lower case: ``reg1.example:5000`` -> ``reg1.example_5000``,
    ``[::1]:5000`` -> ``0000-0000-0000-0000-0000-0000-0000-0001_5000``.  A host never holds "_", so the
    port stays readable; two hosts give one component only when they are one host."""
    if domain.startswith("["):
        host, _, after = domain[1:].partition("]")
        port = after.removeprefix(":")
    else:
        host, _, port = domain.partition(":")
    host = host.lower()
    if ":" in host:  # IPv6: the grammar lets only hex digits and ":" through
        try:
            host = ipaddress.IPv6Address(host).exploded.replace(":", "-")
        except ValueError:
            host = "-".join(part or "0" for part in host.split(":"))
    component = host + (f"_{port}" if port else "")
    if not _COMPONENT_RE.fullmatch(component):
        raise InvalidReference(f"registry host {domain[:80]!r} cannot be written as a repository path component")
    return component


def _split_docker_domain(text: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: the registry host of a name and the rest (path, tag, digest)."""
    first, slash, rest = text.partition("/")
    if not slash:
        return DOCKER_HUB, OFFICIAL_PREFIX + text
    if first == "localhost" or "." in first or ":" in first or first.lower() != first:
        domain, remainder = (DOCKER_HUB if first == LEGACY_DOCKER_HUB else first), rest
    else:
        domain, remainder = DOCKER_HUB, text
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def _check_digest(digest: str) -> None:
    """A digest Docker accepts: a registered algorithm and its exact length of lower-case hex digits."""
    if not isinstance(digest, str) or not re.fullmatch(_DIGEST_SYNTAX, digest, re.ASCII):
        raise InvalidReference(f"{str(digest)[:140]!r} is not a valid digest")
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidReference(f"unsupported digest algorithm {algorithm[:40]!r}")
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded, re.ASCII):
        raise InvalidReference(f"invalid checksum digest length or format for {algorithm}")
