"""Names, platforms and tags taken from a source are checked before pack writes anything: a hostile image
config, index or tag list never reaches a path, the manifest or the signature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples, sample_image

EVIL_ARCH = "amd64/../../../escaped"


def _everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_platform_with_path_traversal_refused_before_anything_is_written(
    cli: Cli, keypair: KeyPair, tmp_path: Path, fmt: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sample = sample_image.build(src / "evil.tar", tag="evil/app:1", model_size=1 << 20, app_size=1 << 16, arch=EVIL_ARCH, fmt=fmt)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "deep" / "bundle"
    r = cli("pack", f"{fmt}-archive:{sample.path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 3, r.err
    assert "platform architecture" in r.err and str(sample.path) in r.err
    assert not (out / "manifest.json").exists()
    assert not (out / "installer").exists()
    assert not any("escaped" in p for p in _everything_under(tmp_path))


def _retag(archive: Path, out: Path, tags: list[str]) -> Path:
    """A copy of a docker-archive whose index names the image with ``tags`` (no validation: what a hostile
    or careless producer writes)."""
    import tarfile

    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            fh = src.extractfile(member) if member.isfile() else None
            data = fh.read() if fh is not None else None
            if member.name == "manifest.json" and data is not None:
                index = json.loads(data)
                index[0]["RepoTags"] = tags
                data = json.dumps(index).encode()
                member.size = len(data)
            dst.addfile(member, None if data is None else __import__("io").BytesIO(data))
    return out


@pytest.mark.parametrize(
    "tag", ["Evil Tag:1", "evil/app:1\n", "evil/app:1\nOK: forged", "evil/app:" + "x" * 200, "evil/app:-dash"]
)
def test_tag_docker_refuses_is_refused_not_dropped(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, tag: str
) -> None:
    archive = _retag(samples["docker"].path, tmp_path / "retagged.tar", [tag])
    r = cli("pack", f"docker-archive:{archive}", "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    assert r.code == 3, r.err
    assert "is not a valid Docker reference" in r.err
    assert "\nOK:" not in r.err  # the name is shown escaped
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_one_tag_on_two_images_of_one_platform_refused(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    a = _retag(samples["docker"].path, tmp_path / "a.tar", ["team/app:1"])
    b = _retag(samples["docker2"].path, tmp_path / "b.tar", ["team/app:1"])
    r = cli("pack", f"docker-archive:{a}", f"docker-archive:{b}", "-o", str(tmp_path / "out"), "--key", str(keypair[0]))
    assert r.code == 3, r.err
    assert "team/app:1 is given to two linux/amd64 images" in r.err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_default_bundle_name_does_not_depend_on_source_order(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    a = _retag(samples["docker"].path, tmp_path / "a.tar", ["zeta/zed:1"])
    b = _retag(samples["docker2"].path, tmp_path / "b.tar", ["alpha/app:1"])
    names = []
    for order, out in (((a, b), tmp_path / "ab"), ((b, a), tmp_path / "ba")):
        r = cli("pack", *(f"docker-archive:{p}" for p in order), "-o", str(out), "--key", str(keypair[0]))
        assert r.code == 0, r.err
        names.append(load_bundle(out).manifest.name)
    assert names == ["app", "app"]
