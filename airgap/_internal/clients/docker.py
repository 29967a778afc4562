"""The Docker engine, through the Engine API (docker SDK).  Honours DOCKER_HOST.

Every docker or transport exception is converted here into :class:`~airgap.errors.DockerError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import docker
import docker.errors
import requests
import urllib3.exceptions

from airgap.errors import DockerError
from airgap.model.manifest import Platform

if TYPE_CHECKING:
    from airgap._internal.util.tarstream import Readable

_HINT = "is dockerd running and DOCKER_HOST pointing at it? ('docker info' should answer)"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i386": "386", "i686": "386"}
LOAD_TIMEOUT = 6 * 3600


def _fail(what: str, e: BaseException) -> DockerError:
    detail = getattr(e, "explanation", None) or str(e)
    return DockerError(f"Docker engine: {what}: {str(detail).strip()[:300]}", hint=_HINT)


class EngineClient(Protocol):
    """What airgap asks of a Docker engine: exactly the calls sources and sinks make.

    :class:`Engine` is the real one (the Engine API); tests stand in fakes that declare this protocol, so
    mypy tells when the two drift apart.
    """

    def __enter__(self) -> EngineClient: ...

    def __exit__(self, *exc: object) -> None: ...

    def close(self) -> None:
        """Release the connection."""

    def platform(self) -> Platform:
        """The engine's OS and architecture."""

    def root_dir(self) -> Path | None:
        """The engine's data root, if it is a directory on this host."""

    def inspect(self, ref: str) -> dict[str, Any] | None:
        """An image's inspect document, or None if the engine does not have it."""

    def image_id(self, ref: str) -> str | None:
        """The image ID a name or ID resolves to, or None."""

    def tag(self, image_id: str, ref: str) -> None:
        """Point the name ``ref`` (repository:tag) at ``image_id``."""

    def untag(self, ref: str) -> None:
        """Remove one name without touching the image or its other names."""

    def export(self, refs: list[str]) -> AbstractContextManager[Readable]:
        """The images as a docker-save archive stream."""

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """Upload a docker-save archive; nothing is registered unless the upload is complete."""

    def layer_chains(self) -> set[str]:
        """The chain IDs of every layer the engine's images use."""

    def images_holding(self, diff_ids: set[str]) -> tuple[list[str], set[str]]:
        """Images whose layers cover ``diff_ids``, and the diff IDs no image has."""

    def pull(self, ref: str) -> None:
        """Pull ``ref`` (repository:tag) from its registry."""

    def is_local(self) -> bool:
        """Whether the engine shares this host's loopback."""

    def is_podman(self) -> bool:
        """Whether Podman's Docker-compatible service answers rather than dockerd."""


