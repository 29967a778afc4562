"""Image names against the real peers: one reading of a name (Docker's reference grammar) from pack to every target.

- a registry on an IPv6 loopback address (``[::1]:PORT``) and one spelled ``LocalHost``: pack signs the name
  and the bundle verifies and installs (the model accepts exactly what pack signs; loopback in any spelling
  talks plain HTTP);
- ``--to oci-archive:`` names: ``io.containerd.image.name`` is the normalized name and every
  ``org.opencontainers.image.ref.name`` selects one image, read back by containerd's ``ctr images import``,
  podman (``load``, ``pull oci-archive:PATH:REF``) and skopeo, with tags of their own and with a shared tag;
- two images whose names differ only in their registry host are refused for one registry prefix, naming
  both, unless ``--keep-host`` keeps the hosts apart in the path.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.clients.distribution import Registry
from airgap.model.reference import Reference
from tests.helpers.cli import Cli
from tests.helpers.containerd import PrivateContainerd, private_containerd
from tests.helpers.engine import unavailable
from tests.helpers.keys import KeyPair
from tests.helpers.podman import PrivatePodman, private_podman
from tests.helpers.registries import PrivateRegistry
from tests.helpers.samples import Sample, Samples, sample_image

AGENT = "airgap-test/agent:1.0"  # samples["docker"]


# --- peers of this module ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ipv6_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's distribution registry listening on [::1] only: its HOST:PORT, ``[::1]:PORT``."""
    if not shutil.which("docker-registry"):
        unavailable("docker-registry is not installed (.ci/run installs it)")
    directory = tmp_path_factory.mktemp("ipv6-registry")
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    config = directory / "config.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {directory / 'storage'}}}\n"
        f'http:\n  addr: "[::1]:{port}"\n'
    )
    log = open(directory / "registry.log", "wb")  # noqa: SIM115 - closed when the registry stops
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("::1", port), 1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"the registry did not listen on [::1]:{port}: {(directory / 'registry.log').read_text()[-500:]}")
                time.sleep(0.2)
        yield f"[::1]:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    with private_containerd(tmp_path_factory.mktemp("containerd")) as service:
        yield service


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman")) as service:
        yield service


