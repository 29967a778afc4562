"""Media: a bundle split into vol-NN folders installs gathering its parts from several mount points (--from)
without copying them, and publishes and pulls as one bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.bundles import files_under, pack_split
from tests.helpers.engine import remove
from tests.helpers.tools import run_sh


@pytest.fixture
def split_bundle(cli, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, out, "1MiB", "3MiB")
    assert r.code == 0, r.err
    return out


@pytest.mark.docker
def test_install_gathers_parts_from_several_mount_points(
    cli, split_bundle: Path, keypair, samples, docker_client, tmp_path
) -> None:
    sample = samples["docker"]
    remove(docker_client, sample.tag, sample.image_id)
    mounts = []
    for volume in sorted(split_bundle.iterdir()):  # each medium mounted somewhere of its own
        mount = tmp_path / "media" / f"usb-{volume.name[-2:]}"
        mount.parent.mkdir(exist_ok=True)
        shutil.move(str(volume), mount)
        mounts.append(mount)
    try:
        r = cli("install", str(mounts[1]), "--trust", str(keypair[1]))  # not the first medium
        assert r.code == 3, r.err
        r = cli("install", str(mounts[0]), "--trust", str(keypair[1]), "--from", str(mounts[1]))
        assert r.code == 4 and "mount the medium labelled vol-03" in r.err, r.err
        assert sample.image_id not in [i.id for i in docker_client.images.list(all=True)]
        args = [a for m in mounts[1:] for a in ("--from", str(m))]
        r = cli("install", str(mounts[0]), "--trust", str(keypair[1]), *args)
        assert r.code == 0, r.err
        assert docker_client.images.get(sample.tag).id == sample.image_id
        remove(docker_client, sample.tag, sample.image_id)
        done = run_sh(mounts[0], "--trust", str(keypair[1]), *args)
        assert done.returncode == 0, done.stderr
        assert docker_client.images.get(sample.tag).id == sample.image_id
    finally:
        remove(docker_client, sample.tag, sample.image_id)


def test_split_bundle_publishes_and_pulls_as_one_bundle(cli, split_bundle: Path, keypair, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = f"oci://{registry.host}/bundles/split:1"
    r = cli("publish", str(split_bundle), ref)
    assert r.code == 0, r.err
    out = tmp_path / "pulled"
    assert cli("pull", ref, "-o", str(out)).code == 0
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0
    volumes = sorted(split_bundle.iterdir())
    assert files_under(out) - {".airgap-pull"} == set().union(*(files_under(v) for v in volumes))
