"""Attacks on the registry code through a real registry: a pull writing through links another user planted,
or leaving its staging area open to others."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from tests.helpers.registries import PrivateRegistry

# --- pull into a directory another user can write -------------------------------------------


@pytest.fixture
def published(cli, bundle: Path, registry: PrivateRegistry) -> str:  # type: ignore[no-untyped-def]
    ref = f"oci://{registry.host}/bundles/trust:{secrets.token_hex(4)}"  # each test packs its own bundle
    r = cli("publish", str(bundle), ref)
    assert r.code == 0, r.err
    return ref


def _plant(kind: str, out: Path, elsewhere: Path, bundle: Path) -> str:
    """Prepare ``out`` as another user could; return the name the error must give."""
    part = json.loads((bundle / "manifest.json").read_text())["parts"][0]["path"]
    if kind == "dir-is-a-link":
        out.symlink_to(elsewhere, target_is_directory=True)
        return str(out)
    out.mkdir()
    if kind == "installer-link":
        (out / "installer").symlink_to(elsewhere, target_is_directory=True)
        return "installer"
    if kind == "staging-link":
        (out / ".airgap-pull").symlink_to(elsewhere, target_is_directory=True)
        return ".airgap-pull"
    if kind == "staging-of-another-user":
        (out / ".airgap-pull").mkdir()
        os.chown(out / ".airgap-pull", 4242, 4242)
        return "another user"
    if kind == "parts-of-another-user":
        (out / "parts").mkdir()
        os.chown(out / "parts", 4242, 4242)
        return "parts"
    if kind == "part-file-link":
        (out / "parts").mkdir()
        (out / "parts" / Path(part).name).symlink_to(elsewhere / "victim")
        return Path(part).name
    raise AssertionError(kind)


@pytest.mark.tools
@pytest.mark.parametrize(
    "kind",
    [
        "installer-link",
        "staging-link",
        "staging-of-another-user",
        "parts-of-another-user",
        "part-file-link",
        "dir-is-a-link",
    ],
)
def test_pull_into_a_directory_with_a_planted_link_writes_nothing_through_it(
    cli, bundle: Path, published: str, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0 and "another-user" in kind:
        pytest.fail("this case needs root to plant a directory of another user (CI runs as root)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim").write_bytes(b"precious")
    out = tmp_path / "pulled"
    named = _plant(kind, out, elsewhere, bundle)
    r = cli("pull", published, "-o", str(out))
    assert r.code == 7, r.err
    assert named in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim"]
    assert (elsewhere / "victim").read_bytes() == b"precious"
    assert not (out / "manifest.json").exists()


@pytest.mark.tools
def test_overwriting_pull_refuses_a_manifest_that_is_a_link(cli, bundle: Path, published: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "pulled"
    out.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (out / "manifest.json").symlink_to(victim)
    r = cli("pull", published, "-o", str(out), "--overwrite")
    assert r.code == 7 and "manifest.json is a symbolic link" in r.err, r.err
    assert victim.read_text() == "{}" and (out / "manifest.json").is_symlink()


@pytest.mark.tools
def test_pull_keeps_its_staging_area_private(
    cli, bundle: Path, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "pulled"
    (out / ".airgap-pull").mkdir(parents=True)
    (out / ".airgap-pull").chmod(0o777)
    seen_modes: list[int] = []
    real_replace = os.replace

    def watching_replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen_modes.append((out / ".airgap-pull").stat().st_mode & 0o777)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", watching_replace)
    r = cli("pull", published, "-o", str(out))
    assert r.code == 0, r.err
    assert seen_modes and set(seen_modes) == {0o700}
    assert not (out / ".airgap-pull").exists()
    assert (out / "installer" / "install.sh").stat().st_mode & 0o111
