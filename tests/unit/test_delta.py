"""Layer deltas: pack --since ships only the layers an older bundle lacks; install rebuilds the full
image (same image ID) from the engine's layers or from --base; diff shows what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers.bundles import full_full_delta
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.samples import MiB, Sample, delta_releases, rebuilt_releases, sample_image


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sample, Sample]:
    """Release 1.0 and an app update 1.1 that keeps the 4 MiB model layer (and the base layer)."""
    return delta_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture
def packed(cli: Cli, releases: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path) -> tuple[Path, Path, Path]:
    """full 1.0, full 1.1, and the delta 1.1 since 1.0."""
    return full_full_delta(cli, keypair, tmp_path, *releases, "agent", "1MiB")


def _part_bytes(bundle: Path) -> int:
    return sum(p["size"] for p in json.loads((bundle / "manifest.json").read_text())["parts"])


def test_delta_carries_only_new_layers_and_names_its_base(
    packed: tuple[Path, Path, Path], releases: tuple[Sample, Sample]
) -> None:
    full1, full2, delta = packed
    _, v2 = releases
    manifest = json.loads((delta / "manifest.json").read_text())
    assert manifest["base"] == "sha256:" + hashlib.sha256((full1 / "manifest.json").read_bytes()).hexdigest()
    carried = {b["digest"] for b in manifest["blobs"]}
    assert v2.layers[2] not in carried and v2.layers[0] not in carried  # model and base stay home
    assert v2.layers[1] in carried and v2.image_id in carried
    assert manifest["images"] == json.loads((full2 / "manifest.json").read_text())["images"]
    assert _part_bytes(delta) < _part_bytes(full2) / 3


def test_delta_refuses_a_base_it_was_not_made_against(
    cli: Cli, packed: tuple[Path, Path, Path], keypair: KeyPair, tmp_path: Path
) -> None:
    _, full2, delta = packed
    out = tmp_path / "never.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full2), "--to", f"oci-archive:{out}")
    assert r.code == 5, r.err
    assert "not the bundle this delta was made against" in r.err
    assert not out.exists()


def test_delta_with_base_writes_the_full_image_to_an_archive(
    cli: Cli, packed: tuple[Path, Path, Path], releases: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path
) -> None:
    full1, _, delta = packed
    _, v2 = releases
    out = tmp_path / "v2-oci.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full1), "--to", f"oci-archive:{out}")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("pack", f"oci-archive:{out}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["image_id"] == v2.image_id


def test_diff_shows_images_layers_and_bytes(cli: Cli, packed: tuple[Path, Path, Path], releases: tuple[Sample, Sample]) -> None:
    full1, full2, delta = packed
    v1, v2 = releases
    r = cli("diff", str(full1), str(full2), "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert {(i["name"], i["status"]) for i in d["images"]} == {
        ("airgap-test/delta:1.0", "removed"),
        ("airgap-test/delta:1.1", "added"),
    }
    assert set(d["layers"]["added"]["digests"]) == {v2.layers[1], v2.layers[3]}
    assert set(d["layers"]["shared"]["digests"]) == {v1.layers[0], v1.layers[2]}
    assert 0 < d["delta_part_bytes"] < _part_bytes(full2)
    # the delta's own parts for its new layers are what diff predicted
    assert d["delta_part_bytes"] <= _part_bytes(delta)
    text = cli("diff", str(full1), str(delta / "manifest.json"))
    assert text.code == 0 and "layers added:" in text.out


def test_verify_checks_a_delta_alone(cli: Cli, packed: tuple[Path, Path, Path], keypair: KeyPair) -> None:
    _, _, delta = packed
    r = cli("verify", str(delta), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err


# --- content-defined deltas: the model layer was rebuilt, its bytes did not change ------------------


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sample, Sample]:
    """Release 2.0 and a rebuild 2.1 whose 16 MiB model file has a new mtime: a new model layer digest,
    the same model bytes."""
    return rebuilt_releases(tmp_path_factory.mktemp("rebuilt"))


@pytest.fixture
def chunk_delta(cli: Cli, rebuilt: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path) -> tuple[Path, Path, Path]:
    return full_full_delta(cli, keypair, tmp_path, *rebuilt, "cdc", "1GiB")


def test_rebuilt_model_layer_ships_as_a_small_recipe(
    chunk_delta: tuple[Path, Path, Path], rebuilt: tuple[Sample, Sample]
) -> None:
    _, full_b, delta = chunk_delta
    a, b = rebuilt
    manifest = json.loads((delta / "manifest.json").read_text())
    assert [(r["layer"], r["source"]) for r in manifest["rebuilds"]] == [(b.layers[2], a.layers[2])]
    assert _part_bytes(delta) <= 0.05 * _part_bytes(full_b)  # the target: <= 5 % of the full bundle


def test_rebuilt_layer_goes_to_an_archive_with_its_base(
    cli: Cli, chunk_delta: tuple[Path, Path, Path], rebuilt: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path
) -> None:
    full_a, _, delta = chunk_delta
    _, b = rebuilt
    out = tmp_path / "b.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full_a), "--to", f"docker-archive:{out}")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("pack", f"docker-archive:{out}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert r.code == 0 and json.loads(r.out)["images"][0]["image_id"] == b.image_id


def test_delta_pack_only_hashes_the_layers_its_base_has(
    cli: Cli, packed: tuple[Path, Path, Path], releases: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path
) -> None:
    full1, _, delta = packed
    _, v2 = releases
    again = tmp_path / "again"
    r = cli("pack", f"docker-archive:{v2.path}", "-o", str(again), "--key", str(keypair[0]), "--part-size", "1MiB",
            "--name", "agent", "--sequence", "2", "--since", str(full1), "--json")  # fmt: skip
    assert r.code == 0, r.err
    model = json.loads((full1 / "manifest.json").read_text())["blobs"]
    model_size = max(b["size"] for b in model)
    assert json.loads(r.out)["hashed_only_bytes"] >= model_size  # the 4 MiB model layer was never compressed
    assert (
        json.loads((again / "manifest.json").read_text())["blobs"] == json.loads((delta / "manifest.json").read_text())["blobs"]
    )


def _archive_with_one_file(path: Path, tag: str, body: bytes) -> str:
    """A one-layer docker-archive whose layer holds ``body`` as /data; returns the image ID."""
    import io
    import tarfile

    def fill(tar: tarfile.TarFile) -> None:
        tar.addfile(sample_image._info("data", len(body)), io.BytesIO(body))

    layer = io.BytesIO()
    digest, size = sample_image._write_layer(layer, fill)
    config, config_digest = sample_image._config([digest], "amd64")
    with tarfile.open(path, "w") as tar:
        tar.addfile(sample_image._info(f"{digest[7:]}/layer.tar", size), io.BytesIO(layer.getvalue()))
        tar.addfile(sample_image._info(f"{config_digest[7:]}.json", len(config)), io.BytesIO(config))
        sample_image._add_docker_index(tar, f"{config_digest[7:]}.json", [f"{digest[7:]}/layer.tar"], tag)
    return config_digest


def test_new_layer_that_looks_like_a_base_layer_is_still_packed(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    # same size and same first MiB as the base's layer, other bytes after: the guess misses, pack reads again
    old = _archive_with_one_file(tmp_path / "1.tar", "airgap-test/lookalike:1", b"A" * (2 * MiB) + b"B" * MiB)
    new = _archive_with_one_file(tmp_path / "2.tar", "airgap-test/lookalike:2", b"A" * (2 * MiB) + b"C" * MiB)
    full = tmp_path / "full"
    assert (
        cli("pack", f"docker-archive:{tmp_path / '1.tar'}", "-o", str(full), "--key", str(keypair[0]), "--sequence", "1").code
        == 0
    )
    delta = tmp_path / "delta"
    r = cli("pack", f"docker-archive:{tmp_path / '2.tar'}", "-o", str(delta), "--key", str(keypair[0]), "--since", str(full),
            "--sequence", "2", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["images"][0]["image_id"] == new != old
    assert result["hashed_only_bytes"] == 0  # the second pass stored everything
    assert cli("verify", str(delta), "--trust", str(keypair[1])).code == 0
    out = tmp_path / "new.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full), "--to", f"docker-archive:{out}")
    assert r.code == 0, r.err
    assert (
        json.loads(cli("pack", f"docker-archive:{out}", "-o", str(tmp_path / "x"), "--key", str(keypair[0]), "--json").out)[
            "images"
        ][0]["image_id"]
        == new
    )


def test_new_layer_the_size_of_a_base_layer_is_still_packed(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    # a new model of exactly the old model's size: the guess misses, and pack reads the source again
    one = sample_image.build(tmp_path / "1.tar", tag="airgap-test/same-size:1", model_size=2 * MiB, app_size=MiB // 4, seed="ss1")
    two = sample_image.build(
        tmp_path / "2.tar", tag="airgap-test/same-size:2", model_size=2 * MiB, app_size=MiB // 4, seed="ss1", model_seed="ss2"
    )
    assert two.layers[2] != one.layers[2]
    full = tmp_path / "full"
    assert cli("pack", f"docker-archive:{one.path}", "-o", str(full), "--key", str(keypair[0]), "--sequence", "1").code == 0
    delta = tmp_path / "delta"
    r = cli("pack", f"docker-archive:{two.path}", "-o", str(delta), "--key", str(keypair[0]), "--since", str(full),
            "--sequence", "2", "--json")  # fmt: skip
    assert r.code == 0, r.err
    carried = {b["digest"] for b in json.loads((delta / "manifest.json").read_text())["blobs"]}
    assert two.layers[2] in carried and one.layers[2] not in carried
    assert cli("verify", str(delta), "--trust", str(keypair[1])).code == 0
    out = tmp_path / "two.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full), "--to", f"docker-archive:{out}")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("pack", f"docker-archive:{out}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert json.loads(r.out)["images"][0]["image_id"] == two.image_id


def test_inspect_shows_a_delta_its_base_and_its_recipes(cli: Cli, chunk_delta: tuple[Path, Path, Path]) -> None:
    full_a, _, delta = chunk_delta
    r = cli("inspect", str(delta))
    assert r.code == 0, r.err
    base = "sha256:" + hashlib.sha256((full_a / "manifest.json").read_bytes()).hexdigest()
    assert f"delta     of the bundle whose manifest is {base}" in r.out
    assert "1 rebuilt from a recipe" in r.out and "recipe for layer" in r.out
