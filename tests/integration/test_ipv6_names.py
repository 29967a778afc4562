"""A name with an IPv6 registry host (``[::1]:5000/team/app:1``) installed into an engine whose reference grammar
lacks such hosts (Debian's Docker 20.10, Podman 4.3).

Docker's newer grammar and airgap's model take the name, so pack signs it.  Whether an engine takes it is asked
of the engine (an inspect of the name answers "invalid reference format" when it does not), not read from its
version: an engine that refuses it gets a one-line usage error (exit 2) naming the name and the engine, with the
routes that work, before any upload or pull; nothing is left in the engine (its own load would have kept the
image untagged, then failed).  An engine that takes the name gets the image under it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.helpers.cli import Cli
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair
from tests.helpers.podman import PrivatePodman, private_podman
from tests.helpers.registries import PrivateRegistry
from tests.helpers.samples import Sample, sample_image

pytestmark = pytest.mark.docker

NAME = "[::1]:5000/team/app:1"


@pytest.fixture(scope="module")
def ipv6_named(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    d = tmp_path_factory.mktemp("ipv6-named")
    return sample_image.build(d / "v6.tar", tag=NAME, model_size=1 << 16, app_size=1 << 14, seed="ipv6-host")


@pytest.fixture
def v6_bundle(cli: Cli, keypair: KeyPair, ipv6_named: Sample, tmp_path: Path) -> Path:
    out = tmp_path / "v6"
    r = cli("pack", f"docker-archive:{ipv6_named.path}", "-o", str(out), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["ref_names"] == [NAME]  # the model takes what pack signed
    return out


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman")) as service:
        yield service


def takes_ipv6_names(client: docker.DockerClient) -> bool:
    """The engine's own answer: an inspect of the name is "not found" (parsed) or "invalid reference format"."""
    try:
        client.api.inspect_image(NAME)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as e:
        assert "invalid reference format" in str(e.explanation), e
        return False
    return True


def assert_refused_up_front(err: str, engine: str) -> None:
    lines = err.strip().splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    hint = next(line for line in lines if line.startswith("hint: "))
    assert NAME in error and engine in error and "IPv6" in error, err
    assert "--to registry://" in hint and "newer engine" in hint and "pack it under" in hint, err
    assert "dockerd running" not in err and "Traceback" not in err


@pytest.mark.parametrize("via", ["load", "registry"])
def test_docker_engine_refuses_ipv6_host_before_any_upload(
    cli: Cli, keypair: KeyPair, v6_bundle: Path, ipv6_named: Sample, docker_client: docker.DockerClient, via: str
) -> None:
    remove(docker_client, ipv6_named.image_id)
    r = cli("install", str(v6_bundle), "--trust", str(keypair[1]), "--via", via)
    if takes_ipv6_names(docker_client):  # an engine with Docker's newer grammar: the image under its name
        assert r.code == 0, r.err
        assert docker_client.images.get(NAME).id == ipv6_named.image_id
        remove(docker_client, NAME, ipv6_named.image_id)
        return
    assert r.code == 2, r.err
    assert_refused_up_front(r.err, f"Docker Engine {docker_client.version()['Version']}")
    assert f"nothing was {'pulled' if via == 'registry' else 'loaded'}" in r.err
    with pytest.raises(docker.errors.ImageNotFound):  # not even untagged: nothing reached the engine
        docker_client.images.get(ipv6_named.image_id)


def test_podman_refuses_ipv6_host_before_any_upload(
    cli: Cli,
    keypair: KeyPair,
    v6_bundle: Path,
    ipv6_named: Sample,
    podman: PrivatePodman,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    podman.remove_all()
    monkeypatch.setenv("DOCKER_HOST", podman.docker_host)
    client = docker.DockerClient(base_url=podman.docker_host, timeout=300)
    try:
        takes = takes_ipv6_names(client)
    finally:
        client.close()
    r = cli("install", str(v6_bundle), "--trust", str(keypair[1]))
    if takes:
        assert r.code == 0, r.err
        assert podman.names().get(NAME) == ipv6_named.image_id
        return
    assert r.code == 2, r.err
    version = podman.podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    assert_refused_up_front(r.err, f"Podman Engine {version}")
    assert podman.image_ids() == set()  # nothing was sent
    assert podman.temporary_files() == []


def test_the_hinted_route_a_registry_takes_the_image_without_its_host(
    cli: Cli, keypair: KeyPair, v6_bundle: Path, ipv6_named: Sample, registry: PrivateRegistry
) -> None:
    r = cli("install", str(v6_bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/v6", "--json")
    assert r.code == 0, r.err
    (image,) = json.loads(r.out)["images"]
    assert image["location"] == f"{registry.host}/v6/team/app:1" and image["image_id"] == ipv6_named.image_id
