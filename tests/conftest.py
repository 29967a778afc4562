"""Fixtures every test may use: a private rollback state, airgap in-process, sample images and keys.

They wrap ``tests/helpers``; the real engine and registries are fixtures of ``integration/conftest.py``
only, so a unit test cannot ask for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import Cli, in_process
from tests.helpers.keys import KeyPair, make_keypair
from tests.helpers.samples import Samples, build_samples


@pytest.fixture(autouse=True)
def _private_install_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own rollback state file, never the user's."""
    monkeypatch.setenv("AIRGAP_STATE", str(tmp_path / "airgap-state" / "installed.json"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run airgap in-process; return exit code, stdout and stderr."""
    return in_process(capsys)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """Small seed-shaped images: two docker-archives sharing base layers, and an oci-archive."""
    return build_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("keys"), "signer")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("otherkeys"), "stranger")


@pytest.fixture
def bundle(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    """The small sample image packed with 1 MiB parts (its model layer spans several parts)."""
    out = tmp_path / "b"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    return out
