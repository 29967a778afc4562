"""Layer deltas: pack --since ships only the layers an older bundle lacks; install rebuilds the full
image (same image ID) from the engine's layers or from --base; diff shows what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.bundles import full_full_delta
from tests.helpers.engine import remove
from tests.helpers.samples import Sample, delta_releases, rebuilt_releases
from tests.helpers.tools import run_sh


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sample, Sample]:
    """Release 1.0 and an app update 1.1 that keeps the 4 MiB model layer (and the base layer)."""
    return delta_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture
def packed(cli, releases, keypair, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """full 1.0, full 1.1, and the delta 1.1 since 1.0."""
    return full_full_delta(cli, keypair, tmp_path, *releases, "agent", "1MiB")


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


# --- content-defined deltas: the model layer was rebuilt, its bytes did not change ------------------


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sample, Sample]:
    """Release 2.0 and a rebuild 2.1 whose 16 MiB model file has a new mtime: a new model layer digest,
    the same model bytes."""
    return rebuilt_releases(tmp_path_factory.mktemp("rebuilt"))


@pytest.fixture
def chunk_delta(cli, rebuilt, keypair, tmp_path: Path) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    return full_full_delta(cli, keypair, tmp_path, *rebuilt, "cdc", "1GiB")


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
