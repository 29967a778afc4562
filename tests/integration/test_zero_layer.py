"""Images without layers (``FROM scratch`` and metadata only), from and to the real peers.

Docker builds, pushes and loads them; its export refuses them ("empty export", ``docker save`` too), so pack
has the engine push them to a receiver of its own on 127.0.0.1 and keeps the config only when its sha256 is
the image ID.  From the engine, a registry or an archive they pack, and every target takes them: the Docker
engine, install.sh, Podman, containerd, a registry (another Docker engine pulls the same image ID), and both
archive kinds, which skopeo reads.
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
import docker.errors
import pytest
import requests

from airgap._internal.clients.docker import Engine
from airgap._internal.format.reader import load_bundle
from airgap._internal.sources.engine import MAX_RECEIVED, PushReceiver
from tests.helpers.cli import Cli
from tests.helpers.containerd import private_containerd
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair
from tests.helpers.podman import private_podman
from tests.helpers.registries import PrivateRegistry
from tests.helpers.samples import Samples
from tests.helpers.tools import run_sh

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/scratch:1"
AGENT = "airgap-test/agent:1.0"  # samples["docker"]
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


def test_docker_save_refuses_it_so_the_engine_source_cannot_rely_on_the_export(
    docker_client: docker.DockerClient, scratch: tuple[str, str]
) -> None:
    try:
        b"".join(docker_client.api.get_image(TAG))  # GET /images/get, what docker save calls
    except docker.errors.APIError as e:
        assert "empty export" in str(e.explanation)
    else:  # an engine whose export takes such images: the push below is then never needed
        assert int(str(docker_client.version()["Version"]).split(".")[0]) >= 25


def test_engine_source_packs_it_with_its_id_through_the_engines_push(
    cli: Cli,
    keypair: KeyPair,
    scratch: tuple[str, str],
    samples: Samples,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    with samples["docker"].path.open("rb") as fh:  # packed together with an image that has layers
        docker_client.images.load(fh.read())
    try:
        r = cli("pack", TAG, AGENT, "-o", str(tmp_path / "b"), "--key", str(keypair[0]), "--json")
    finally:
        remove(docker_client, AGENT, samples["docker"].image_id)
    assert r.code == 0, r.err
    packed = {i["image_id"]: i["ref_names"] for i in json.loads(r.out)["images"]}
    assert packed == {scratch[0]: [TAG], samples["docker"].image_id: [AGENT]}
    [image] = [i for i in load_bundle(tmp_path / "b").manifest.images if i.image_id == scratch[0]]
    assert image.layers == () and image.diff_ids == ()
    assert cli("verify", str(tmp_path / "b"), "--trust", str(keypair[1])).code == 0
    # the engine keeps no name of airgap's receiver, neither a tag nor a digest
    inspected = docker_client.api.inspect_image(scratch[0])
    assert inspected["RepoTags"] == [TAG] and not inspected["RepoDigests"]
    # and the bundle installs the same image ID into an engine that lacks it
    remove(docker_client, TAG, scratch[0], scratch[1])
    code, result, err = install(cli, tmp_path / "b", keypair)
    assert code == 0, err
    assert {i["image_id"]: i["action"] for i in result["images"]}[scratch[0]] == "loaded"
    assert docker_client.images.get(TAG).id == scratch[0]


def test_engine_on_another_host_is_refused_naming_the_registry_route(
    cli: Cli,
    keypair: KeyPair,
    scratch: tuple[str, str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Engine, "is_local", lambda _self: False)  # as DOCKER_HOST=tcp://build-host:2376 would be
    r = cli("pack", TAG, "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    if r.code == 0:  # an engine whose export takes such images needs no push
        assert int(str(docker_client.version()["Version"]).split(".")[0]) >= 25
        return
    assert r.code == 6, r.err
    assert "without layers" in r.err and TAG in r.err and "not on this host" in r.err and "oci://" in r.err
    assert "dockerd running" not in r.err and "Traceback" not in r.err
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_push_receiver_keeps_only_blobs_whose_digest_matches_and_bounds_what_it_takes() -> None:
    config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    right = "sha256:" + hashlib.sha256(config).hexdigest()
    lying = "sha256:" + hashlib.sha256(b"another config").hexdigest()
    with PushReceiver() as receiver, requests.Session() as http:
        root = f"http://{receiver.repository.partition('/')[0]}"
        repo = f"{root}/v2/{receiver.repo}"
        assert http.get(f"{root}/v2/").status_code == 200
        started = http.post(f"{repo}/blobs/uploads/")
        assert started.status_code == 202
        upload = root + started.headers["Location"]
        assert http.patch(upload, data=iter([config])).status_code == 202  # chunked, as dockerd sends it
        assert http.put(f"{upload}?digest={lying}").status_code == 400
        assert receiver.blob(lying) is None and receiver.blob(right) is None
        upload = root + http.post(f"{repo}/blobs/uploads/").headers["Location"]
        assert http.put(f"{upload}?digest={right}", data=config).status_code == 201
        assert receiver.blob(right) == config
        assert http.head(f"{repo}/blobs/{right}").headers["Content-Length"] == str(len(config))
        assert http.post(f"{root}/v2/airgap-pack/another/blobs/uploads/").status_code == 404  # one repository only
        upload = root + http.post(f"{repo}/blobs/uploads/").headers["Location"]
        assert http.patch(upload, data=b"\0" * (MAX_RECEIVED + 1)).status_code == 413


def test_push_receiver_bound_is_not_lowered_by_a_negative_length_or_garbage() -> None:
    import http.client
    import socket

    with PushReceiver() as receiver:
        host, _, port = receiver.repository.partition("/")[0].partition(":")
        path = f"/v2/{receiver.repo}/blobs/uploads/"
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(-(1 << 40)))
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        assert receiver.received == 0
        with socket.create_connection((host, int(port)), timeout=10) as raw:  # a malformed chunk: the connection ends
            raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode())
            raw.recv(100)
        with requests.Session() as session:  # the receiver still answers, and still bounds what it takes
            upload = f"http://{host}:{port}" + session.post(f"http://{host}:{port}{path}").headers["Location"]
            assert session.patch(upload, data=b"\0" * (MAX_RECEIVED + 1)).status_code == 413


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
