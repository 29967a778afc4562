"""Media: part-size presets, and bundles split into vol-NN folders that each fit one medium and verify from
several mount points (--from).  Installing and publishing them: ``integration/test_media.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgap.model.units import MEDIA, parse_media_size
from tests.helpers.bundles import files_under, pack_split
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples

MiB = 1 << 20


def test_media_presets() -> None:
    assert parse_media_size("fat32") == 4 * 1024**3 - 1
    assert parse_media_size("DVD") == MEDIA["dvd"] < 4_707_319_808
    assert parse_media_size("bd25") == MEDIA["bd25"] < 25_025_314_816
    assert parse_media_size("700MB") == 700_000_000


@pytest.fixture
def split_bundle(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    out = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, out, "1MiB", "3MiB")
    assert r.code == 0, r.err
    return out


def test_every_volume_fits_its_medium_and_lists_what_it_holds(split_bundle: Path) -> None:
    volumes = sorted(p for p in split_bundle.iterdir())
    assert [v.name for v in volumes] == [f"vol-{i:02d}" for i in range(1, len(volumes) + 1)]
    assert len(volumes) >= 3
    manifest = json.loads((volumes[0] / "manifest.json").read_text())
    listed = {v["name"]: set(v["paths"]) for v in manifest["volumes"]}
    for i, volume in enumerate(volumes, start=1):
        assert sum(p.stat().st_size for p in volume.rglob("*") if p.is_file()) <= 3 * MiB
        held = files_under(volume) - {"manifest.json"} - {f for f in files_under(volume) if f.startswith("signatures/")}
        assert held == listed[volume.name]
        text = (volume / f"volume-{i:02d}.txt").read_text()
        assert f"volume {volume.name} ({i} of {len(volumes)})" in text
        assert all(path in text for path in held if path.startswith("parts/"))
    assert not (split_bundle / "parts").exists()


def test_split_bundle_verifies_as_one_directory_or_from_its_volumes(cli: Cli, split_bundle: Path, keypair: KeyPair) -> None:
    assert cli("verify", str(split_bundle), "--trust", str(keypair[1])).code == 0
    volumes = sorted(split_bundle.iterdir())
    others = [arg for v in volumes[1:] for arg in ("--from", str(v))]
    assert cli("verify", str(volumes[0]), "--trust", str(keypair[1]), *others).code == 0


def test_missing_volume_is_named(cli: Cli, split_bundle: Path, keypair: KeyPair) -> None:
    volumes = sorted(split_bundle.iterdir())
    others = [arg for v in volumes[1:] if v.name != "vol-02" for arg in ("--from", str(v))]
    r = cli("verify", str(volumes[0]), "--trust", str(keypair[1]), *others)
    assert r.code == 4, r.err
    assert "is missing (on vol-02)" in r.err
    assert "mount the media labelled vol-02 and pass each directory with --from" in r.err


def test_damaged_part_is_reported_with_its_volume(cli: Cli, split_bundle: Path, keypair: KeyPair) -> None:
    part = next((split_bundle / "vol-03" / "parts").iterdir())
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    r = cli("verify", str(split_bundle), "--trust", str(keypair[1]), "--json")
    assert r.code == 4
    bad = [p for p in json.loads(r.out)["parts"] if not p["ok"]]
    assert [p["path"] for p in bad] == [f"parts/{part.name}"]
    assert bad[0]["problem"].endswith("(on vol-03)")


def test_medium_smaller_than_a_part_is_refused(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = pack_split(cli, samples["docker"], keypair, out, "2MiB", "2MiB")
    assert r.code == 2, r.err
    assert "does not fit on a medium" in r.err or "leaves no room" in r.err
    assert not list(out.rglob("manifest.json"))


def test_overwrite_replaces_a_split_bundle_entirely(cli: Cli, samples: Samples, keypair: KeyPair, split_bundle: Path) -> None:
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(split_bundle), "--key", str(keypair[0]), "--overwrite")
    assert r.code == 0, r.err
    assert not list(split_bundle.glob("vol-*"))
    assert (split_bundle / "manifest.json").exists()


def test_inspect_lists_the_volumes(cli: Cli, split_bundle: Path) -> None:
    r = cli("inspect", str(split_bundle))
    assert r.code == 0, r.err
    assert "volumes   vol-01 (" in r.out and "vol-03 (" in r.out