class Engine:
    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self.api = client.api
        self._image_layers: dict[str, list[str]] | None = None
        self._podman: bool | None = None

    @classmethod
    def connect(cls) -> Engine:
        _check_unix_socket(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        try:
            # a pinned API version does not touch the engine on construction, so a dead engine leaks no socket
            probe = docker.from_env(version="1.24", timeout=30)
        except docker.errors.DockerException as e:
            raise _fail("cannot connect", e) from e
        try:
            probe.ping()
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise _fail("cannot connect", e) from e
        finally:
            probe.close()
        try:
            return cls(docker.from_env(timeout=LOAD_TIMEOUT))
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise _fail("cannot connect", e) from e

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        try:
            return dict(self.api.info())
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail("info failed", e) from e

    def platform(self) -> Platform:
        info = self.info()
        arch = str(info.get("Architecture", "amd64"))
        return Platform(str(info.get("OSType", "linux")), _ARCH.get(arch, arch))

    def root_dir(self) -> Path | None:
        root = self.info().get("DockerRootDir")
        path = Path(root) if isinstance(root, str) and root else None
        return path if path is not None and path.is_dir() else None

    def inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.inspect_image(ref))
        except docker.errors.NotFound:  # dockerd: ImageNotFound; Podman: "image not known", a plain NotFound
            return None
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"inspecting {ref} failed", e) from e

    def image_id(self, ref: str) -> str | None:
        found = self.inspect(ref)
        return str(found["Id"]) if found else None

    def tags_of(self, image_id: str) -> list[str]:
        found = self.inspect(image_id)
        return list(found.get("RepoTags") or []) if found else []

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        try:
            self.api.tag(image_id, repo, tag, force=True)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"tagging {ref} failed", e) from e

    @contextmanager
    def export(self, refs: list[str]) -> Iterator[Any]:
        """The engine's image export (GET /images/get) as a readable stream.  Callers check that the refs exist."""
        try:
            res = self.api._get(self.api._url("/images/get"), params={"names": refs}, stream=True)
            self.api._raise_for_status(res)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail("image export failed", e) from e
        res.raw.decode_content = False
        try:
            yield _ExportStream(res.raw)
        finally:
            res.close()

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """POST /images/load with a streamed body; returns the engine's messages.

        If ``chunks`` raises, the upload is cut off before its end: the engine discards it whole.
        """
        try:
            res = self.api._post(
                self.api._url("/images/load"),
                data=chunks,
                params={"quiet": "1"},
                stream=True,
                headers={"Content-Type": "application/x-tar"},
            )
            self.api._raise_for_status(res)
            messages = []
            for line in res.iter_lines(chunk_size=65536):
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    messages.append(line.decode("utf-8", "replace"))
                    continue
                if msg.get("error") or msg.get("errorDetail"):
                    detail = msg.get("error") or msg["errorDetail"].get("message", "")
                    raise DockerError(f"Docker engine refused the image: {str(detail)[:300]}", hint=_HINT)
                if msg.get("stream"):
                    messages.append(str(msg["stream"]).strip())
            return messages
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail("image load failed", e) from e

    def image_layers(self) -> dict[str, list[str]]:
        """Every image's layer diff IDs, bottom first (listed once per engine connection: an install asks
        several questions of the same state before it loads anything)."""
        if self._image_layers is None:
            found: dict[str, list[str]] = {}
            try:
                for summary in self.api.images(all=True):
                    image_id = str(summary["Id"])
                    found[image_id] = [str(d) for d in ((self.inspect(image_id) or {}).get("RootFS") or {}).get("Layers") or []]
            except (docker.errors.DockerException, requests.RequestException) as e:
                raise _fail("listing images failed", e) from e
            self._image_layers = found
        return self._image_layers

    def layer_chains(self) -> set[str]:
        """The chain IDs of every layer the engine's images use: 'docker load' skips a layer whose chain it has."""
        chains: set[str] = set()
        for layers in self.image_layers().values():
            chain = None
            for diff_id in layers:
                chain = chain_id(chain, diff_id)
                chains.add(chain)
        return chains

    def images_holding(self, diff_ids: set[str]) -> tuple[list[str], set[str]]:
        """Images whose layers cover ``diff_ids`` (a few, greedily), and the diff IDs no image has."""
        layers_of = {image_id: set(layers) & diff_ids for image_id, layers in self.image_layers().items()}
        wanted, chosen = set(diff_ids), []
        while wanted:
            best = max(layers_of, key=lambda i: len(layers_of[i] & wanted), default=None)
            if best is None or not layers_of[best] & wanted:
                break
            chosen.append(best)
            wanted -= layers_of[best]
        return chosen, wanted

    def pull(self, ref: str) -> None:
        """POST /images/create: pull ``ref`` (repository:tag); errors from the progress stream raise DockerError."""
        repo, _, tag = ref.rpartition(":")
        try:
            for msg in self.api.pull(repo, tag=tag, stream=True, decode=True):
                if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                    detail = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "")
                    raise DockerError(f"Docker engine: pulling {ref} failed: {str(detail)[:300]}", hint=_HINT)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"pulling {ref} failed", e) from e

    def untag(self, ref: str) -> None:
        """Remove one name (tag or digest reference) without touching the image or its other names."""
        try:
            self.api.remove_image(ref, noprune=True)
        except docker.errors.NotFound:  # dockerd: ImageNotFound; Podman: "image not known", a plain NotFound
            return
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"removing the name {ref} failed", e) from e

    def is_podman(self) -> bool:
        """Whether Podman's Docker-compatible service (``podman system service``) answers rather than dockerd:
        its /version names a "Podman Engine" component.  Podman's load reads every layer of an image from the
        upload, even those it holds; it pulls from a loopback registry over HTTPS only."""
        if self._podman is None:
            try:
                components = self.api.version().get("Components") or []
            except (docker.errors.DockerException, requests.RequestException) as e:
                raise _fail("version failed", e) from e
            self._podman = any(isinstance(c, dict) and str(c.get("Name", "")).startswith("Podman") for c in components)
        return self._podman

    def is_local(self) -> bool:
        """Whether the engine shares this host's loopback (a unix socket or a loopback TCP address)."""
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return host.startswith(("unix://", "tcp://127.", "tcp://localhost"))


def chain_id(parent: str | None, diff_id: str) -> str:
    """A layer's chain ID: its diff ID on top of its parent's chain (the image spec's definition)."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def engine_answers() -> bool:
    """Whether an engine answers at DOCKER_HOST (or the default socket)."""
    try:
        Engine.connect().close()
    except DockerError:
        return False
    return True


def _check_unix_socket(host: str) -> None:
    """Fail early and clearly when a unix-socket DOCKER_HOST has no engine behind it."""
    if not host.startswith("unix://"):
        return
    path = host[len("unix://") :]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError as e:
        raise DockerError(f"Docker engine: cannot connect to {path}: {e.strerror or e}", hint=_HINT) from e
    finally:
        sock.close()


class _ExportStream:
    """Wraps the raw HTTP response so transport failures become DockerError."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._raw.read(n))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise _fail("image export was cut off", e) from e


if TYPE_CHECKING:
    _ENGINE_IS_A_CLIENT: type[EngineClient] = Engine  # mypy checks that Engine keeps to the protocol
