"""zstd-compressed layers as skopeo writes them (``--dest-compress-format zstd``), against the real peers.

Debian's Docker 20.10 cannot read zstd layers: it gets them decompressed on the way, the same image ID, and
loads nothing when a part is damaged.  It reads gzip, which goes as it is.  Podman and containerd read zstd
and get the layers as they are; a docker-archive holds them decompressed (Docker 20.10 loads it); a
registry stores them as they are.  Which engine reads what is found by a probe load, never assumed: the
probe leaves no image behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from airgap.model.mediatypes import MT_OCI_LAYER_ZSTD
from tests.helpers.cli import Cli
from tests.helpers.containerd import PrivateContainerd, private_containerd
from tests.helpers.engine import evict_images_sharing_layers, remove
from tests.helpers.keys import KeyPair
from tests.helpers.podman import PrivatePodman, private_podman
from tests.helpers.registries import PrivateRegistry
from tests.helpers.samples import Samples

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/agent:1.0"  # samples["docker"]


def skopeo(*args: str) -> bytes:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    done = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture(scope="module")
def compressed(samples: Samples, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The sample image copied by skopeo into oci-archives with zstd and with gzip layers: path, image ID
    (skopeo writes an OCI config, so the ID is its digest; the diff_ids stay the sample's)."""
    out = {}
    for compression in ("zstd", "gzip"):
        path = tmp_path_factory.mktemp(compression) / f"agent-{compression}.tar"
        skopeo(
            "copy",
            "--quiet",
            "--dest-compress-format",
            compression,
            f"docker-archive:{samples['docker'].path}",
            f"oci-archive:{path}:{TAG}",
        )
        config = skopeo("inspect", "--raw", "--config", f"oci-archive:{path}")
        assert json.loads(config)["rootfs"]["diff_ids"] == list(samples["docker"].layers)
        out[compression] = (path, "sha256:" + hashlib.sha256(config).hexdigest())
    manifest = json.loads(skopeo("inspect", "--raw", f"oci-archive:{out['zstd'][0]}"))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_OCI_LAYER_ZSTD}
    return out


