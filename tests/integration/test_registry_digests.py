"""Registry digests kept, against the real distribution registry, skopeo and a second Docker engine: an image index
that skopeo wrote (gzip layers, skopeo's own JSON) is packed from the registry with every platform, installed into
another repository, and served there byte for byte, so pulls pinned by the source's digests keep working."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from airgap._internal.sources.base import host_default
from tests.helpers.bundles import two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.containerd import private_containerd
from tests.helpers.keys import KeyPair
from tests.helpers.registries import PrivateRegistry

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/pinned:1"


def _skopeo(*args: str) -> bytes:
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    done = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _raw(ref: str) -> bytes:
    return _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def source_index(cli: Cli, keypair: KeyPair, tmp_path: Path, registry: PrivateRegistry) -> tuple[str, bytes, dict[str, str]]:
    """A two-platform index in the registry as skopeo writes it (layers recompressed with gzip): its reference,
    its bytes, and the configs (image IDs) by architecture."""
    bundle, amd, arm = two_platform_pack(cli, keypair, tmp_path, TAG)
    archive = tmp_path / "multi.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{archive}")
    assert r.code == 0, r.err
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        name = json.load(member)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    ref = f"{registry.host}/upstream/pinned:1"
    _skopeo(
        "copy", "--all", "--dest-tls-verify=false", "--dest-compress-format", "gzip", "--dest-compress",
        f"oci-archive:{archive}:{name}", f"docker://{ref}",
    )  # fmt: skip
    data = _raw(ref)
    return ref, data, {"amd64": amd.image_id, "arm64": arm.image_id}


def test_index_packed_with_every_platform_is_served_by_the_mirror_under_its_source_digest(
    cli: Cli, keypair: KeyPair, tmp_path: Path, registry: PrivateRegistry, source_index: tuple[str, bytes, dict[str, str]],
    second_engine: str,
) -> None:  # fmt: skip
    ref, data, configs = source_index
    index = json.loads(data)
    assert index["manifests"] and "gzip" in _raw(f"{ref.rpartition(':')[0]}@{index['manifests'][0]['digest']}").decode()
    bundle = tmp_path / "from-registry"
    r = cli("pack", f"oci://{ref}", "--platform", "all", "-o", str(bundle), "--key", str(keypair[0]), "--name", "all")
    assert r.code == 0, r.err
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/mirror", "--json")
    assert r.code == 0, r.err
    assert {image["manifest_digest"] for image in json.loads(r.out)["images"]} == {_sha(data)}
    mirror = f"{registry.host}/mirror/upstream/pinned"
    assert _raw(f"{mirror}:1") == data  # byte for byte: the tag names the source's index digest
    for entry in index["manifests"]:  # each platform's manifest, by the digest the source gave it
        assert _sha(_raw(f"{mirror}@{entry['digest']}")) == entry["digest"]
    other = docker.DockerClient(base_url=second_engine, timeout=300)
    try:  # a deployment pinned by the source's index digest pulls from the mirror
        pulled = other.images.pull(f"{mirror}@{_sha(data)}")
        assert pulled.id in configs.values()
        other.images.remove(pulled.id, force=True)
    finally:
        other.close()


def test_one_platform_packed_keeps_its_manifest_digest_and_the_mirror_tag_names_it(
    cli: Cli, keypair: KeyPair, tmp_path: Path, registry: PrivateRegistry, source_index: tuple[str, bytes, dict[str, str]]
) -> None:
    ref, data, configs = source_index
    arm = next(e for e in json.loads(data)["manifests"] if e["platform"]["architecture"] == "arm64")
    bundle = tmp_path / "arm-only"
    r = cli("pack", f"oci://{ref}", "--platform", "linux/arm64", "-o", str(bundle), "--key", str(keypair[0]), "--name", "arm")
    assert r.code == 0, r.err
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/one", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["manifest_digest"] == arm["digest"]
    pushed = _raw(f"{registry.host}/one/upstream/pinned:1")
    assert _sha(pushed) == arm["digest"] and json.loads(pushed)["config"]["digest"] == configs["arm64"]


@pytest.fixture
def host_bundle(
    cli: Cli, keypair: KeyPair, tmp_path: Path, source_index: tuple[str, bytes, dict[str, str]]
) -> Iterator[tuple[Path, str, str]]:
    """This host's platform packed from the skopeo-written index: the bundle, that platform's source manifest
    digest, and its image ID."""
    ref, data, configs = source_index
    arch = host_default().architecture
    entry = next(e for e in json.loads(data)["manifests"] if e["platform"]["architecture"] == arch)
    bundle = tmp_path / "host"
    r = cli("pack", f"oci://{ref}", "-o", str(bundle), "--key", str(keypair[0]), "--name", "host")
    assert r.code == 0, r.err
    yield bundle, entry["digest"], configs[arch]


def test_containerd_import_keeps_the_registry_manifest_digest_so_digest_pins_resolve(
    cli: Cli, keypair: KeyPair, tmp_path: Path, host_bundle: tuple[Path, str, str]
) -> None:
    bundle, digest, image_id = host_bundle
    with private_containerd(tmp_path / "containerd") as containerd:
        r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", containerd.target())
        assert r.code == 0, r.err
        images = containerd.images()
        assert images and set(images.values()) == {digest}  # the name's target is the source's manifest
        assert json.loads(containerd.blob(digest))["config"]["digest"] == image_id
        assert all(state == "complete true" for state in containerd.checked().values()), containerd.checked()


def test_oci_archive_keeps_the_registry_manifest_bytes_for_skopeo_and_umoci(
    cli: Cli, keypair: KeyPair, tmp_path: Path, host_bundle: tuple[Path, str, str]
) -> None:
    bundle, digest, image_id = host_bundle
    archive = tmp_path / "out.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{archive}")
    assert r.code == 0, r.err
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        (entry,) = json.load(member)["manifests"]
        blob = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert blob is not None and _sha(blob.read()) == digest
    assert entry["digest"] == digest
    name = entry["annotations"]["org.opencontainers.image.ref.name"]
    assert _sha(_skopeo("inspect", "--raw", f"oci-archive:{archive}:{name}")) == digest
    assert _sha(_skopeo("inspect", "--raw", "--config", f"oci-archive:{archive}:{name}")) == image_id
