"""Multi-platform bundles written as archives, read back by the peers as they resolve them.

An oci-archive gives the name one entry pointing at an index of the platforms (as buildx, skopeo and
containerd's export write it): skopeo resolves it to this host's platform or the one asked, podman loads this
host's, containerd imports the index under the name.  A docker-archive cannot hold an index: it holds this
host's platform (or --platform's), which docker load, podman and skopeo all see under the name.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from airgap._internal.sources.base import host_default
from airgap.model.mediatypes import MT_OCI_INDEX
from tests.helpers.bundles import two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.containerd import PrivateContainerd, private_containerd
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair
from tests.helpers.podman import private_podman
from tests.helpers.samples import Sample

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/multi:1"


def skopeo(*args: str) -> bytes:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    done = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def config_digest(*args: str) -> str:
    return "sha256:" + hashlib.sha256(skopeo("inspect", "--raw", "--config", *args)).hexdigest()


@pytest.fixture
def multi(cli: Cli, keypair: KeyPair, tmp_path: Path) -> tuple[Path, dict[str, Sample]]:
    """A bundle with the tag for linux/amd64 and linux/arm64; the samples by architecture."""
    bundle, amd, arm = two_platform_pack(cli, keypair, tmp_path, TAG)
    return bundle, {"amd64": amd, "arm64": arm}


def write(cli: Cli, keypair: KeyPair, bundle: Path, target: str, *extra: str) -> None:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target, *extra)
    assert r.code == 0, r.err


def index_of(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return dict(json.load(io.BytesIO(member.read())))


def host_arch() -> str:
    return host_default().architecture


def test_oci_archive_names_an_index_that_skopeo_resolves_per_platform(
    cli: Cli, keypair: KeyPair, multi: tuple[Path, dict[str, Sample]], tmp_path: Path
) -> None:
    bundle, samples = multi
    out = tmp_path / "multi-oci.tar"
    write(cli, keypair, bundle, f"oci-archive:{out}")
    [entry] = index_of(out)["manifests"]  # type: ignore[misc]
    assert entry["mediaType"] == MT_OCI_INDEX
    name = entry["annotations"]["org.opencontainers.image.ref.name"]  # what skopeo looks the image up by
    raw = json.loads(skopeo("inspect", "--raw", f"oci-archive:{out}:{name}"))
    assert raw["mediaType"] == MT_OCI_INDEX and len(raw["manifests"]) == 2
    for arch, sample in samples.items():
        assert config_digest("--override-arch", arch, f"oci-archive:{out}:{name}") == sample.image_id
    assert config_digest(f"oci-archive:{out}:{name}") == samples[host_arch()].image_id


def test_oci_archive_loads_into_podman_as_this_hosts_image(
    cli: Cli, keypair: KeyPair, multi: tuple[Path, dict[str, Sample]], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bundle, samples = multi
    out = tmp_path / "multi-oci.tar"
    write(cli, keypair, bundle, f"oci-archive:{out}")
    with private_podman(tmp_path_factory.mktemp("podman")) as podman:
        podman.podman("load", "--input", str(out))
        assert samples[host_arch()].image_id in {f"sha256:{i}" if ":" not in i else i for i in podman.image_ids()}
        assert samples[host_arch()].image_id in podman.names().values()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    with private_containerd(tmp_path_factory.mktemp("containerd")) as service:
        yield service


def test_oci_archive_imports_into_containerd_as_an_index_under_the_name(
    cli: Cli, keypair: KeyPair, multi: tuple[Path, dict[str, Sample]], tmp_path: Path, containerd: PrivateContainerd
) -> None:
    bundle, _ = multi
    out = tmp_path / "multi-oci.tar"
    write(cli, keypair, bundle, f"oci-archive:{out}")
    containerd.remove_all("multi")
    [entry] = index_of(out)["manifests"]  # type: ignore[misc]
    containerd.ctr("images", "import", "--all-platforms", str(out), namespace="multi")
    images = containerd.images("multi")
    assert images == {entry["annotations"]["io.containerd.image.name"]: entry["digest"]}
    listed = containerd.ctr("images", "ls", namespace="multi").stdout
    assert MT_OCI_INDEX in listed and "linux/amd64,linux/arm64" in listed
    checked = containerd.checked("multi")
    assert checked and all(status.startswith("complete") for status in checked.values()), checked


@pytest.mark.parametrize("platform", [None, "linux/arm64"])
def test_docker_archive_holds_one_platform_that_every_peer_sees_under_the_name(
    cli: Cli,
    keypair: KeyPair,
    multi: tuple[Path, dict[str, Sample]],
    tmp_path: Path,
    docker_client: docker.DockerClient,
    platform: str | None,
) -> None:
    bundle, samples = multi
    out = tmp_path / "multi-docker.tar"
    write(cli, keypair, bundle, f"docker-archive:{out}", *(["--platform", platform] if platform else []))
    wanted = samples[platform.split("/")[1] if platform else host_arch()]
    assert config_digest(f"docker-archive:{out}") == wanted.image_id
    remove(docker_client, TAG)
    try:
        with open(out, "rb") as fh:
            assert [i.id for i in docker_client.images.load(fh)] == [wanted.image_id]
        assert docker_client.images.get(TAG).id == wanted.image_id
    finally:
        remove(docker_client, TAG, wanted.image_id)


def test_podman_loads_the_docker_archive_under_the_name(
    cli: Cli,
    keypair: KeyPair,
    multi: tuple[Path, dict[str, Sample]],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bundle, samples = multi
    out = tmp_path / "multi-docker.tar"
    write(cli, keypair, bundle, f"docker-archive:{out}")
    with private_podman(tmp_path_factory.mktemp("podman")) as podman:
        podman.podman("load", "--input", str(out))
        assert podman.names() == {f"localhost/{TAG}": samples[host_arch()].image_id}
