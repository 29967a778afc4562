"""Layer deltas: pack --since ships only the layers an older bundle lacks; install rebuilds the full
image (same image ID) from the engine's layers or from --base; diff shows what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sample_image

from tests.test_e2e_docker import remove
from tests.test_install_sh import run_sh

MiB = 1 << 20


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[sample_image.Sample, sample_image.Sample]:
    """Release 1.0 and an app update 1.1 that keeps the 4 MiB model layer (and the base layer)."""
    d = tmp_path_factory.mktemp("releases")
    v1 = sample_image.build(d / "v1.tar", tag="airgap-test/delta:1.0", model_size=4 * MiB, app_size=MiB // 2, seed="rel-1")
    v2 = sample_image.build(
        d / "v2.tar", tag="airgap-test/delta:1.1", model_size=4 * MiB, app_size=MiB // 2, seed="rel-2", model_seed="rel-1"
    )
    assert v1.layers[2] == v2.layers[2] and v1.layers[1] != v2.layers[1]
    return v1, v2


def _full_full_delta(cli, keypair, tmp_path: Path, old, new, name: str, part_size: str) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
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


@pytest.fixture
def packed(cli, releases, keypair, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """full 1.0, full 1.1, and the delta 1.1 since 1.0."""
    return _full_full_delta(cli, keypair, tmp_path, *releases, "agent", "1MiB")


def _part_bytes(bundle: Path) -> int:
    return sum(p["size"] for p in json.loads((bundle / "manifest.json").read_text())["parts"])


def test_delta_carries_only_new_layers_and_names_its_base(packed, releases) -> None:  # type: ignore[no-untyped-def]
    full1, full2, delta = packed
    _, v2 = releases
    manifest = json.loads((delta / "manifest.json").read_text())
    assert manifest["base"] == "sha256:" + hashlib.sha256((full1 / "manifest.json").read_bytes()).hexdigest()
    carried = {b["digest"] for b in manifest["blobs"]}
    assert v2.layers[2] not in carried and v2.layers[0] not in carried  # model and base stay home
    assert v2.layers[1] in carried and v2.image_id in carried
    assert manifest["images"] == json.loads((full2 / "manifest.json").read_text())["images"]
    assert _part_bytes(delta) < _part_bytes(full2) / 3


@pytest.mark.docker
@pytest.mark.parametrize(
    ("bundles", "samples_of", "counts"),
    [
        # base chain held; the model sits above the changed app layer, so its chain is new: the engine's own
        # copy of it is exported and checked, not shipped again
        ("packed", "releases", (1, 0, 1)),
        # base and app chains held; the model rebuilt over the engine's old model; settings (above it) exported
        ("chunk_delta", "rebuilt", (2, 1, 1)),
    ],
)
def test_delta_installs_on_an_engine_that_has_the_base(cli, request, keypair, docker_client, bundles, samples_of, counts) -> None:  # type: ignore[no-untyped-def]
    full_old, _, delta = request.getfixturevalue(bundles)
    old, new = request.getfixturevalue(samples_of)
    remove(docker_client, old.tag, new.tag, old.image_id, new.image_id)
    try:
        assert cli("install", str(full_old), "--trust", str(keypair[1])).code == 0
        r = cli("install", str(delta), "--trust", str(keypair[1]), "--json")
        assert r.code == 0, r.err
        result = json.loads(r.out)
        assert (result["layers_present"], result["layers_rebuilt"], result["layers_from_engine"]) == counts
        assert docker_client.images.get(new.tag).id == new.image_id
        remove(docker_client, new.tag, new.image_id)
        # the POSIX installer cannot export or rebuild layers from the engine: it says so, loads nothing
        done = run_sh(delta, "--trust", str(keypair[1]))
        assert done.returncode == 2 and "lacks layers of this delta's base bundle" in done.stderr, done.stderr
        assert new.image_id not in [i.id for i in docker_client.images.list(all=True)]
    finally:
        remove(docker_client, old.tag, new.tag, old.image_id, new.image_id)


@pytest.mark.docker
@pytest.mark.parametrize(("bundles", "samples_of"), [("packed", "releases"), ("chunk_delta", "rebuilt")])
def test_delta_on_a_clean_engine_needs_its_base_bundle(
    cli, request, keypair, docker_client, bundles: str, samples_of: str
) -> None:  # type: ignore[no-untyped-def]
    full_old, _, delta = request.getfixturevalue(bundles)
    old, new = request.getfixturevalue(samples_of)
    remove(docker_client, old.tag, new.tag, old.image_id, new.image_id)
    try:
        r = cli("install", str(delta), "--trust", str(keypair[1]))
        assert r.code == 2 and "--base" in r.err, r.err
        assert new.image_id not in [i.id for i in docker_client.images.list(all=True)]
        done = run_sh(delta, "--trust", str(keypair[1]))
        assert done.returncode == 2 and "base bundle" in done.stderr, done.stderr
        r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full_old))
        assert r.code == 0, r.err
        assert docker_client.images.get(new.tag).id == new.image_id
    finally:
        remove(docker_client, old.tag, new.tag, old.image_id, new.image_id)


def test_delta_refuses_a_base_it_was_not_made_against(cli, packed, keypair) -> None:  # type: ignore[no-untyped-def]
    _, full2, delta = packed
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full2), "--to", "oci-archive:/dev/null/x")
    assert r.code == 5, r.err
    assert "not the bundle this delta was made against" in r.err


def test_delta_with_base_writes_the_full_image_to_an_archive(cli, packed, releases, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    full1, _, delta = packed
    _, v2 = releases
    out = tmp_path / "v2-oci.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full1), "--to", f"oci-archive:{out}")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("pack", f"oci-archive:{out}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["image_id"] == v2.image_id


def test_diff_shows_images_layers_and_bytes(cli, packed, releases) -> None:  # type: ignore[no-untyped-def]
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


def test_verify_checks_a_delta_alone(cli, packed, keypair) -> None:  # type: ignore[no-untyped-def]
    _, _, delta = packed
    r = cli("verify", str(delta), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err


# --- content-defined deltas: the model layer was rebuilt, its bytes did not change ------------------


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[sample_image.Sample, sample_image.Sample]:
    """Release 2.0 and a rebuild 2.1 whose 16 MiB model file has a new mtime: a new model layer digest,
    the same model bytes."""
    d = tmp_path_factory.mktemp("rebuilt")
    a = sample_image.build(d / "a.tar", tag="airgap-test/cdc:2.0", model_size=16 * MiB, app_size=MiB // 2, seed="cdc")
    b = sample_image.build(
        d / "b.tar", tag="airgap-test/cdc:2.1", model_size=16 * MiB, app_size=MiB // 2, seed="cdc", model_mtime=1_700_000_000
    )
    assert a.layers[2] != b.layers[2] and a.layers[:2] == b.layers[:2]
    return a, b


@pytest.fixture
def chunk_delta(cli, rebuilt, keypair, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    return _full_full_delta(cli, keypair, tmp_path, *rebuilt, "cdc", "1GiB")


def test_rebuilt_model_layer_ships_as_a_small_recipe(chunk_delta, rebuilt) -> None:  # type: ignore[no-untyped-def]
    _, full_b, delta = chunk_delta
    a, b = rebuilt
    manifest = json.loads((delta / "manifest.json").read_text())
    assert [(r["layer"], r["source"]) for r in manifest["rebuilds"]] == [(b.layers[2], a.layers[2])]
    assert _part_bytes(delta) <= 0.05 * _part_bytes(full_b)  # the target: <= 5 % of the full bundle


@pytest.mark.docker
def test_tampered_recipe_loads_nothing(cli, chunk_delta, rebuilt, keypair, docker_client) -> None:  # type: ignore[no-untyped-def]
    full_a, _, delta = chunk_delta
    a, b = rebuilt
    manifest = json.loads((delta / "manifest.json").read_text())
    recipe = manifest["rebuilds"][0]["recipe"]
    part = next(p for p in manifest["parts"] if p["blob"] == recipe)
    path = delta / part["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    remove(docker_client, a.tag, b.tag, a.image_id, b.image_id)
    try:
        r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full_a))
        assert r.code == 4 and part["path"] in r.err, r.err
        assert b.image_id not in [i.id for i in docker_client.images.list(all=True)]
    finally:
        remove(docker_client, a.tag, b.tag, a.image_id, b.image_id)


def test_rebuilt_layer_goes_to_an_archive_with_its_base(cli, chunk_delta, rebuilt, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    full_a, _, delta = chunk_delta
    _, b = rebuilt
    out = tmp_path / "b.tar"
    r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full_a), "--to", f"docker-archive:{out}")
    assert r.code == 0, r.err
    again = tmp_path / "again"
    r = cli("pack", f"docker-archive:{out}", "-o", str(again), "--key", str(keypair[0]), "--json")
    assert r.code == 0 and json.loads(r.out)["images"][0]["image_id"] == b.image_id


@pytest.mark.docker
def test_layers_the_engine_holds_are_not_read_from_a_full_bundle(cli, chunk_delta, rebuilt, keypair, docker_client) -> None:  # type: ignore[no-untyped-def]
    full_a, full_b, _ = chunk_delta
    a, b = rebuilt
    manifest = json.loads((full_b / "manifest.json").read_text())
    app_part = next(p for p in manifest["parts"] if p["blob"] == b.layers[1])  # the app layer both releases share
    path = full_b / app_part["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    remove(docker_client, a.tag, b.tag, a.image_id, b.image_id)
    try:
        assert cli("install", str(full_a), "--trust", str(keypair[1])).code == 0
        r = cli("install", str(full_b), "--trust", str(keypair[1]), "--json")
        assert r.code == 0, r.err  # the damaged part is never read: the engine's own layer is used
        assert json.loads(r.out)["layers_present"] == 2
        assert docker_client.images.get(b.tag).id == b.image_id
        r = cli("verify", str(full_b), "--trust", str(keypair[1]))  # verify reads everything and says so
        assert r.code == 4 and app_part["path"] in r.err
    finally:
        remove(docker_client, a.tag, b.tag, a.image_id, b.image_id)


def test_delta_pack_only_hashes_the_layers_its_base_has(cli, packed, releases, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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


def test_new_layer_that_looks_like_a_base_layer_is_still_packed(cli, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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


def test_new_layer_the_size_of_a_base_layer_is_still_packed(cli, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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


def test_inspect_shows_a_delta_its_base_and_its_recipes(cli, chunk_delta) -> None:  # type: ignore[no-untyped-def]
    full_a, _, delta = chunk_delta
    r = cli("inspect", str(delta))
    assert r.code == 0, r.err
    base = "sha256:" + hashlib.sha256((full_a / "manifest.json").read_bytes()).hexdigest()
    assert f"delta     of the bundle whose manifest is {base}" in r.out
    assert "1 rebuilt from a recipe" in r.out and "recipe for layer" in r.out
