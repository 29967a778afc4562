"""The Docker engine, through the Engine API (docker SDK).

The engine dialled is the one the docker CLI would dial (:func:`docker_endpoint`): ``DOCKER_HOST`` when set
(with ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH``), else the context ``DOCKER_CONTEXT`` names, else the
current context of the Docker client's config (``currentContext`` in ``$DOCKER_CONFIG/config.json``, by
default ``~/.docker``), whose endpoint and TLS material ``docker context create`` keeps under
``contexts/meta/<sha256 of the name>/meta.json`` and ``contexts/tls/<sha256 of the name>/docker/``; the
``default`` context is ``unix:///var/run/docker.sock``.

Every docker or transport exception is converted here into :class:`~airgap.errors.DockerError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import docker
import docker.errors
import docker.tls
import requests
import urllib3.exceptions

from airgap._internal.clients.distribution import is_loopback
from airgap.errors import DockerError
from airgap.model.manifest import Platform

if TYPE_CHECKING:
    from airgap._internal.util.tarstream import Readable

_HINT = "is dockerd running, and DOCKER_HOST or the docker context pointing at it? ('docker info' should answer)"
DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_CONTEXT = "default"
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

    # with defaults: an engine without them takes every name and cannot push (the tests' in-memory engine)
    def accepts_name(self, ref: str) -> bool:
        """Whether the engine's reference grammar takes the name ``ref`` (one Docker's grammar allows)."""
        return bool(ref)

    def product(self) -> str:
        """The engine and its version, for messages: ``Docker Engine 20.10.24 (API 1.41)``."""
        return "the Docker engine"

    def push(self, ref: str) -> None:
        """Push ``ref`` (repository:tag) to its registry."""
        raise DockerError(f"Docker engine: this engine cannot push {ref}", hint=_HINT)


@dataclass(frozen=True)
class Endpoint:
    """The engine to dial, chosen as the docker CLI chooses it, and where the choice came from.

    ``context`` is None for the default context: ``DOCKER_HOST`` and its TLS variables, or the default socket;
    a named context carries its endpoint's TLS material (``ca``, ``cert``: paths in the context store)."""

    host: str
    source: str  # for messages: "DOCKER_HOST", or the context and what named it
    context: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: tuple[str, str] | None = None
    skip_verify: bool = False

    @property
    def hint(self) -> str:
        """What to check when the engine does not answer there."""
        if self.context is None:
            return _HINT
        return (
            f"is dockerd running at {self.host}? it is the endpoint of docker context {self.context!r} ({self.source}); "
            "'docker context ls' lists the contexts, 'docker info' should answer"
        )

    def client(self, **kwargs: Any) -> docker.DockerClient:
        """A Docker SDK client for this endpoint (``kwargs``: version, timeout)."""
        if self.context is None:
            return docker.from_env(**kwargs)  # DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, or the default socket
        tls: docker.tls.TLSConfig | bool = False
        if self.tls:
            tls = docker.tls.TLSConfig(client_cert=self.cert, ca_cert=self.ca, verify=not self.skip_verify)
        return docker.DockerClient(base_url=self.host, tls=tls, use_ssh_client=self.host.startswith("ssh://"), **kwargs)


def docker_endpoint(environ: Mapping[str, str] | None = None) -> Endpoint:
    """The engine the docker CLI would dial: ``DOCKER_HOST``, else the context named by ``DOCKER_CONTEXT``, else the
    current context of the Docker client's config, else the default socket.  A context named but not found, or
    unreadable, is a DockerError naming it (the docker CLI refuses it too)."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_HOST"):
        return Endpoint(env["DOCKER_HOST"], "DOCKER_HOST")
    config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name, source = env.get("DOCKER_CONTEXT"), "named by DOCKER_CONTEXT"
    if not name:
        config_path = config_dir / "config.json"
        current = _read_json(config_path, "the Docker client config", DEFAULT_CONTEXT).get("currentContext")
        name, source = (current if isinstance(current, str) else ""), f"the current context in {config_path}"
    if not name or name == DEFAULT_CONTEXT:
        return Endpoint(DEFAULT_HOST, "the default context")
    context_id = hashlib.sha256(name.encode()).hexdigest()
    meta_path = config_dir / "contexts" / "meta" / context_id / "meta.json"
    if not meta_path.is_file():
        raise DockerError(
            f"Docker engine: docker context {name[:120]!r} ({source}) does not exist: no {meta_path}",
            hint="'docker context ls' lists the contexts; 'docker context use default' (or unsetting DOCKER_CONTEXT) "
            "goes back to the default socket, DOCKER_HOST overrides both",
        )
    meta = _read_json(meta_path, f"docker context {name[:120]!r}", name)
    endpoints = meta.get("Endpoints")
    endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = endpoint.get("Host") if isinstance(endpoint, dict) else None
    if not isinstance(endpoint, dict) or not isinstance(host, str) or not host:
        raise DockerError(
            f"Docker engine: docker context {name[:120]!r} ({source}) has no Docker endpoint in {meta_path}",
            hint=f"'docker context inspect {name[:120]}' shows it; recreate it with 'docker context create --docker host=...'",
        )
    tls_dir = config_dir / "contexts" / "tls" / context_id / "docker"
    ca, cert, key = (tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem"))
    skip_verify = endpoint.get("SkipTLSVerify") is True
    client_cert = (str(cert), str(key)) if cert.is_file() and key.is_file() else None
    return Endpoint(
        host,
        source,
        context=name,
        tls=skip_verify or ca.is_file() or client_cert is not None,  # as the docker CLI: TLS when the context has some
        ca=str(ca) if ca.is_file() else None,
        cert=client_cert,
        skip_verify=skip_verify,
    )


def _read_json(path: Path, what: str, name: str) -> dict[str, Any]:
    """A JSON object from the Docker client's files; {} when the file does not exist, a DockerError when unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DockerError(
            f"Docker engine: cannot read {what} ({path}): {str(e)[:200]}",
            hint=f"fix or remove {path}; 'docker context ls' reads it too",
        ) from e
    if not isinstance(data, dict):
        raise DockerError(f"Docker engine: {what} ({path}) is not a JSON object", hint=f"fix or remove {path}")
    return data


