"""End to end against a real Docker engine: pack from the engine, verify, install, tamper."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.engine import evict_images_sharing_layers, remove
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.docker


def load_archive(client: docker.DockerClient, archive: Path) -> None:
    with open(archive, "rb") as fh:
        for msg in client.api.load_image(fh, quiet=True):
            assert not msg.get("error"), msg


def image_ids(client: docker.DockerClient) -> set[str]:
    return {i.id for i in client.images.list(all=True)}


@pytest.fixture
def engine_bundle(cli, docker_client, samples, keypair, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The sample image loaded into the engine, packed from there, then removed from the engine."""
    sample = samples["docker"]
    remove(docker_client, sample.tag, sample.image_id)
    load_archive(docker_client, sample.path)
    out = tmp_path / "bundle"
    r = cli("pack", sample.tag, "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    remove(docker_client, sample.tag, sample.image_id)
    evict_images_sharing_layers(docker_client, sample.layers)
    return out, sample


def test_pack_verify_install_gives_same_image_id(cli, docker_client, engine_bundle, keypair) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0
    r = cli("install", str(out), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["images"][0]["image_id"] == sample.image_id
    assert result["images"][0]["action"] == "loaded"
    assert docker_client.images.get(sample.tag).id == sample.image_id
    again = cli("install", str(out), "--trust", str(keypair[1]), "--json")
    assert again.code == 0 and json.loads(again.out)["images"][0]["action"] == "already present"


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_flipped_byte_in_part_loads_nothing(cli, docker_client, engine_bundle, keypair, which: str) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    parts = load_bundle(out).manifest.parts
    part = {"first": parts[0], "middle": parts[len(parts) // 2], "last": parts[-1]}[which]
    path = out / part.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    before = image_ids(docker_client)
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 4, r.err
    assert part.path in r.err and "Traceback" not in r.err
    assert image_ids(docker_client) == before
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(sample.tag)


def test_missing_part_refused_before_streaming(cli, docker_client, engine_bundle, keypair) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    part = load_bundle(out).manifest.parts[-1]
    (out / part.path).unlink()
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 4 and part.path in r.err and "missing" in r.err
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(sample.tag)


def test_untrusted_bundle_not_installed(cli, docker_client, engine_bundle, other_keypair) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    r = cli("install", str(out), "--trust", str(other_keypair[1]))
    assert r.code == 5
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(sample.tag)


def test_existing_tag_not_moved_without_replace(cli, docker_client, engine_bundle, samples, keypair) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    other = samples["docker2"]
    load_archive(docker_client, other.path)
    docker_client.images.get(other.tag).tag(sample.tag)
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 7 and sample.tag in r.err and "--replace" in r.err
    assert docker_client.images.get(sample.tag).id == other.image_id
    r = cli("install", str(out), "--trust", str(keypair[1]), "--replace")
    assert r.code == 0, r.err
    assert docker_client.images.get(sample.tag).id == sample.image_id
    assert docker_client.images.get(other.tag).id == other.image_id
    remove(docker_client, other.tag)


def test_two_images_from_engine_share_layers(cli, docker_client, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one, two = samples["docker"], samples["docker2"]
    for s in (one, two):
        remove(docker_client, s.tag)
        load_archive(docker_client, s.path)
    out = tmp_path / "b"
    r = cli("pack", one.tag, two.tag, "-o", str(out), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    m = load_bundle(out).manifest
    assert {i.image_id for i in m.images} == {one.image_id, two.image_id}
    assert len(m.blobs) < sum(1 + len(i.layers) for i in m.images)  # the shared base layer is stored once
    remove(docker_client, one.tag, two.tag)
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert docker_client.images.get(one.tag).id == one.image_id
    assert docker_client.images.get(two.tag).id == two.image_id


def test_pack_of_image_not_in_engine_is_usage_error(cli, docker_host, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("pack", "airgap-test/never-built:0", "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    assert r.code == 2 and "airgap-test/never-built:0" in r.err


def test_docker_down_is_environment_error(cli, engine_bundle, keypair, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 6 and "Docker engine" in r.err and "DOCKER_HOST" in r.err and "Traceback" not in r.err
    r = cli("pack", sample.tag, "-o", str(tmp_path / "b2"), "--key", str(keypair[0]))
    assert r.code == 6


def test_cli_process_prints_plain_progress_when_not_a_terminal(docker_client, engine_bundle, keypair) -> None:  # type: ignore[no-untyped-def]
    out, sample = engine_bundle
    proc = subprocess.run(
        [sys.executable, "-m", "airgap", "install", str(out), "--trust", str(keypair[1])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "install: " in proc.stderr and "done in" in proc.stderr and "\r" not in proc.stderr
    assert f"loaded: {sample.tag}" in proc.stdout


def test_oci_archive_bundle_installs_into_docker(cli, docker_client, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sample = samples["oci"]
    remove(docker_client, sample.tag, sample.image_id)
    out = tmp_path / "b"
    assert cli("pack", f"oci-archive:{sample.path}", "-o", str(out), "--key", str(keypair[0])).code == 0
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert docker_client.images.get(sample.tag).id == sample.image_id
    remove(docker_client, sample.tag)


def test_gzip_layers_from_skopeo_install_into_docker(cli, docker_client, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    oci = tmp_path / "gz.tar"
    tag = "airgap-test/gz:1"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-compress", f"docker-archive:{samples['docker'].path}", f"oci-archive:{oci}:{tag}"],
        check=True,
        capture_output=True,
    )
    config = subprocess.run(
        ["skopeo", "inspect", "--raw", "--config", f"oci-archive:{oci}"], check=True, capture_output=True
    ).stdout
    out = tmp_path / "b"
    assert cli("pack", f"oci-archive:{oci}", "-o", str(out), "--key", str(keypair[0])).code == 0
    assert any(layer.media_type.endswith("+gzip") for layer in load_bundle(out).manifest.images[0].layers)
    remove(docker_client, tag)
    r = cli("install", str(out), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert docker_client.images.get(tag).id == "sha256:" + hashlib.sha256(config).hexdigest()
    remove(docker_client, tag)


def test_install_via_loopback_registry_gives_same_image_id_and_leaves_no_loopback_names(
    cli, docker_client, engine_bundle, keypair
) -> None:  # type: ignore[no-untyped-def]
    bundle, sample = engine_bundle
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--via", "registry", "--json")
    assert r.code == 0, r.err
    image = docker_client.images.get(sample.tag)
    assert image.id == sample.image_id
    assert image.tags == [sample.tag]
    assert not any("127.0.0.1" in d for d in image.attrs.get("RepoDigests") or [])
    assert not any("airgap-install" in t for i in docker_client.images.list() for t in i.tags)
    remove(docker_client, sample.tag, sample.image_id)


def test_install_via_loopback_registry_stops_at_a_damaged_part(cli, docker_client, engine_bundle, keypair) -> None:  # type: ignore[no-untyped-def]
    bundle, sample = engine_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    part = max(manifest["parts"], key=lambda p: p["size"])
    path = bundle / part["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    started = time.monotonic()
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--via", "registry")
    assert r.code == 4, r.err
    assert part["path"] in r.err
    assert time.monotonic() - started < 30  # the engine is not left retrying a blob that will never verify
    assert sample.image_id not in [i.id for i in docker_client.images.list(all=True)]
    assert not any("airgap-install" in t for i in docker_client.images.list() for t in i.tags)