def pack(cli: Cli, keypair: KeyPair, archive: Path, out: Path) -> Path:
    r = cli("pack", f"oci-archive:{archive}", "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    return out


def install(cli: Cli, bundle: Path, keypair: KeyPair, *extra: str) -> tuple[int, dict[str, Any], str]:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--json", *extra)
    return r.code, (json.loads(r.out) if r.code == 0 else {}), r.err


@pytest.fixture
def engine(docker_client: docker.DockerClient, samples: Samples) -> Iterator[docker.DockerClient]:
    """The engine without the sample's layers (a held layer is not read at all) or its name."""
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    remove(docker_client, TAG)
    yield docker_client
    evict_images_sharing_layers(docker_client, samples["docker"].layers)


def layer_sizes(docker_archive: Path) -> list[int]:
    """The sizes of a docker-archive's layer tars."""
    with tarfile.open(docker_archive) as tar:
        return [m.size for m in tar.getmembers() if m.name.endswith("/layer.tar")]


def reads_zstd(client: docker.DockerClient) -> bool:
    """The oracle for this test only: Docker reads zstd layers from 23.0 on."""
    return int(str(client.version()["Version"]).split(".")[0]) >= 23


def test_zstd_image_loads_into_docker_decompressed_when_it_cannot_read_zstd(
    cli: Cli,
    keypair: KeyPair,
    compressed: dict[str, tuple[Path, str]],
    samples: Samples,
    engine: docker.DockerClient,
    tmp_path: Path,
) -> None:
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    before = {i.id for i in engine.images.list(all=True)}
    code, result, err = install(cli, bundle, keypair)
    assert code == 0, err
    assert result["images"][0]["image_id"] == image_id and result["images"][0]["action"] == "loaded"
    blobs = load_bundle(bundle).manifest.blobs
    config = next(b.size for b in blobs if b.digest == image_id)
    sent = result["bytes_streamed"]  # the layers decompressed (their tars, as the sample has them), or as they are
    assert sent == (sum(b.size for b in blobs) if reads_zstd(engine) else config + sum(layer_sizes(samples["docker"].path)))
    loaded = engine.images.get(TAG)
    assert loaded.id == image_id and loaded.attrs["RootFS"]["Layers"] == list(samples["docker"].layers)
    assert {i.id for i in engine.images.list(all=True)} == before | {image_id}  # the probe image went again


def test_damaged_part_of_a_zstd_layer_loads_nothing(
    cli: Cli, keypair: KeyPair, compressed: dict[str, tuple[Path, str]], engine: docker.DockerClient, tmp_path: Path
) -> None:
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    manifest = load_bundle(bundle).manifest
    biggest = max(manifest.images[0].layers, key=lambda layer: layer.size)
    part = manifest.parts_of(biggest.digest)[-1]
    data = bytearray((bundle / part.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / part.path).write_bytes(bytes(data))
    code, _, err = install(cli, bundle, keypair)
    assert code == 4 and part.path in err, err
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(image_id)


def test_gzip_image_loads_into_docker_as_it_is(
    cli: Cli, keypair: KeyPair, compressed: dict[str, tuple[Path, str]], engine: docker.DockerClient, tmp_path: Path
) -> None:
    path, image_id = compressed["gzip"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    code, result, err = install(cli, bundle, keypair)
    assert code == 0, err
    assert engine.images.get(TAG).id == image_id
    blobs = sum(b.size for b in load_bundle(bundle).manifest.blobs)
    assert result["bytes_streamed"] == blobs  # the gzip layers as they are (every Docker reads gzip), and the config


def test_docker_archive_of_a_zstd_image_loads_into_docker_and_reads_in_skopeo(
    cli: Cli, keypair: KeyPair, compressed: dict[str, tuple[Path, str]], engine: docker.DockerClient, tmp_path: Path
) -> None:
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    out = tmp_path / "agent.tar"
    code, _, err = install(cli, bundle, keypair, "--to", f"docker-archive:{out}")
    assert code == 0, err
    config = skopeo("inspect", "--raw", "--config", f"docker-archive:{out}")
    assert "sha256:" + hashlib.sha256(config).hexdigest() == image_id
    with open(out, "rb") as fh:
        assert [i.id for i in engine.images.load(fh)] == [image_id]


def test_registry_stores_zstd_layers_as_they_are(
    cli: Cli, keypair: KeyPair, compressed: dict[str, tuple[Path, str]], registry: PrivateRegistry, tmp_path: Path
) -> None:
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    code, result, err = install(cli, bundle, keypair, "--to", f"registry://{registry.host}/zstd")
    assert code == 0, err
    ref = result["images"][0]["location"]
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    layers = load_bundle(bundle).manifest.images[0].layers
    assert [(x["mediaType"], x["digest"]) for x in raw["layers"]] == [(MT_OCI_LAYER_ZSTD, x.digest) for x in layers]
    assert raw["config"]["digest"] == image_id
    again = tmp_path / "again"
    r = cli("pack", f"oci://{ref}", "-o", str(again), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    assert load_bundle(again).manifest.images[0].layers == layers


@pytest.fixture(scope="module")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman")) as service:
        yield service


def test_zstd_image_goes_into_podman_as_it_is(
    cli: Cli,
    keypair: KeyPair,
    compressed: dict[str, tuple[Path, str]],
    podman_service: PrivatePodman,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    podman_service.remove_all()
    monkeypatch.setenv("DOCKER_HOST", podman_service.docker_host)
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    code, result, err = install(cli, bundle, keypair)
    assert code == 0 and result["images"][0]["image_id"] == image_id, err
    assert result["bytes_streamed"] == sum(b.size for b in load_bundle(bundle).manifest.blobs)  # Podman reads zstd
    assert podman_service.names() == {f"localhost/{TAG}": image_id}
    assert podman_service.image_ids() == {image_id[7:]} or podman_service.image_ids() == {image_id}  # no probe image left


def test_zstd_image_goes_into_containerd_as_it_is(
    cli: Cli, keypair: KeyPair, compressed: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    path, image_id = compressed["zstd"]
    bundle = pack(cli, keypair, path, tmp_path / "b")
    with private_containerd(tmp_path_factory.mktemp("containerd")) as containerd:
        code, result, err = install(cli, bundle, keypair, "--to", containerd.target())
        assert code == 0, err
        assert result["images"][0]["image_id"] == image_id
        _checked_complete(containerd)
        manifest = json.loads(containerd.blob(next(iter(containerd.images().values()))))
        assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_OCI_LAYER_ZSTD}


def _checked_complete(containerd: PrivateContainerd) -> None:
    checked = containerd.checked()
    assert checked and all(status == "complete true" for status in checked.values()), checked
