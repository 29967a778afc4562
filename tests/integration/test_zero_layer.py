"""Images without layers (``FROM scratch`` and metadata only), from and to the real peers.

Docker builds, pushes and loads them; its export refuses them ("empty export"), which pack reports as that,
never as an engine that is down.  From a registry or an archive they pack, and every target takes them:
the Docker engine, install.sh, Podman, containerd, a registry (another Docker engine pulls the same image
ID), and both archive kinds, which skopeo reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.cli import Cli
from tests.helpers.containerd import private_containerd
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair
from tests.helpers.podman import private_podman
from tests.helpers.registries import PrivateRegistry
from tests.helpers.tools import run_sh

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/scratch:1"
DOCKERFILE = b"FROM scratch\nLABEL org.opencontainers.image.title=metadata-only\nENV KIND=scratch\n"


def skopeo(*args: str) -> bytes:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    done = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture(scope="module")
def scratch(docker_client: docker.DockerClient, registry: PrivateRegistry) -> Iterator[tuple[str, str]]:
    """An image without layers, built by the Docker engine and pushed by it to the registry: its image ID and
    the registry reference."""
    image, _ = docker_client.images.build(fileobj=io.BytesIO(DOCKERFILE), tag=TAG, rm=True)
    assert image.attrs["RootFS"].get("Layers") in (None, [])
    pushed = f"{registry.host}/scratch/meta:1"
    image.tag(pushed)
    for line in docker_client.images.push(pushed, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(pushed)
    yield image.id, pushed
    remove(docker_client, TAG, image.id)


@pytest.fixture
def bundle_of_scratch(cli: Cli, keypair: KeyPair, scratch: tuple[str, str], tmp_path: Path) -> Path:
    out = tmp_path / "b"
    r = cli("pack", f"oci://{scratch[1]}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    return out


def install(cli: Cli, bundle: Path, keypair: KeyPair, *extra: str) -> tuple[int, dict[str, Any], str]:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--json", *extra)
    return r.code, (json.loads(r.out) if r.code == 0 else {}), r.err


def test_engine_source_reports_the_empty_export_as_what_it_is(
    cli: Cli, keypair: KeyPair, scratch: tuple[str, str], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    r = cli("pack", TAG, "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    if int(str(docker_client.version()["Version"]).split(".")[0]) >= 25 and r.code == 0:
        return  # an engine whose export takes such images (containerd's image store)
    assert r.code == 6, r.err
    assert "without layers" in r.err and TAG in r.err and "oci://" in r.err
    assert "dockerd running" not in r.err


def test_registry_source_packs_the_image_with_its_id(bundle_of_scratch: Path, scratch: tuple[str, str]) -> None:
    [image] = load_bundle(bundle_of_scratch).manifest.images
    assert image.image_id == scratch[0] and image.layers == () and image.diff_ids == ()


def test_docker_engine_loads_it(
    cli: Cli, keypair: KeyPair, bundle_of_scratch: Path, scratch: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    remove(docker_client, TAG, scratch[0], scratch[1])
    code, result, err = install(cli, bundle_of_scratch, keypair)
    assert code == 0, err
    assert result["images"][0]["action"] == "loaded"
    assert docker_client.images.get(scratch[1]).id == scratch[0]
    code, result, err = install(cli, bundle_of_scratch, keypair)
    assert code == 0 and result["images"][0]["action"] == "already present", err


def test_install_sh_loads_it(
    bundle_of_scratch: Path, keypair: KeyPair, scratch: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    remove(docker_client, scratch[1], scratch[0], TAG)
    done = run_sh(bundle_of_scratch, "--trust", str(keypair[1]))
    assert done.returncode == 0, done.stderr
    assert docker_client.images.get(scratch[1]).id == scratch[0]


def test_registry_target_takes_it_and_another_engine_pulls_the_same_id(
    cli: Cli,
    keypair: KeyPair,
    bundle_of_scratch: Path,
    scratch: tuple[str, str],
    registry: PrivateRegistry,
    second_engine: str,
) -> None:
    code, result, err = install(cli, bundle_of_scratch, keypair, "--to", f"registry://{registry.host}/mirror")
    assert code == 0, err
    ref = result["images"][0]["location"]
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert raw["layers"] == [] and raw["config"]["digest"] == scratch[0]
    other = docker.DockerClient(base_url=second_engine, timeout=300)
    try:
        repository, _, tag = ref.rpartition(":")
        assert other.images.pull(repository, tag=tag).id == scratch[0]
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_archive_targets_hold_it_for_skopeo_and_pack_again(
    cli: Cli, keypair: KeyPair, bundle_of_scratch: Path, scratch: tuple[str, str], tmp_path: Path, kind: str
) -> None:
    out = tmp_path / f"scratch-{kind}.tar"
    code, _, err = install(cli, bundle_of_scratch, keypair, "--to", f"{kind}:{out}")
    assert code == 0, err
    config = skopeo("inspect", "--raw", "--config", f"{kind}:{out}")
    assert "sha256:" + hashlib.sha256(config).hexdigest() == scratch[0]
    copied = tmp_path / f"copied-{kind}.tar"  # skopeo copies it to the other kind, and that packs too
    other = "oci-archive" if kind == "docker-archive" else "docker-archive"
    skopeo("copy", "--quiet", f"{kind}:{out}", f"{other}:{copied}" + (f":{scratch[1]}" if other == "docker-archive" else ""))
    r = cli("pack", f"{other}:{copied}", "-o", str(tmp_path / "again"), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["image_id"] in (
        scratch[0],
        "sha256:" + hashlib.sha256(skopeo("inspect", "--raw", "--config", f"{other}:{copied}")).hexdigest(),
    )


def test_podman_loads_it(
    cli: Cli,
    keypair: KeyPair,
    bundle_of_scratch: Path,
    scratch: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with private_podman(tmp_path_factory.mktemp("podman")) as podman:
        monkeypatch.setenv("DOCKER_HOST", podman.docker_host)
        code, result, err = install(cli, bundle_of_scratch, keypair)
        assert code == 0 and result["images"][0]["action"] == "loaded", err
        assert podman.names() == {scratch[1]: scratch[0]}
        # and Podman's export, unlike dockerd's, gives it back: it packs from the engine with its image ID
        again = tmp_path_factory.mktemp("again") / "b"
        r = cli("pack", scratch[1], "-o", str(again), "--key", str(keypair[0]), "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["images"][0]["image_id"] == scratch[0]


def test_containerd_imports_it(
    cli: Cli, keypair: KeyPair, bundle_of_scratch: Path, scratch: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    with private_containerd(tmp_path_factory.mktemp("containerd")) as containerd:
        code, result, err = install(cli, bundle_of_scratch, keypair, "--to", containerd.target())
        assert code == 0, err
        assert result["images"][0]["image_id"] == scratch[0]
        checked = containerd.checked()
        assert checked and all(status.startswith("complete") for status in checked.values()), checked
