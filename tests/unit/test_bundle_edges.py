"""What is read before any signature check is bounded, and every directory a bundle spans is held to the
signed manifest: oversized manifests, terminal escapes in unsigned fields, volumes that hold what they should
not, a second bundle planted beside the first, and base bundles of deltas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from airgap.errors import IntegrityError
from airgap.install import InstallOptions, install
from airgap.trust.keys import load_public
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Sample, Samples


def _pack(cli: Cli, sample: Sample, out: Path, key: Path, *extra: str) -> None:
    r = cli("pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(key), *extra)
    assert r.code == 0, r.err


def test_escape_sequences_in_unsigned_fields_are_shown_escaped(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    _pack(cli, samples["docker"], out, keypair[0])
    data = json.loads((out / "manifest.json").read_bytes())
    data["schema_version"] = "\x1b]0;owned\x07\x1b[2J"
    (out / "manifest.json").write_text(json.dumps(data))
    for args in (("inspect", str(out)), ("diff", str(out), str(out))):
        r = cli(*args)
        assert r.code == 3, r.err
        assert "\x1b" not in r.err and "\x07" not in r.err and "\\x1b" in r.err


def test_volume_folder_name_with_escapes_is_shown_escaped(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "split"
    _pack(cli, samples["docker"], out, keypair[0], "--part-size", "1MiB", "--media-dir-size", "3MiB")
    (out / "vol-02" / "\x1b[31mred\nOK: fine").write_text("x")
    r = cli("verify", str(out), "--trust", str(keypair[1]))
    assert r.code == 4
    assert "\x1b" not in r.err and "\\x1b[31mred\\nOK: fine" in r.err
    assert not any(line.startswith("OK") for line in (r.out + r.err).splitlines())


@pytest.fixture
def split(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    out = tmp_path / "split"
    _pack(cli, samples["docker"], out, keypair[0], "--part-size", "1MiB", "--media-dir-size", "3MiB")
    return out


def _a_part_on(split: Path, volume: str) -> str:
    manifest = load_bundle(split).manifest
    (vol,) = [v for v in manifest.volumes if v.name == volume]
    return next(p for p in vol.paths if p.startswith("parts/"))


def test_bad_duplicate_of_a_part_on_the_wrong_volume_is_never_read(cli: Cli, split: Path, keypair: KeyPair) -> None:
    victim = _a_part_on(split, "vol-02")
    (split / "vol-01" / victim).write_bytes(b"not the part")  # a planted copy on the first volume
    r = cli("verify", str(split), "--trust", str(keypair[1]))
    assert r.code == 4
    assert f"vol-01/{victim}" in r.err  # the planted copy is named as what it is: not part of vol-01
    assert "does not match" not in r.err  # and the good copy on vol-02 was the one checked
    assert cli("verify", str(split), "--trust", str(keypair[1]), "--allow-unexpected").code == 0


def test_missing_part_names_its_own_volume_even_with_a_copy_elsewhere(cli: Cli, split: Path, keypair: KeyPair) -> None:
    victim = _a_part_on(split, "vol-02")
    shutil.move(split / "vol-02" / victim, split / "vol-03" / victim)
    r = cli("verify", str(split), "--trust", str(keypair[1]), "--allow-unexpected")
    assert r.code == 4
    assert f"{victim} is missing (on vol-02)" in r.err and "vol-02" in r.err.split("hint:")[1]


def test_rogue_volume_holding_another_signed_bundle_refused(
    cli: Cli, samples: Samples, split: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    _pack(cli, samples["docker2"], other, keypair[0], "--part-size", "1MiB", "--media-dir-size", "3MiB")
    shutil.copytree(other / "vol-01", split / "vol-00")
    r = cli("verify", str(split), "--trust", str(keypair[1]))
    assert r.code == 4
    assert "vol-00" in r.err and "vol-01" in r.err and "two bundles" in r.err


def test_volume_folder_the_manifest_does_not_name_is_unexpected(cli: Cli, split: Path, keypair: KeyPair) -> None:
    (split / "vol-09").mkdir()
    shutil.copy(split / "vol-02" / _a_part_on(split, "vol-02"), split / "vol-09" / "copy.zst")
    r = cli("verify", str(split), "--trust", str(keypair[1]))
    assert r.code == 4 and "vol-09/copy.zst" in r.err


def test_file_on_a_from_directory_not_listed_is_unexpected(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    mounted = tmp_path / "mnt"
    shutil.move(split / "vol-03", mounted)
    (mounted / "autorun.sh").write_text("#!/bin/sh\n")
    r = cli("verify", str(split), "--trust", str(keypair[1]), "--from", str(mounted))
    assert r.code == 4 and "autorun.sh" in r.err


def test_pack_since_an_unsigned_base_refused(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    _pack(cli, samples["docker"], old, other_keypair[0])  # signed by a key the packer does not use
    new = tmp_path / "new"
    src = f"docker-archive:{samples['docker2'].path}"
    r = cli("pack", src, "-o", str(new), "--key", str(keypair[0]), "--since", str(old))
    assert r.code == 5 and f"--since {old}" in r.err and "--trust" in r.err
    assert not (new / "manifest.json").exists()
    r = cli("pack", src, "-o", str(new), "--key", str(keypair[0]), "--since", str(old), "--trust", str(other_keypair[1]))
    assert r.code == 0, r.err
    # and an edited base manifest is refused even when given as the file itself
    data = json.loads((old / "manifest.json").read_bytes())
    data["sequence"] += 1
    (old / "manifest.json").write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")
    r = cli(
        "pack", src, "-o", str(tmp_path / "n2"), "--key", str(keypair[0]),
        "--since", str(old / "manifest.json"), "--trust", str(other_keypair[1]),
    )  # fmt: skip
    assert r.code == 5 and "does not match" in r.err


def test_install_base_bundle_with_unlisted_file_refused(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    old, delta = tmp_path / "old", tmp_path / "delta"
    _pack(cli, samples["docker"], old, keypair[0], "--name", "agent", "--sequence", "1")
    _pack(cli, samples["docker2"], delta, keypair[0], "--name", "agent", "--sequence", "2", "--since", str(old))
    (old / "parts" / "extra.zst").write_bytes(b"x")
    pub = (load_public(keypair[1]),)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=r"parts/extra\.zst"):
        install(InstallOptions(delta, pub, base=old), connect=connect_to(engine))
    assert engine.load_calls == 0


def test_install_base_bundle_with_symlinked_parts_directory_refused(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    old, delta = tmp_path / "old", tmp_path / "delta"
    _pack(cli, samples["docker"], old, keypair[0], "--name", "agent", "--sequence", "1")
    _pack(cli, samples["docker2"], delta, keypair[0], "--name", "agent", "--sequence", "2", "--since", str(old))
    shutil.move(old / "parts", tmp_path / "elsewhere")
    (old / "parts").symlink_to(tmp_path / "elsewhere")
    pub = (load_public(keypair[1]),)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match="symbolic link"):
        install(InstallOptions(delta, pub, base=old), connect=connect_to(engine))
    assert engine.load_calls == 0


def test_both_installers_cap_the_manifest_alike() -> None:
    import re

    from airgap._internal.format.installer import script
    from airgap._internal.format.reader import MAX_MANIFEST_BYTES

    m = re.search(rb"^MAX_MANIFEST=(\d+)", script(), re.MULTILINE)
    assert m is not None and int(m.group(1)) == MAX_MANIFEST_BYTES


def test_planted_listing_copy_does_not_make_a_volume_accept_other_volumes_parts(cli: Cli, split: Path, keypair: KeyPair) -> None:
    victim = _a_part_on(split, "vol-02")
    shutil.copy(split / "vol-02" / "volume-02.txt", split / "vol-01" / "volume-02.txt")
    (split / "vol-01" / "parts").mkdir(exist_ok=True)
    (split / "vol-01" / victim).write_bytes(b"planted")
    froms = [a for v in sorted(split.iterdir())[1:] for a in ("--from", str(v))]
    r = cli("verify", str(split / "vol-01"), "--trust", str(keypair[1]), *froms)
    assert r.code == 4, r.err
    assert victim in r.err and "volume-02.txt" in r.err


def test_trailing_newline_in_an_unsigned_name_is_refused_by_inspect(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    _pack(cli, samples["docker"], out, keypair[0])
    m = out / "manifest.json"
    m.write_text(m.read_text().replace(samples["docker"].tag + '"', samples["docker"].tag + '\\n"', 1))
    r = cli("inspect", str(out))
    assert r.code == 3 and "ref_names" in r.err
    assert "\n" not in r.err.split("\nhint:")[0]


def test_json_output_stays_valid_unicode_for_undecodable_file_names(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    _pack(cli, samples["docker"], out, keypair[0])
    (out / "parts" / "bad\udcffname").write_bytes(b"x")  # a file name with the byte 0xff, as Python holds it
    r = cli("verify", str(out), "--trust", str(keypair[1]), "--json")
    assert r.code == 4
    report = json.loads(r.out)
    json.dumps(report).encode("utf-8")
    r.out.encode("utf-8")  # no lone surrogates reach the output
    assert any("bad\\udcffname" in f for f in report["unexpected_files"])


def test_fifo_in_a_trust_directory_does_not_hang(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    import os

    out = tmp_path / "b"
    _pack(cli, samples["docker"], out, keypair[0])
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(keypair[1], trusted / "team.pub")
    os.mkfifo(trusted / "planted.pub")
    r = cli("verify", str(out), "--trust", str(trusted))
    assert r.code == 2 and "planted.pub" in r.err and "not a regular file" in r.err


def test_pack_since_a_base_with_unlisted_files_refused(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    old = tmp_path / "old"
    _pack(cli, samples["docker"], old, keypair[0])
    (old / ".payload").write_text("x")
    r = cli(
        "pack",
        f"docker-archive:{samples['docker2'].path}",
        "-o",
        str(tmp_path / "new"),
        "--key",
        str(keypair[0]),
        "--since",
        str(old),
    )
    assert r.code == 4 and ".payload" in r.err
