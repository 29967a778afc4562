"""End to end into a real containerd (``--to containerd://SOCKET``), started privately for this module.

The image goes in under the name the kubelet asks for, with the bundle's image ID (the config of the
manifest its name points at), complete and unpacked by ``ctr images check``; a second install changes
nothing; a name given to another image is not moved without --replace; a damaged part leaves neither an
image nor its blobs; another platform's image is refused unless asked for.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.format.reader import load_bundle
from airgap._internal.sinks.containerd import ContainerdAddress, Ctr, host_platform, kubelet_name
from airgap.errors import IntegrityError, UsageError
from airgap.model.manifest import Platform
from tests.helpers.bundles import full_full_delta, two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.containerd import PrivateContainerd, private_containerd
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples, delta_releases, sample_image

AGENT = "docker.io/airgap-test/agent:1.0"  # samples["docker"] (airgap-test/agent:1.0) as the kubelet asks for it


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    with private_containerd(tmp_path_factory.mktemp("containerd")) as service:
        yield service


@pytest.fixture(autouse=True)
def _empty_containerd(request: pytest.FixtureRequest) -> None:
    """Each test that uses containerd starts from an empty k8s.io namespace."""
    if "containerd" in request.fixturenames:
        request.getfixturevalue("containerd").remove_all()


def install(cli: Cli, bundle: Path, keypair: KeyPair, target: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", target, "--json", *extra)
    return r.code, (json.loads(r.out) if r.code == 0 else {}), r.err


def other_arch() -> str:
    return "arm64" if host_platform().architecture == "amd64" else "amd64"


def eventually_empty(containerd: PrivateContainerd, digests: set[str]) -> set[str]:
    """The digests still in the content store once containerd had a few seconds to collect garbage."""
    deadline = time.monotonic() + 10
    while (left := containerd.content() & digests) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --- names and addresses, no containerd needed --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("team/app:1", "docker.io/team/app:1"),
        ("docker.io/busybox:1", "docker.io/library/busybox:1"),
        ("index.docker.io/team/app:1", "docker.io/team/app:1"),
        ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("localhost/app:1", "localhost/app:1"),
        ("localhost:5000/team/app:1", "localhost:5000/team/app:1"),
        ("registry.example/team/app:1", "registry.example/team/app:1"),
        ("Registry/app:1", "Registry/app:1"),  # upper case: a host, as the Docker grammar reads it
    ],
)
def test_names_are_normalized_as_the_kubelet_asks_for_them(ref: str, name: str) -> None:
    assert kubelet_name(ref) == name


@pytest.mark.parametrize(
    ("value", "socket", "namespace"),
    [
        ("", "/run/containerd/containerd.sock", "k8s.io"),
        ("/run/k3s/containerd/containerd.sock", "/run/k3s/containerd/containerd.sock", "k8s.io"),
        ("?namespace=moby", "/run/containerd/containerd.sock", "moby"),
        ("/x/c.sock?namespace=team-a.prod", "/x/c.sock", "team-a.prod"),
    ],
)
def test_target_names_socket_and_namespace(value: str, socket: str, namespace: str) -> None:
    assert ContainerdAddress.parse(value) == ContainerdAddress(socket, namespace)


@pytest.mark.parametrize(
    "value",
    ["run/containerd.sock", "/x.sock?namespace=a/b", "/x.sock?namespace=", "/x.sock?ns=a", "/x.sock?namespace=a&namespace=b"],
)
def test_unreadable_target_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        ContainerdAddress.parse(value)


# --- against the private containerd -------------------------------------------------------------------------


def test_install_imports_image_under_kubelet_name_with_same_image_id(
    cli: Cli, containerd: PrivateContainerd, bundle: Path, samples: Samples, keypair: KeyPair
) -> None:
    sample = samples["docker"]
    code, result, err = install(cli, bundle, keypair, containerd.target())
    assert code == 0, err
    [image] = result["images"]
    assert image["action"] == "imported" and image["image_id"] == sample.image_id
    assert image["ref_names"] == [AGENT]
    names = containerd.images()
    assert list(names) == [AGENT]
    manifest = json.loads(containerd.blob(names[AGENT]))
    assert manifest["config"]["digest"] == sample.image_id
    assert containerd.checked() == {AGENT: "complete true"}

    code, again, err = install(cli, bundle, keypair, containerd.target())
    assert code == 0, err
    assert [i["action"] for i in again["images"]] == ["already present"]
    assert again["bytes_streamed"] == 0
    assert containerd.images() == names


def test_library_and_registry_names_as_the_kubelet_asks(
    cli: Cli, containerd: PrivateContainerd, keypair: KeyPair, tmp_path: Path
) -> None:
    box = sample_image.build(tmp_path / "box.tar", tag="airgap-test-box:1", model_size=1 << 16, app_size=1 << 16, seed="box")
    app = sample_image.build(
        tmp_path / "app.tar", tag="localhost:5000/team/app:1", model_size=1 << 16, app_size=1 << 16, seed="app"
    )
    out = tmp_path / "b"
    r = cli("pack", f"docker-archive:{box.path}", f"docker-archive:{app.path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    code, _, err = install(cli, out, keypair, containerd.target())
    assert code == 0, err
    names = containerd.images()
    assert set(names) == {"docker.io/library/airgap-test-box:1", "localhost:5000/team/app:1"}
    assert json.loads(containerd.blob(names["docker.io/library/airgap-test-box:1"]))["config"]["digest"] == box.image_id


def test_namespace_named_in_target_is_the_one_used(
    cli: Cli, containerd: PrivateContainerd, bundle: Path, keypair: KeyPair
) -> None:
    code, result, err = install(cli, bundle, keypair, containerd.target("airgap-test"))
    assert code == 0, err
    try:
        assert list(containerd.images("airgap-test")) == [AGENT]
        assert containerd.images() == {}
        assert result["images"][0]["location"].endswith("?namespace=airgap-test")
    finally:
        containerd.remove_all("airgap-test")


def test_name_given_to_another_image_exits_7_and_moves_nothing(
    cli: Cli, containerd: PrivateContainerd, bundle: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    other = samples["docker2"]
    other_bundle = tmp_path / "other"
    r = cli("pack", f"docker-archive:{other.path}", "-o", str(other_bundle), "--key", str(keypair[0]), "--name", "other")
    assert r.code == 0, r.err
    assert install(cli, other_bundle, keypair, containerd.target())[0] == 0
    containerd.ctr("images", "tag", "docker.io/airgap-test/agent:2.0", AGENT)
    before = containerd.images()

    code, _, err = install(cli, bundle, keypair, containerd.target())
    assert code == 7 and AGENT in err and "--replace" in err, err
    assert containerd.images() == before

    code, _, err = install(cli, bundle, keypair, containerd.target(), "--replace")
    assert code == 0, err
    after = containerd.images()
    assert json.loads(containerd.blob(after[AGENT]))["config"]["digest"] == samples["docker"].image_id
    assert after["docker.io/airgap-test/agent:2.0"] == before["docker.io/airgap-test/agent:2.0"]


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_flipped_byte_in_part_imports_nothing(
    cli: Cli, containerd: PrivateContainerd, bundle: Path, keypair: KeyPair, which: str
) -> None:
    manifest = load_bundle(bundle).manifest
    parts = manifest.parts
    part = {"first": parts[0], "middle": parts[len(parts) // 2], "last": parts[-1]}[which]
    path = bundle / part.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    code, _, err = install(cli, bundle, keypair, containerd.target())
    assert code == 4, err
    assert part.path in err and "Traceback" not in err
    assert containerd.images() == {}
    assert eventually_empty(containerd, {b.digest for b in manifest.blobs}) == set()


def _oci_bytes_cut(archive: Path, at: str) -> tuple[bytes, int]:
    """An oci-archive's bytes and where to cut them: at the header of index.json (a member boundary, the
    archive otherwise whole) or halfway through its largest blob."""
    data = archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    if at == "boundary":
        return data, next(m.offset for m in members if m.name == "index.json")
    big = max(members, key=lambda m: m.size)
    return data, big.offset_data + big.size // 2


@pytest.mark.parametrize("at", ["boundary", "mid-blob"])
def test_stream_cut_short_leaves_no_image_and_no_blobs(
    containerd: PrivateContainerd, samples: Samples, tmp_path: Path, at: str
) -> None:
    """What ctr does with a cut stream, whatever the place: it fails, creates no image, and its lease ends
    so the blobs it had stored are collected."""
    archive = samples["oci"].path
    data, cut = _oci_bytes_cut(archive, at)

    def stream() -> Iterator[bytes]:
        for i in range(0, cut, 1 << 16):
            yield data[i : min(i + (1 << 16), cut)]
        raise IntegrityError("part damaged (a test)")

    ctr = Ctr(ContainerdAddress(str(containerd.socket), "k8s.io"))
    with pytest.raises(IntegrityError, match="a test"):
        ctr.import_stream(stream(), host_platform())
    assert containerd.images() == {}
    with tarfile.open(archive) as tar:
        blobs = {"sha256:" + m.name.rsplit("/", 1)[1] for m in tar.getmembers() if m.name.startswith("blobs/sha256/")}
    assert eventually_empty(containerd, blobs) == set()


def test_other_platforms_image_refused_unless_asked_for(
    cli: Cli, containerd: PrivateContainerd, keypair: KeyPair, tmp_path: Path
) -> None:
    arch = other_arch()
    foreign = sample_image.build(
        tmp_path / "f.tar", tag="airgap-test/foreign:1", model_size=1 << 16, app_size=1 << 16, seed="foreign", arch=arch
    )
    out = tmp_path / "b"
    assert cli("pack", f"docker-archive:{foreign.path}", "-o", str(out), "--key", str(keypair[0])).code == 0

    code, _, err = install(cli, out, keypair, containerd.target())
    assert code == 2 and str(host_platform()) in err and "--platform" in err, err
    assert containerd.images() == {}

    code, _, err = install(cli, out, keypair, containerd.target(), "--platform", "linux/s390x")
    assert code == 2 and "s390x" in err, err
    assert containerd.images() == {}

    code, result, err = install(cli, out, keypair, containerd.target(), "--platform", f"linux/{arch}")
    assert code == 0, err
    assert result["images"][0]["image_id"] == foreign.image_id
    assert list(containerd.images()) == ["docker.io/airgap-test/foreign:1"]


def test_two_platform_bundle_imports_the_hosts_image(
    cli: Cli, containerd: PrivateContainerd, keypair: KeyPair, tmp_path: Path
) -> None:
    out, amd, arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/multi:1")
    host = {"amd64": amd, "arm64": arm}[host_platform().architecture]
    code, result, err = install(cli, out, keypair, containerd.target())
    assert code == 0, err
    assert [i["image_id"] for i in result["images"]] == [host.image_id]
    names = containerd.images()
    manifest = json.loads(containerd.blob(names["docker.io/airgap-test/multi:1"]))
    assert manifest["config"]["digest"] == host.image_id
    assert Platform.parse(result["images"][0]["platform"]).matches(host_platform())


def test_delta_takes_the_layers_it_leaves_out_from_its_base_bundle(
    cli: Cli, containerd: PrivateContainerd, keypair: KeyPair, tmp_path: Path
) -> None:
    old, new = delta_releases(tmp_path)
    full_old, _, delta = full_full_delta(cli, keypair, tmp_path, old, new, "airgap-test-delta", "1MiB")
    code, _, err = install(cli, delta, keypair, containerd.target())
    assert code == 2 and "--base" in err, err
    assert containerd.images() == {}
    code, result, err = install(cli, delta, keypair, containerd.target(), "--base", str(full_old))
    assert code == 0, err
    assert result["images"][0]["image_id"] == new.image_id
    assert containerd.checked() == {"docker.io/airgap-test/delta:1.1": "complete true"}


def test_no_containerd_at_the_socket_is_an_environment_error(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    code, _, err = install(cli, bundle, keypair, f"containerd://{tmp_path / 'none.sock'}")
    assert code == 6 and "none.sock" in err and "Traceback" not in err, err


def test_missing_ctr_is_an_environment_error(
    cli: Cli, containerd: PrivateContainerd, bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = install(cli, bundle, keypair, containerd.target())
    assert code == 6 and "ctr" in err and "apt-get install containerd" in err, err


def test_unreadable_target_exits_2(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    code, _, err = install(cli, bundle, keypair, "containerd://?namespace=a/b")
    assert code == 2 and "namespace" in err, err
