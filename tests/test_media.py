"""Media: part-size presets, bundles split into vol-NN folders that each fit one medium, and installs
that gather parts from several mount points (--from) without copying them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airgap.model.units import MEDIA, parse_media_size
from tests.test_e2e_docker import remove
from tests.test_install_sh import run_sh

MiB = 1 << 20


def test_media_presets() -> None:
    assert parse_media_size("fat32") == 4 * 1024**3 - 1
    assert parse_media_size("DVD") == MEDIA["dvd"] < 4_707_319_808
    assert parse_media_size("bd25") == MEDIA["bd25"] < 25_025_314_816
    assert parse_media_size("700MB") == 700_000_000


def _pack_split(cli, samples, keypair, out: Path, part_size: str, medium: str):  # type: ignore[no-untyped-def]
    archive = f"docker-archive:{samples['docker'].path}"
    return cli("pack", archive, "-o", str(out), "--key", str(keypair[0]), "--part-size", part_size, "--media-dir-size", medium)


@pytest.fixture
def split_bundle(cli, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "split"
    r = _pack_split(cli, samples, keypair, out, "1MiB", "3MiB")
    assert r.code == 0, r.err
    return out


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_every_volume_fits_its_medium_and_lists_what_it_holds(split_bundle: Path) -> None:
    volumes = sorted(p for p in split_bundle.iterdir())
    assert [v.name for v in volumes] == [f"vol-{i:02d}" for i in range(1, len(volumes) + 1)]
    assert len(volumes) >= 3
    manifest = json.loads((volumes[0] / "manifest.json").read_text())
    listed = {v["name"]: set(v["paths"]) for v in manifest["volumes"]}
    for i, volume in enumerate(volumes, start=1):
        assert sum(p.stat().st_size for p in volume.rglob("*") if p.is_file()) <= 3 * MiB
        held = _files(volume) - {"manifest.json"} - {f for f in _files(volume) if f.startswith("signatures/")}
        assert held == listed[volume.name]
        text = (volume / f"volume-{i:02d}.txt").read_text()
        assert f"volume {volume.name} ({i} of {len(volumes)})" in text
        assert all(path in text for path in held if path.startswith("parts/"))
    assert not (split_bundle / "parts").exists()


def test_split_bundle_verifies_as_one_directory_or_from_its_volumes(cli, split_bundle: Path, keypair) -> None:
    assert cli("verify", str(split_bundle), "--trust", str(keypair[1])).code == 0
    volumes = sorted(split_bundle.iterdir())
    others = [arg for v in volumes[1:] for arg in ("--from", str(v))]
    assert cli("verify", str(volumes[0]), "--trust", str(keypair[1]), *others).code == 0


def test_missing_volume_is_named(cli, split_bundle: Path, keypair) -> None:
    volumes = sorted(split_bundle.iterdir())
    others = [arg for v in volumes[1:] if v.name != "vol-02" for arg in ("--from", str(v))]
    r = cli("verify", str(volumes[0]), "--trust", str(keypair[1]), *others)
    assert r.code == 4, r.err
    assert "is missing (on vol-02)" in r.err
    assert "mount the media labelled vol-02 and pass each directory with --from" in r.err


def test_damaged_part_is_reported_with_its_volume(cli, split_bundle: Path, keypair) -> None:
    part = next((split_bundle / "vol-03" / "parts").iterdir())
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    r = cli("verify", str(split_bundle), "--trust", str(keypair[1]), "--json")
    assert r.code == 4
    bad = [p for p in json.loads(r.out)["parts"] if not p["ok"]]
    assert [p["path"] for p in bad] == [f"parts/{part.name}"]
    assert bad[0]["problem"].endswith("(on vol-03)")


def test_medium_smaller_than_a_part_is_refused(cli, samples, keypair, tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = _pack_split(cli, samples, keypair, out, "2MiB", "2MiB")
    assert r.code == 2, r.err
    assert "does not fit on a medium" in r.err or "leaves no room" in r.err
    assert not list(out.rglob("manifest.json"))


def test_overwrite_replaces_a_split_bundle_entirely(cli, samples, keypair, split_bundle: Path) -> None:
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(split_bundle), "--key", str(keypair[0]), "--overwrite")
    assert r.code == 0, r.err
    assert not list(split_bundle.glob("vol-*"))
    assert (split_bundle / "manifest.json").exists()


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
    assert _files(out) - {".airgap-pull"} == set().union(*(_files(v) for v in volumes))


def test_inspect_lists_the_volumes(cli, split_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("inspect", str(split_bundle))
    assert r.code == 0, r.err
    assert "volumes   vol-01 (" in r.out and "vol-03 (" in r.out
