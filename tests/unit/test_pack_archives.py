"""pack from archives (no engine needed), verify, inspect, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from airgap._internal.format.reader import load_bundle
from airgap.model.manifest import MANIFEST_NAME
from tests.helpers.cli import Cli, CliResult
from tests.helpers.keys import KeyPair
from tests.helpers.manifests import SCHEMA
from tests.helpers.samples import Samples, sample_image


def pack(cli: Cli, sources: list[str], out: Path, key: Path, *extra: str) -> CliResult:
    return cli("pack", *sources, "-o", str(out), "--key", str(key), *extra)


def test_docker_archive_pack_verify_inspect(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, pub = keypair
    out = tmp_path / "b"
    r = pack(cli, [f"docker-archive:{samples['docker'].path}"], out, key, "--part-size", "1MiB", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["images"][0]["image_id"] == samples["docker"].image_id
    assert result["images"][0]["ref_names"] == ["airgap-test/agent:1.0"]
    manifest = json.loads((out / MANIFEST_NAME).read_bytes())
    jsonschema.validate(manifest, SCHEMA)
    assert all((out / p["path"]).stat().st_size <= 1 << 20 for p in manifest["parts"])
    assert len([p for p in manifest["parts"] if p["blob"] == samples["docker"].layers[2]]) >= 3  # model layer split
    r = cli("verify", str(out), "--trust", str(pub), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["ok"] and report["parts_checked"] == len(manifest["parts"])
    r = cli("inspect", str(out))
    assert r.code == 0 and "airgap-test/agent:1.0" in r.out and samples["docker"].image_id[7:19] in r.out


def test_oci_archive_pack_keeps_image_id(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, _pub = keypair
    r = pack(cli, [f"oci-archive:{samples['oci'].path}"], tmp_path / "b", key, "--json")
    assert r.code == 0, r.err
    image = json.loads(r.out)["images"][0]
    assert image["image_id"] == samples["oci"].image_id
    assert image["ref_names"] == ["airgap-test/agent-oci:1.0"]


@pytest.mark.parametrize(
    ("source_suffix", "expected"),
    [("", []), (":airgap-test/named", ["airgap-test/named:2.5"])],
)
def test_bare_oci_tag_needs_a_repository(
    cli: Cli, keypair: KeyPair, tmp_path: Path, source_suffix: str, expected: list[str]
) -> None:
    sample = sample_image.build(tmp_path / "bare.tar", tag="2.5", model_size=1 << 16, app_size=1 << 16, fmt="oci")
    r = pack(cli, [f"oci-archive:{sample.path}{source_suffix}"], tmp_path / "b", keypair[0], "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["ref_names"] == expected


def test_docker25_oci_layout_archive_packs(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    sample = sample_image.build(
        tmp_path / "d25.tar", tag="airgap-test/d25:1", model_size=1 << 20, app_size=1 << 19, fmt="docker-oci"
    )
    r = pack(cli, [f"docker-archive:{sample.path}"], tmp_path / "b", keypair[0], "--json")
    assert r.code == 0, r.err
    image = json.loads(r.out)["images"][0]
    assert image["image_id"] == sample.image_id and image["ref_names"] == ["airgap-test/d25:1"]
    assert list(load_bundle(tmp_path / "b").manifest.images[0].diff_ids) == list(sample.layers)


def test_shared_layers_stored_once(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, _ = keypair
    out = tmp_path / "b"
    sources = [f"docker-archive:{samples['docker'].path}", f"docker-archive:{samples['docker2'].path}"]
    assert pack(cli, sources, out, key).code == 0
    m = load_bundle(out).manifest
    assert len(m.images) == 2
    shared = set(m.images[0].diff_ids) & set(m.images[1].diff_ids)
    assert shared  # the base layer is the same in both sample images
    assert len(m.blobs) == len({d.digest for i in m.images for d in (i.config, *i.layers)})
    assert len({p.path for p in m.parts}) == len(m.parts)


def test_same_layer_gives_same_parts_in_two_bundles(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, _ = keypair
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], tmp_path / "a", key, "--part-size", "1MiB").code == 0
    assert pack(cli, [f"docker-archive:{samples['docker2'].path}"], tmp_path / "b", key, "--part-size", "1MiB").code == 0
    a, b = load_bundle(tmp_path / "a").manifest, load_bundle(tmp_path / "b").manifest
    base = a.images[0].layers[0].digest
    assert base == b.images[0].layers[0].digest
    assert a.parts_of(base) == b.parts_of(base)
    for part in a.parts_of(base):
        assert (tmp_path / "a" / part.path).read_bytes() == (tmp_path / "b" / part.path).read_bytes()


def test_non_empty_output_refused_without_overwrite(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, _ = keypair
    out = tmp_path / "b"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = pack(cli, [f"docker-archive:{samples['docker'].path}"], out, key)
    assert r.code == 7 and "is not empty" in r.err and "--overwrite" in r.err
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_old_bundle(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, pub = keypair
    out = tmp_path / "b"
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], out, key).code == 0
    assert pack(cli, [f"docker-archive:{samples['docker2'].path}"], out, key, "--overwrite").code == 0
    assert cli("verify", str(out), "--trust", str(pub)).code == 0
    assert load_bundle(out).manifest.images[0].image_id == samples["docker2"].image_id
    assert not (out / ".airgap-staging").exists()


def test_truncated_archive_leaves_no_complete_looking_bundle(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    key, _ = keypair
    broken = tmp_path / "broken.tar"
    broken.write_bytes(samples["docker"].path.read_bytes()[: samples["docker"].size // 2])
    out = tmp_path / "b"
    r = pack(cli, [f"docker-archive:{broken}"], out, key)
    assert r.code == 3, r.err
    assert "broken.tar" in r.err and "Traceback" not in r.err
    assert not (out / MANIFEST_NAME).exists()
    r = cli("verify", str(out), "--trust", str(keypair[1]))
    assert r.code == 3 and "not a complete bundle" in r.err


def test_not_an_image_archive_is_format_error(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello" * 1000)
    r = pack(cli, [f"docker-archive:{junk}"], tmp_path / "b", keypair[0])
    assert r.code == 3 and "junk.tar" in r.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--part-size", "lots"], "cannot read size"),
        (["--part-size", "100"], "too small"),
        (["--level", "40"], "out of range"),
    ],
)
def test_bad_pack_options_are_usage_errors(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, args: list[str], needle: str
) -> None:
    r = pack(cli, [f"docker-archive:{samples['docker'].path}"], tmp_path / "b", keypair[0], *args)
    assert r.code == 2 and needle in r.err and "hint:" in r.err


def test_missing_key_file_is_usage_error(cli: Cli, samples: Samples, tmp_path: Path) -> None:
    r = pack(cli, [f"docker-archive:{samples['docker'].path}"], tmp_path / "b", tmp_path / "nokey.key")
    assert r.code == 2 and "nokey.key" in r.err


def test_verify_untrusted_signer_exit_5(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], tmp_path / "b", keypair[0]).code == 0
    r = cli("verify", str(tmp_path / "b"), "--trust", str(other_keypair[1]))
    assert r.code == 5 and "no signature from a trusted key" in r.err


def test_edited_manifest_exit_5(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], out, keypair[0]).code == 0
    m = out / MANIFEST_NAME
    m.write_bytes(m.read_bytes().replace(b"airgap-test/agent:1.0", b"airgap-test/agent:6.6"))
    r = cli("verify", str(out), "--trust", str(keypair[1]))
    assert r.code == 5 and "does not match manifest.json" in r.err


def test_verify_names_every_bad_part(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], out, keypair[0], "--part-size", "1MiB").code == 0
    parts = load_bundle(out).manifest.parts
    first, last = out / parts[0].path, out / parts[-1].path
    first.unlink()
    data = bytearray(last.read_bytes())
    data[-1] ^= 0xFF
    last.write_bytes(data)
    r = cli("verify", str(out), "--trust", str(keypair[1]), "--json")
    assert r.code == 4
    report = json.loads(r.out)
    bad = {p["path"]: p["problem"] for p in report["parts"] if not p["ok"]}
    assert set(bad) == {parts[0].path, parts[-1].path}
    assert "missing" in bad[parts[0].path] and "sha256" in bad[parts[-1].path]
    assert parts[0].path in r.err


def test_symlinked_part_rejected(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], out, keypair[0]).code == 0
    part = out / load_bundle(out).manifest.parts[0].path
    moved = tmp_path / "elsewhere.zst"
    part.rename(moved)
    part.symlink_to(moved)
    r = cli("verify", str(out), "--trust", str(keypair[1]))
    assert r.code == 4 and "symbolic link" in r.err