class Engine:
    def __init__(self, client: docker.DockerClient, endpoint: Endpoint | None = None) -> None:
        self._client = client
        self.endpoint = endpoint if endpoint is not None else Endpoint(DEFAULT_HOST, "the default context")
        self.api = client.api
        self._image_layers: dict[str, list[str]] | None = None
        self._version_doc: dict[str, Any] | None = None

    @classmethod
    def connect(cls) -> Engine:
        """The engine the docker CLI would dial (:func:`docker_endpoint`), once it answers a ping."""
        endpoint = docker_endpoint()
        _check_unix_socket(endpoint)
        try:
            # a pinned API version does not touch the engine on construction, so a dead engine leaks no socket
            probe = endpoint.client(version="1.24", timeout=30)
        except docker.errors.DockerException as e:
            raise _connect_failed(endpoint, e) from e
        try:
            probe.ping()
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise _connect_failed(endpoint, e) from e
        finally:
            probe.close()
        try:
            return cls(endpoint.client(timeout=LOAD_TIMEOUT), endpoint)
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise _connect_failed(endpoint, e) from e

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

    def _version(self) -> dict[str, Any]:
        """The engine's /version document (asked once per connection)."""
        if self._version_doc is None:
            try:
                self._version_doc = dict(self.api.version())
            except (docker.errors.DockerException, requests.RequestException) as e:
                raise _fail("version failed", e) from e
        return self._version_doc

    def is_podman(self) -> bool:
        """Whether Podman's Docker-compatible service (``podman system service``) answers rather than dockerd:
        its /version names a "Podman Engine" component.  Podman's load reads every layer of an image from the
        upload, even those it holds; it pulls from a loopback registry over HTTPS only."""
        components = self._version().get("Components") or []
        return any(isinstance(c, dict) and str(c.get("Name", "")).startswith("Podman") for c in components)

    def product(self) -> str:
        """``Docker Engine 20.10.24+dfsg1 (API 1.41)``, ``Podman Engine 4.3.1 (API 1.41)``: the first component of
        /version (the engine itself; dockerd calls it "Engine"), else its Version."""
        doc = self._version()
        components = [c for c in doc.get("Components") or [] if isinstance(c, dict)]
        name = str(components[0].get("Name", "")) if components else ""
        version = str(components[0].get("Version", "")) if components else str(doc.get("Version", ""))
        text = f"{'Docker Engine' if name in ('', 'Engine') else name} {version}".strip()
        api = doc.get("ApiVersion")
        return f"{text[:80]} (API {str(api)[:16]})" if api else text[:80]

    def accepts_name(self, ref: str) -> bool:
        """Whether the engine's own reference parser takes ``ref``, asked of it: an inspect of the name answers
        "invalid reference format" (dockerd 400, Podman 500) when the engine's grammar lacks it, as Docker's did
        for IPv6 registry hosts (``[::1]:5000/app:1``) before its newer reference grammar; found or not found,
        the engine parsed it."""
        try:
            self.api.inspect_image(ref)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            if e.status_code in (400, 500) and "invalid reference format" in str(e.explanation or ""):
                return False
            raise _fail(f"inspecting {ref} failed", e) from e
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"inspecting {ref} failed", e) from e
        return True

    def push(self, ref: str) -> None:
        """POST /images/{name}/push: push ``ref`` (repository:tag); errors from the progress stream raise DockerError."""
        repo, _, tag = ref.rpartition(":")
        try:
            for msg in self.api.push(repo, tag=tag, stream=True, decode=True):
                if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                    detail = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "")
                    raise DockerError(f"Docker engine: pushing {ref} failed: {str(detail)[:300]}", hint=_HINT)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _fail(f"pushing {ref} failed", e) from e

    def is_local(self) -> bool:
        """Whether the engine shares this host's loopback: a unix socket, or a TCP address on loopback (localhost in any
        case, 127.0.0.0/8, [::1])."""
        host = self.endpoint.host
        if host.startswith("unix://"):
            return True
        return host.startswith("tcp://") and is_loopback(host[len("tcp://") :].partition("/")[0])


def chain_id(parent: str | None, diff_id: str) -> str:
    """A layer's chain ID: its diff ID on top of its parent's chain (the image spec's definition)."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def engine_answers() -> bool:
    """Whether an engine answers where the docker CLI would dial (DOCKER_HOST, the docker context, the default socket)."""
    try:
        Engine.connect().close()
    except DockerError:
        return False
    return True


def _connect_failed(endpoint: Endpoint, e: BaseException) -> DockerError:
    """A failed connection, naming the endpoint and where it came from."""
    detail = getattr(e, "explanation", None) or str(e)
    return DockerError(
        f"Docker engine: cannot connect to {endpoint.host} ({endpoint.source}): {str(detail).strip()[:300]}", hint=endpoint.hint
    )


def _check_unix_socket(endpoint: Endpoint) -> None:
    """Fail early and clearly when a unix-socket endpoint has no engine behind it."""
    if not endpoint.host.startswith("unix://"):
        return
    path = endpoint.host[len("unix://") :]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError as e:
        raise DockerError(
            f"Docker engine: cannot connect to {path} ({endpoint.source}): {e.strerror or e}", hint=endpoint.hint
        ) from e
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
