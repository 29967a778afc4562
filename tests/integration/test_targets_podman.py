"""End to end into Podman through its Docker-compatible API (DOCKER_HOST=unix://.../podman.sock), the way
RHEL-family hosts run it: a private ``podman system service`` started for this module.

The same behaviour as with dockerd: the bundle's image ID and tag (Podman keeps a short name under
``localhost/``, and resolves the short name to it), a second install does nothing, a tag naming another
image is not moved without --replace, a damaged part loads nothing and leaves no upload behind, another
platform is refused unless asked for.  Podman differs where its load needs every layer in the upload and
its export names layers by diff ID: images sharing layers, and deltas, are covered for that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.bundles import full_full_delta, two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.podman import PrivatePodman, private_podman
from tests.helpers.samples import Samples, delta_releases, sample_image

AGENT = "localhost/airgap-test/agent:1.0"  # samples["docker"] (airgap-test/agent:1.0) as Podman names a loaded short name


@pytest.fixture(scope="module")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman")) as service:
        yield service


@pytest.fixture
def podman(podman_service: PrivatePodman, monkeypatch: pytest.MonkeyPatch) -> PrivatePodman:
    """The service, empty, with DOCKER_HOST pointing at it for the test."""
    podman_service.remove_all()
    monkeypatch.setenv("DOCKER_HOST", podman_service.docker_host)
    return podman_service


@pytest.fixture
def compat(podman: PrivatePodman) -> Iterator[docker.DockerClient]:
    """A Docker client talking to Podman, as docker-compose or the docker CLI would."""
    client = docker.DockerClient(base_url=podman.docker_host, timeout=120)
    yield client
    client.close()


def install(cli: Cli, bundle: Path, keypair: KeyPair, *extra: str) -> tuple[int, dict[str, Any], str]:
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--json", *extra)
    return r.code, (json.loads(r.out) if r.code == 0 else {}), r.err


def pack(cli: Cli, keypair: KeyPair, out: Path, *archives: Path, name: str | None = None) -> Path:
    args = [f"docker-archive:{a}" for a in archives]
    r = cli("pack", *args, "-o", str(out), "--key", str(keypair[0]), *(["--name", name] if name else []))
    assert r.code == 0, r.err
    return out


def test_install_into_podman_gives_same_image_id_and_tag(
    cli: Cli, podman: PrivatePodman, compat: docker.DockerClient, bundle: Path, samples: Samples, keypair: KeyPair
) -> None:
    sample = samples["docker"]
    code, result, err = install(cli, bundle, keypair)
    assert code == 0, err
    [image] = result["images"]
    assert image["action"] == "loaded" and image["image_id"] == sample.image_id
    assert podman.names() == {AGENT: sample.image_id}
    assert compat.images.get(sample.tag).id == sample.image_id  # the short name, as Docker clients ask

    code, again, err = install(cli, bundle, keypair)
    assert code == 0, err
    assert [i["action"] for i in again["images"]] == ["already present"]
    assert again["bytes_streamed"] == 0


def test_image_sharing_layers_with_one_podman_holds_loads(
    cli: Cli, podman: PrivatePodman, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    """Podman's load wants every layer in the upload, even one it holds (dockerd skips those)."""
    one, two = samples["docker"], samples["docker2"]
    assert set(one.layers) & set(two.layers)
    first = pack(cli, keypair, tmp_path / "one", one.path, name="one")
    second = pack(cli, keypair, tmp_path / "two", two.path, name="two")
    assert install(cli, first, keypair)[0] == 0
    code, result, err = install(cli, second, keypair)
    assert code == 0, err
    assert result["images"][0]["image_id"] == two.image_id
    assert podman.names() == {AGENT: one.image_id, "localhost/airgap-test/agent:2.0": two.image_id}


