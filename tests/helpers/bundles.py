"""Bundles packed from sample images through the CLI, as the tests of several commands need them."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cli import Cli, CliResult
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Sample, sample_image


def two_platform_pack(cli: Cli, keypair: KeyPair, tmp_path: Path, tag: str) -> tuple[Path, Sample, Sample]:
    """One tag built for linux/amd64 and linux/arm64 (shared base layers), packed into one bundle."""
    seed = tag.replace("/", "-")
    amd = sample_image.build(tmp_path / f"{seed}-amd64.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed=seed)
    arm = sample_image.build(
        tmp_path / f"{seed}-arm64.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed=seed, arch="arm64"
    )
    out = tmp_path / f"{seed}-bundle"
    r = cli("pack", f"docker-archive:{amd.path}", f"docker-archive:{arm.path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    return out, amd, arm


def full_full_delta(
    cli: Cli, keypair: KeyPair, tmp_path: Path, old: Sample, new: Sample, name: str, part_size: str
) -> tuple[Path, Path, Path]:
    """Pack the old release, the new one, and the new one as a delta since the old (sequences 1, 2, 2)."""
    full_old, full_new, delta = tmp_path / "full-old", tmp_path / "full-new", tmp_path / "delta-new"
    for out, sample, extra in (
        (full_old, old, ("--sequence", "1")),
        (full_new, new, ("--sequence", "2")),
        (delta, new, ("--sequence", "2", "--since", str(full_old))),
    ):
        archive = f"docker-archive:{sample.path}"
        r = cli("pack", archive, "-o", str(out), "--key", str(keypair[0]), "--part-size", part_size, "--name", name, *extra)
        assert r.code == 0, r.err
    return full_old, full_new, delta


def pack_split(cli: Cli, sample: Sample, keypair: KeyPair, out: Path, part_size: str, medium: str) -> CliResult:
    """Pack ``sample`` split into vol-NN folders of at most ``medium`` each."""
    archive = f"docker-archive:{sample.path}"
    return cli("pack", archive, "-o", str(out), "--key", str(keypair[0]), "--part-size", part_size, "--media-dir-size", medium)


def files_under(root: Path) -> set[str]:
    """Every regular file below ``root``, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
