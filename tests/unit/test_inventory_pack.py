"""pack's signed inventory from archives (no engine needed): the SBOM files, --sbom off|on|require, what
inspect --sbom and diff make of them, and SBOMs changed after signing."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from airgap._internal.inventory.cyclonedx import sbom_path
from airgap.model.manifest import MANIFEST_NAME
from tests.helpers.cli import Cli, CliResult
from tests.helpers.keys import KeyPair
from tests.helpers.samples import MiB, Samples, delta_releases, sample_image

EXIT_FORMAT, EXIT_INTEGRITY, EXIT_TRUST = 3, 4, 5


def pack(cli: Cli, source: Path, out: Path, key: Path, *extra: str) -> CliResult:
    return cli("pack", f"docker-archive:{source}", "-o", str(out), "--key", str(key), "--part-size", "1MiB", *extra)


def docker_archive(path: Path, layers: list[bytes], tag: str) -> Path:
    """A docker-save archive of one image made of ``layers`` (tar bytes)."""
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    index = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}])
    with tarfile.open(path, "w") as tar:
        members = [(f"{d[7:]}/layer.tar", layer) for d, layer in zip(diff_ids, layers, strict=True)]
        for name, data in [*members, (config_name, config), ("manifest.json", index.encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def status(*packages: tuple[str, str]) -> bytes:
    return b"\n".join(
        f"Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n".encode() for n, v in packages
    )


def test_sample_image_inventory_is_signed_and_shown(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    key, pub = keypair
    sample = samples["docker"]
    r = pack(cli, sample.path, tmp_path / "b", key, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    path = sbom_path(sample.image_id)
    assert result["sbom"] == {"mode": "on", "files": [path], "warnings": []}
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_bytes())
    (listed,) = [f for f in manifest["files"] if f["path"] == path]
    data = (tmp_path / "b" / path).read_bytes()
    assert listed["sha256"] == hashlib.sha256(data).hexdigest()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None

    r = cli("inspect", str(tmp_path / "b"), "--sbom", "--trust", str(pub), "--json")
    assert r.code == 0, r.err
    inv = json.loads(r.out)["inventory"]
    assert inv["verified"] is True
    (image,) = inv["images"]
    got = {(p["ecosystem"], p["name"], p["version"]) for p in image["packages"]}
    assert got == {
        ("deb", "base-files", "12.4+deb12u5"),
        ("deb", "libc6", "2.36-9+deb12u7"),
        ("deb", "zlib1g", "1:1.2.13.dfsg-1"),  # nano is removed (deinstall): not listed
        ("pypi", "requests", "2.31.0"),  # six is deleted by a whiteout in the top layer: not listed
        ("npm", "marked", "12.0.0"),
        ("npm", "@types/node", "20.11.5"),
    }
    assert image["warnings"] == []
    (model,) = [m for m in image["models"] if m["gguf"]]
    assert model["name_matches"] is True
    assert (model["gguf"]["architecture"], model["gguf"]["file_type"]) == ("qwen2", "Q5_K_M")
    assert [o["name"] for o in image["ollama"]] == ["airgap-coder:tiny-q5_K_M"]

    r = cli("inspect", str(tmp_path / "b"), "--sbom")
    assert r.code == 0, r.err
    assert "signature not checked" in r.out
    assert "airgap-coder:tiny-q5_K_M -> sha256:" in r.out and "Q5_K_M" in r.out
    assert "deb   zlib1g 1:1.2.13.dfsg-1 (amd64)  [Zlib]" in r.out


def test_inspect_sbom_with_the_wrong_key_shows_nothing(cli: Cli, bundle: Path, other_keypair: KeyPair) -> None:
    r = cli("inspect", str(bundle), "--sbom", "--trust", str(other_keypair[1]))
    assert r.code == EXIT_TRUST
    assert "zlib1g" not in r.out


def test_sbom_changed_after_signing_is_refused(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    (path,) = (bundle / "sbom").iterdir()
    doc = json.loads(path.read_bytes())
    doc["components"] = [c for c in doc["components"] if c["name"] != "libc6"]  # hide a package from the auditor
    path.write_text(json.dumps(doc))
    for args in (["inspect", str(bundle), "--sbom"], ["verify", str(bundle), "--trust", str(keypair[1])]):
        r = cli(*args)
        assert r.code == EXIT_INTEGRITY, r.err
        assert f"sbom/{path.name}" in r.err


def test_sbom_off_writes_none(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    r = pack(cli, samples["docker"].path, tmp_path / "b", keypair[0], "--sbom=off", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sbom"]["files"] == []
    assert not (tmp_path / "b" / "sbom").exists()
    r = cli("inspect", str(tmp_path / "b"), "--sbom")
    assert r.code == 0 and "no SBOM" in r.out


def hostile_archive(tmp_path: Path) -> Path:
    gguf = b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + (0).to_bytes(8, "little")
    files = {"var/lib/dpkg/status": status(("libc6", "2.36")), "models/evil.gguf": gguf + b"\0" * 64}
    return docker_archive(tmp_path / "hostile.tar", [layer(files)], "airgap-test/hostile:1.0")


def test_hostile_image_warns_and_require_refuses(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    archive = hostile_archive(tmp_path)
    r = pack(cli, archive, tmp_path / "on", keypair[0], "--json")
    assert r.code == 0, r.err
    warnings = json.loads(r.out)["sbom"]["warnings"]
    assert any("models/evil.gguf: the GGUF header claims 1099511627776 tensors" in w for w in warnings)
    r = cli("inspect", str(tmp_path / "on"), "--sbom", "--json")
    (image,) = json.loads(r.out)["inventory"]["images"]
    assert [p["name"] for p in image["packages"]] == ["libc6"] and image["warnings"]

    r = pack(cli, archive, tmp_path / "req", keypair[0], "--sbom=require")
    assert r.code == EXIT_FORMAT
    assert "the inventory is incomplete" in r.err and "models/evil.gguf" in r.err
    assert not (tmp_path / "req" / MANIFEST_NAME).exists()


def test_diff_shows_packages_and_models_added_removed_and_changed(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    site = "usr/lib/python3/site-packages"
    old = docker_archive(
        tmp_path / "a.tar",
        [
            layer(
                {
                    "var/lib/dpkg/status": status(("libc6", "2.36-9"), ("nano", "7.2")),
                    f"{site}/six-1.16.0.dist-info/METADATA": b"Name: six\nVersion: 1.16.0\n\n",
                }
            )
        ],
        "airgap-test/app:1.0",
    )
    new = docker_archive(
        tmp_path / "b.tar",
        [
            layer(
                {
                    "var/lib/dpkg/status": status(("libc6", "2.36-9+deb12u7"), ("zlib1g", "1.2.13")),
                    f"{site}/six-1.16.0.dist-info/METADATA": b"Name: six\nVersion: 1.16.0\n\n",
                }
            )
        ],
        "airgap-test/app:1.0",
    )
    assert pack(cli, old, tmp_path / "A", keypair[0]).code == 0
    assert pack(cli, new, tmp_path / "B", keypair[0]).code == 0
    r = cli("diff", str(tmp_path / "A"), str(tmp_path / "B"), "--json")
    assert r.code == 0, r.err
    (change,) = json.loads(r.out)["inventory"]
    packages = change["packages"]
    assert [p["name"] for p in packages["added"]] == ["zlib1g"]
    assert [p["name"] for p in packages["removed"]] == ["nano"]
    assert [(p["name"], p["old"], p["new"]) for p in packages["changed"]] == [("libc6", "2.36-9", "2.36-9+deb12u7")]
    r = cli("diff", str(tmp_path / "A"), str(tmp_path / "B"))
    assert "+ deb zlib1g 1.2.13" in r.out and "~ deb libc6 2.36-9 -> 2.36-9+deb12u7" in r.out


def test_diff_of_two_samples_names_the_changed_model(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    a = sample_image.build(tmp_path / "a.tar", tag="airgap-test/m:1", model_size=MiB, app_size=MiB // 4, seed="m1")
    b = sample_image.build(tmp_path / "b.tar", tag="airgap-test/m:1", model_size=MiB, app_size=MiB // 4, seed="m2")
    assert pack(cli, a.path, tmp_path / "A", keypair[0]).code == 0
    assert pack(cli, b.path, tmp_path / "B", keypair[0]).code == 0
    r = cli("diff", str(tmp_path / "A"), str(tmp_path / "B" / MANIFEST_NAME), "--json")
    assert r.code == 0, r.err
    (change,) = json.loads(r.out)["inventory"]
    assert change["packages"] == {"added": [], "removed": [], "changed": []}
    changed = [m["name"] for m in change["models"]["changed"]]
    assert changed == ["ollama airgap-coder:tiny-q5_K_M"]


def test_delta_pack_inventories_the_layers_it_leaves_out(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    v1, v2 = delta_releases(tmp_path)
    assert pack(cli, v1.path, tmp_path / "v1", keypair[0]).code == 0
    r = pack(cli, v2.path, tmp_path / "v2", keypair[0], "--since", str(tmp_path / "v1"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sbom"]["warnings"] == []
    r = cli("inspect", str(tmp_path / "v2"), "--sbom", "--json")
    (image,) = json.loads(r.out)["inventory"]["images"]
    assert any(m["gguf"] for m in image["models"])  # the model layer is the base bundle's, and still listed


def test_split_bundle_carries_its_sboms_on_a_volume(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    r = pack(cli, samples["docker"].path, tmp_path / "b", keypair[0], "--media-dir-size", "3MiB")
    assert r.code == 0, r.err
    assert not (tmp_path / "b" / "sbom").exists()
    r = cli("inspect", str(tmp_path / "b"), "--sbom", "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["inventory"]["images"][0]["packages"]
    r = cli("verify", str(tmp_path / "b"), "--trust", str(keypair[1]))
    assert r.code == 0, r.err


@pytest.mark.parametrize("mode", ["bogus", ""])
def test_bad_sbom_mode_is_a_usage_error(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, mode: str) -> None:
    r = pack(cli, samples["docker"].path, tmp_path / "b", keypair[0], f"--sbom={mode}")
    assert r.code == 2