def test_tag_naming_another_image_exits_7_and_moves_nothing(
    cli: Cli, podman: PrivatePodman, compat: docker.DockerClient, bundle: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    mine, other = samples["docker"], samples["docker2"]
    assert install(cli, pack(cli, keypair, tmp_path / "other", other.path, name="other"), keypair)[0] == 0
    podman.podman("tag", other.image_id, AGENT)

    code, _, err = install(cli, bundle, keypair)
    assert code == 7 and mine.tag in err and "--replace" in err, err
    assert podman.names() == {AGENT: other.image_id, "localhost/airgap-test/agent:2.0": other.image_id}

    code, _, err = install(cli, bundle, keypair, "--replace")
    assert code == 0, err
    assert podman.names() == {AGENT: mine.image_id, "localhost/airgap-test/agent:2.0": other.image_id}
    assert compat.images.get(mine.tag).id == mine.image_id


def test_tag_held_under_docker_io_counts_as_the_same_name(
    cli: Cli, podman: PrivatePodman, compat: docker.DockerClient, bundle: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    """``airgap-test/agent:1.0`` is ``docker.io/airgap-test/agent:1.0`` to Docker, and Podman resolves the short
    name to it: an image under that name is not replaced silently."""
    other = samples["docker2"]
    assert install(cli, pack(cli, keypair, tmp_path / "other", other.path, name="other"), keypair)[0] == 0
    podman.podman("tag", other.image_id, "docker.io/airgap-test/agent:1.0")
    code, _, err = install(cli, bundle, keypair)
    assert code == 7 and "--replace" in err, err
    assert podman.names()["docker.io/airgap-test/agent:1.0"] == other.image_id


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_flipped_byte_in_part_loads_nothing_into_podman(
    cli: Cli, podman: PrivatePodman, bundle: Path, keypair: KeyPair, which: str
) -> None:
    parts = load_bundle(bundle).manifest.parts
    part = {"first": parts[0], "middle": parts[len(parts) // 2], "last": parts[-1]}[which]
    path = bundle / part.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    code, _, err = install(cli, bundle, keypair)
    assert code == 4, err
    assert part.path in err and "Traceback" not in err
    assert podman.image_ids() == set()
    assert podman.temporary_files() == []  # the buffered upload is gone


def test_other_platform_refused_and_host_platform_chosen(
    cli: Cli, podman: PrivatePodman, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    out, amd, arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/multi:1")
    code, _, err = install(cli, out, keypair, "--platform", "linux/s390x")
    assert code == 2 and "s390x" in err, err
    assert podman.image_ids() == set()
    code, result, err = install(cli, out, keypair)
    assert code == 0, err
    host = amd if result["images"][0]["platform"] == "linux/amd64" else arm
    assert podman.names() == {"localhost/airgap-test/multi:1": host.image_id}


def test_via_registry_refused_for_podman(cli: Cli, podman: PrivatePodman, bundle: Path, keypair: KeyPair) -> None:
    code, _, err = install(cli, bundle, keypair, "--via", "registry")
    assert code == 2 and "Podman" in err and "--via load" in err, err
    assert podman.image_ids() == set()


def test_delta_takes_base_layers_from_podmans_export(cli: Cli, podman: PrivatePodman, keypair: KeyPair, tmp_path: Path) -> None:
    """The layers a delta leaves out come from Podman's own export of the base release (its layout names
    layers ``<diff id>.tar``), each checked against its digest."""
    old, new = delta_releases(tmp_path)
    full_old, _, delta = full_full_delta(cli, keypair, tmp_path, old, new, "airgap-test-delta", "1MiB")
    assert install(cli, full_old, keypair)[0] == 0
    code, result, err = install(cli, delta, keypair)
    assert code == 0, err
    assert result["images"][0]["image_id"] == new.image_id
    assert result["layers_from_engine"] >= 1
    assert podman.names()["localhost/airgap-test/delta:1.1"] == new.image_id


def test_untagged_loopback_name_is_not_an_error(podman: PrivatePodman, compat: docker.DockerClient) -> None:
    """Podman answers a missing name with "image not known" (a plain 404, not Docker's "No such image")."""
    from airgap._internal.clients.docker import Engine

    with Engine.connect() as engine:
        assert engine.is_podman()
        engine.untag("127.0.0.1:1/airgap-install/none:image0")
        assert engine.inspect("airgap-test/none:1") is None


def test_a_foreign_single_platform_bundle_loads_with_a_note(
    cli: Cli, podman: PrivatePodman, keypair: KeyPair, tmp_path: Path
) -> None:
    """As with dockerd: a bundle with one platform only loads on any engine, with a note."""
    arm = sample_image.build(
        tmp_path / "arm.tar", tag="airgap-test/arm:1", model_size=1 << 16, app_size=1 << 16, seed="arm", arch="s390x"
    )
    out = pack(cli, keypair, tmp_path / "b", arm.path)
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert podman.names() == {"localhost/airgap-test/arm:1": arm.image_id}