def packed(cli: Cli, keypair: KeyPair, out: Path, *sources: str) -> Path:
    r = cli("pack", *sources, "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    return out


def small_image(directory: Path, tag: str, seed: str) -> Sample:
    return sample_image.build(directory / f"{seed}.tar", tag=tag, model_size=1 << 16, app_size=1 << 14, seed=seed)


# --- a registry on [::1], and one spelled LocalHost -------------------------------------------------------------


def test_pack_from_an_ipv6_registry_signs_a_name_the_bundle_keeps(
    cli: Cli, ipv6_registry: str, registry: PrivateRegistry, bundle: Path, keypair: KeyPair, samples: Samples, tmp_path: Path
) -> None:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{ipv6_registry}/v6")
    assert r.code == 0, r.err
    name = f"{ipv6_registry}/v6/{AGENT}"
    out = tmp_path / "from-v6"
    r = cli("pack", f"oci://{name}", "-o", str(out), "--key", str(keypair[0]), "--name", "from-v6", "--json")
    assert r.code == 0, r.err
    (image,) = json.loads(r.out)["images"]
    assert image["ref_names"] == [name] and image["image_id"] == samples["docker"].image_id
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0  # the model reads back what pack signed
    r = cli("install", str(out), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/from-v6", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["location"] == f"{registry.host}/from-v6/v6/{AGENT}"


def test_localhost_in_any_case_is_a_loopback_registry_spoken_to_in_plain_http(
    cli: Cli, registry: PrivateRegistry, bundle: Path, keypair: KeyPair, samples: Samples, tmp_path: Path
) -> None:
    port = registry.host.rpartition(":")[2]
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://LocalHost:{port}/mixed-case")
    assert r.code == 0, r.err
    name = f"LocalHost:{port}/mixed-case/{AGENT}"
    out = tmp_path / "from-localhost"
    r = cli("pack", f"oci://{name}", "-o", str(out), "--key", str(keypair[0]), "--name", "from-localhost", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["ref_names"] == [name]
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0


# --- oci-archive names, read by containerd, podman and skopeo -------------------------------------------------


def index_of(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return list(json.load(io.TextIOWrapper(member))["manifests"])


def manifest_config(archive: Path, digest: str) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert member is not None
        return str(json.load(member)["config"]["digest"])


@pytest.fixture(scope="module")
def three_images(tmp_path_factory: pytest.TempPathFactory, samples: Samples) -> dict[str, Sample]:
    """agent:1.0 and agent:2.0 (tags of their own), and web:1.0, which shares agent's tag 1.0."""
    d = tmp_path_factory.mktemp("three")
    return {
        AGENT: samples["docker"],
        "airgap-test/agent:2.0": samples["docker2"],
        "airgap-test/web:1.0": small_image(d, "airgap-test/web:1.0", "web"),
    }


def written_archive(cli: Cli, keypair: KeyPair, tmp_path: Path, images: dict[str, Sample], name: str) -> Path:
    bundle = packed(cli, keypair, tmp_path / f"{name}-bundle", *(f"docker-archive:{s.path}" for s in images.values()))
    archive = tmp_path / f"{name}.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{archive}")
    assert r.code == 0, r.err
    return archive


@pytest.mark.parametrize(
    ("names", "selectors", "namespace"),
    [
        ((AGENT, "airgap-test/agent:2.0"), {AGENT: "1.0", "airgap-test/agent:2.0": "2.0"}, "own-tags"),  # as containerd exports
        (
            (AGENT, "airgap-test/web:1.0"),  # one tag, two images: the full names, as podman saves
            {AGENT: f"docker.io/{AGENT}", "airgap-test/web:1.0": "docker.io/airgap-test/web:1.0"},
            "shared-tag",
        ),
    ],
    ids=["own-tags", "shared-tag"],
)
def test_oci_archive_names_resolve_one_image_each_in_containerd_podman_and_skopeo(
    cli: Cli,
    keypair: KeyPair,
    tmp_path: Path,
    three_images: dict[str, Sample],
    containerd: PrivateContainerd,
    podman: PrivatePodman,
    names: tuple[str, ...],
    selectors: dict[str, str],
    namespace: str,
) -> None:
    images = {n: three_images[n] for n in names}
    archive = written_archive(cli, keypair, tmp_path, images, "names")
    entries = index_of(archive)
    by_name = {e["annotations"]["io.containerd.image.name"]: e for e in entries}
    expected = {Reference.parse(n).normalized(): s for n, s in images.items()}
    assert set(by_name) == set(expected)  # normalized, as containerd's export writes them
    for name, sample in expected.items():
        assert manifest_config(archive, by_name[name]["digest"]) == sample.image_id
    assert {Reference.parse(n).normalized(): sel for n, sel in selectors.items()} == {
        n: e["annotations"]["org.opencontainers.image.ref.name"] for n, e in by_name.items()
    }

    containerd.ctr("images", "import", str(archive), namespace=namespace)
    found = containerd.images(namespace)
    for name, sample in expected.items():  # every name where the kubelet looks, on the manifest of its image
        assert found[name] == by_name[name]["digest"]
        assert json.loads(containerd.blob(found[name], namespace))["config"]["digest"] == sample.image_id

    podman.remove_all()
    for name, sample in expected.items():
        selector = by_name[name]["annotations"]["org.opencontainers.image.ref.name"]
        inspected = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{archive}:{selector}"], capture_output=True, text=True, check=False
        )
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(inspected.stdout)["config"]["digest"] == sample.image_id
        podman.podman("pull", "--quiet", f"oci-archive:{archive}:{selector}")
    assert {n: i for n, i in podman.names().items() if n in expected} == {n: s.image_id for n, s in expected.items()}


def test_podman_loads_a_one_image_oci_archive_under_its_normalized_name(
    cli: Cli, keypair: KeyPair, tmp_path: Path, samples: Samples, podman: PrivatePodman
) -> None:
    archive = written_archive(cli, keypair, tmp_path, {AGENT: samples["docker"]}, "one")
    podman.remove_all()
    podman.podman("load", "--quiet", "--input", str(archive))
    assert podman.names() == {f"docker.io/{AGENT}": samples["docker"].image_id}


# --- names that differ only in their registry host -------------------------------------------------------------


def host_bundle(cli: Cli, keypair: KeyPair, tmp_path: Path) -> tuple[Path, Sample, Sample]:
    """Two different images named reg1.example:5000/team/app:1 and reg2.example:5000/team/app:1, in one bundle."""
    one = small_image(tmp_path, "reg1.example:5000/team/app:1", "host-one")
    two = small_image(tmp_path, "reg2.example:5000/team/app:1", "host-two")
    assert one.image_id != two.image_id
    return packed(cli, keypair, tmp_path / "hosts", f"docker-archive:{one.path}", f"docker-archive:{two.path}"), one, two


def test_names_differing_only_in_host_are_refused_for_one_prefix_naming_both(
    cli: Cli, keypair: KeyPair, tmp_path: Path, registry: PrivateRegistry
) -> None:
    bundle, _, _ = host_bundle(cli, keypair, tmp_path)
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/collide")
    assert r.code == 2 and "Traceback" not in r.err
    assert "reg1.example:5000/team/app:1" in r.err and "reg2.example:5000/team/app:1" in r.err
    assert f"{registry.host}/collide/team/app:1" in r.err and "--keep-host" in r.err
    assert registry.requests_seen("PUT", "/collide/") == 0 and registry.requests_seen("POST", "/collide/") == 0


def test_keep_host_pushes_each_image_under_its_own_host(
    cli: Cli, keypair: KeyPair, tmp_path: Path, registry: PrivateRegistry
) -> None:
    bundle, one, two = host_bundle(cli, keypair, tmp_path)
    r = cli(
        "install", str(bundle), "--trust", str(keypair[1]), "--to", f"registry://{registry.host}/kept", "--keep-host", "--json"
    )
    assert r.code == 0, r.err
    locations = {i["image_id"]: i["location"] for i in json.loads(r.out)["images"]}
    assert locations == {
        one.image_id: f"{registry.host}/kept/reg1.example_5000/team/app:1",
        two.image_id: f"{registry.host}/kept/reg2.example_5000/team/app:1",
    }
    with Registry(registry.host) as client:
        for sample, repo in ((one, "kept/reg1.example_5000/team/app"), (two, "kept/reg2.example_5000/team/app")):
            got = client.get_manifest(repo, "1")
            assert got is not None and json.loads(got[0])["config"]["digest"] == sample.image_id
