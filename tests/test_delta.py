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


@pytest.fixture
def packed(cli, releases, keypair, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """full 1.0, full 1.1, and the delta 1.1 since 1.0."""
    v1, v2 = releases
    full1, full2, delta = tmp_path / "full-1.0", tmp_path / "full-1.1", tmp_path / "delta-1.1"
    for out, sample, extra in (
        (full1, v1, ("--sequence", "1")),
        (full2, v2, ("--sequence", "2")),
        (delta, v2, ("--sequence", "2", "--since", str(full1))),
    ):
        archive = f"docker-archive:{sample.path}"
        r = cli("pack", archive, "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB", "--name", "agent", *extra)
        assert r.code == 0, r.err
    return full1, full2, delta


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
def test_delta_installs_on_an_engine_that_has_the_base(cli, packed, releases, keypair, docker_client) -> None:  # type: ignore[no-untyped-def]
    full1, _, delta = packed
    v1, v2 = releases
    remove(docker_client, v1.tag, v2.tag, v1.image_id, v2.image_id)
    try:
        assert cli("install", str(full1), "--trust", str(keypair[1])).code == 0
        r = cli("install", str(delta), "--trust", str(keypair[1]), "--json")
        assert r.code == 0, r.err
        result = json.loads(r.out)
        # the base layer's chain is in the engine; the model layer sits above the changed app layer, so its
        # chain is new: the engine's own copy of it is exported and checked, not shipped again
        assert (result["layers_present"], result["layers_from_engine"]) == (1, 1)
        assert docker_client.images.get(v2.tag).id == v2.image_id
        remove(docker_client, v2.tag, v2.image_id)
        # the POSIX installer cannot export layers from the engine: it says so, loads nothing
        done = run_sh(delta, "--trust", str(keypair[1]))
        assert done.returncode == 2 and "lacks layers of this delta's base bundle" in done.stderr, done.stderr
        assert v2.image_id not in [i.id for i in docker_client.images.list(all=True)]
    finally:
        remove(docker_client, v1.tag, v2.tag, v1.image_id, v2.image_id)


@pytest.mark.docker
def test_delta_without_its_base_needs_base_bundle(cli, packed, releases, keypair, docker_client) -> None:  # type: ignore[no-untyped-def]
    full1, _, delta = packed
    v1, v2 = releases
    remove(docker_client, v1.tag, v2.tag, v1.image_id, v2.image_id)
    try:
        r = cli("install", str(delta), "--trust", str(keypair[1]))
        assert r.code == 2 and "--base" in r.err, r.err
        assert v2.image_id not in [i.id for i in docker_client.images.list(all=True)]
        done = run_sh(delta, "--trust", str(keypair[1]))
        assert done.returncode == 2 and "base bundle" in done.stderr, done.stderr
        r = cli("install", str(delta), "--trust", str(keypair[1]), "--base", str(full1))
        assert r.code == 0, r.err
        assert docker_client.images.get(v2.tag).id == v2.image_id
    finally:
        remove(docker_client, v1.tag, v2.tag, v1.image_id, v2.image_id)


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
