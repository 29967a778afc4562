"""pack --with-installer: a wheelhouse in the bundle installs airgap on an offline host with pip
and no index; the installed airgap then verifies the bundle it came in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airgap._internal import wheelhouse

pytestmark = pytest.mark.tools


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheelhouse, built once with pip (on the packing side an index is reachable)."""
    d = tmp_path_factory.mktemp("wheelhouse")
    wheelhouse.build(d)
    return d


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """pip with no index, no config files, and every proxy pointing at a closed port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    dead = "http://127.0.0.1:9"
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_INDEX_URL=f"{dead}/simple",
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        http_proxy=dead,
        https_proxy=dead,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HOME=str(tmp_path / "home"),
    )
    return env


def test_wheelhouse_covers_every_supported_python_and_architecture(cli, samples, keypair, wheels: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = cli(
        "pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--wheelhouse", str(wheels)
    )
    assert r.code == 0, r.err
    listed = [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    names = [p.removeprefix("installer/wheels/") for p in listed if p.startswith("installer/wheels/")]
    assert any(n.startswith("airgap-") for n in names)
    for python in ("310", "311", "312", "313"):
        for arch in ("x86_64", "aarch64"):
            assert any(n.startswith("zstandard-") and f"cp{python}-cp{python}" in n and arch in n for n in names), (python, arch)
    for arch in ("x86_64", "aarch64"):
        assert any(n.startswith("cryptography-") and arch in n for n in names), arch


def test_offline_pip_install_from_the_bundle_then_verify(cli, samples, keypair, wheels: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = cli(
        "pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--wheelhouse", str(wheels)
    )
    assert r.code == 0, r.err
    venv = tmp_path / "offline-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = _offline_env(tmp_path)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(out / "installer" / "wheels"), "airgap"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    verify = subprocess.run(
        [str(venv / "bin" / "airgap"), "verify", str(out), "--trust", str(keypair[1])],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stderr
    assert "verified" in verify.stdout
    # the venv's airgap is the wheel's copy, not this source tree
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import airgap; print(airgap.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=tmp_path,
    )
    assert str(venv) in where.stdout


def test_tampered_wheel_fails_verify(cli, samples, keypair, wheels: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert (
        cli(
            "pack",
            f"docker-archive:{samples['docker'].path}",
            "-o",
            str(out),
            "--key",
            str(keypair[0]),
            "--wheelhouse",
            str(wheels),
        ).code
        == 0
    )
    wheel = next((out / "installer" / "wheels").glob("airgap-*.whl"))
    with open(wheel, "ab") as fh:
        fh.write(b"backdoor")
    r = cli("verify", str(out), "--trust", str(keypair[1]))
    assert r.code == 4, r.err
    assert wheel.name in r.err
