"""pack --with-installer: a wheelhouse in the bundle installs airgap on an offline host with pip and no
index, pinned by a signed, hash-pinned requirements file; the installed airgap then verifies the bundle
it came in.  A wheel dropped into the folder or swapped is never installed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from airgap import __version__
from airgap._cli import main
from airgap._internal.format import wheelhouse
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.tools

README = ROOT / "README.md"
# The README's offline install, run here as written (with this venv's path and Python put in).
INSTALL = """\
cd bundle
openssl pkeyutl -verify -pubin -inkey ../security-team.pub -rawin -in manifest.json \\
        -sigfile signatures/$(openssl pkey -pubin -in ../security-team.pub -outform DER | sha256sum | cut -d' ' -f1).sig &&
  grep -A1 '"path": "installer/wheels/requirements.txt"' manifest.json |
  sed -n 's|^ *"sha256": "\\([0-9a-f]\\{64\\}\\)",$|\\1  installer/wheels/requirements.txt|p' | sha256sum -c &&
  python3 -m venv /opt/airgap &&
  /opt/airgap/bin/pip install --no-index --find-links installer/wheels --require-hashes -r installer/wheels/requirements.txt
"""


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheelhouse, built once with pip (on the packing side an index is reachable)."""
    d = tmp_path_factory.mktemp("wheelhouse")
    wheelhouse.build(d)
    return d


@pytest.fixture(scope="module")
def packed(samples, keypair, wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """One bundle with the wheelhouse (tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("installer-bundle") / "bundle"
    args = ["pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0])]
    assert main(["--quiet", *args, "--wheelhouse", str(wheels)]) == 0
    return out


@pytest.fixture
def bundle(packed: Path, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the bundle as the offline host receives it, the security team's public key beside it."""
    shutil.copytree(packed, tmp_path / "bundle")
    shutil.copy(keypair[1], tmp_path / "security-team.pub")
    return tmp_path / "bundle"


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


def _install(bundle: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The README's offline install, into a fresh venv beside the bundle."""
    venv = bundle.parent / "venv"
    script = INSTALL.replace("python3 -m venv /opt/airgap", f"{sys.executable} -m venv {venv}").replace("/opt/airgap", str(venv))
    done = subprocess.run(
        ["sh", "-c", script], cwd=bundle.parent, capture_output=True, text=True, env=_offline_env(bundle.parent), check=False
    )
    return done, venv


def _installed_airgap(venv: Path, tmp_path: Path) -> str:
    code = "import importlib.metadata as m, airgap; print(m.version('airgap'), airgap.__file__)"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=_offline_env(tmp_path),
        check=True,
        cwd=tmp_path,
    )
    version, path = where.stdout.split()
    assert path.startswith(str(venv))  # the venv's copy, not this source tree
    return version


def _fake_airgap_wheel(directory: Path, version: str) -> Path:
    """A valid wheel named like airgap's: what an attacker with write access to the folder drops in."""
    info = f"airgap-{version}.dist-info"
    files = {
        "airgap/__init__.py": b"import os\nos.system('echo owned > /tmp/airgap-owned')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: airgap\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: attacker\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    path = directory / f"airgap-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path


def _requirements(bundle: Path) -> dict[str, list[str]]:
    """requirements.txt as {name==version[ ; marker]: [sha256, ...]}."""
    pins = {}
    for line in (bundle / "installer" / "wheels" / "requirements.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        spec, _, hashes = line.partition(" --hash=")
        pins[spec] = re.findall(r"sha256:([0-9a-f]{64})", "--hash=" + hashes)
    return pins


def test_wheelhouse_covers_every_supported_python_and_architecture(packed: Path) -> None:
    listed = [f["path"] for f in json.loads((packed / "manifest.json").read_text())["files"]]
    names = [p.removeprefix("installer/wheels/") for p in listed if p.startswith("installer/wheels/")]
    assert any(n.startswith("airgap-") for n in names)
    for python in ("310", "311", "312", "313"):
        for arch in ("x86_64", "aarch64"):
            assert any(n.startswith("zstandard-") and f"cp{python}-cp{python}" in n and arch in n for n in names), (python, arch)
    for arch in ("x86_64", "aarch64"):
        assert any(n.startswith("cryptography-") and arch in n for n in names), arch


def test_requirements_pin_every_shipped_wheel_and_are_signed(packed: Path) -> None:
    files = {f["path"]: f for f in json.loads((packed / "manifest.json").read_text())["files"]}
    req = files["installer/wheels/requirements.txt"]  # listed, so signed like every other file
    assert hashlib.sha256((packed / req["path"]).read_bytes()).hexdigest() == req["sha256"]
    pins = _requirements(packed)
    assert f"airgap=={__version__}" in pins
    assert all(re.fullmatch(r"[a-z0-9-]+==[^ ;]+( ; .+)?", spec) for spec in pins), pins
    pinned = sorted(h for hashes in pins.values() for h in hashes)
    shipped = sorted(f["sha256"] for path, f in files.items() if path.startswith("installer/wheels/") and path.endswith(".whl"))
    assert pinned == shipped  # one hash per wheel shipped, and no wheel without one


def test_offline_pip_install_from_the_bundle_then_verify(bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done, venv = _install(bundle)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "installer/wheels/requirements.txt: OK" in done.stdout
    assert _installed_airgap(venv, tmp_path) == __version__
    verify = subprocess.run(
        [str(venv / "bin" / "airgap"), "verify", str(bundle), "--trust", str(keypair[1])],
        capture_output=True,
        text=True,
        env=_offline_env(tmp_path),
        check=False,
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stderr
    assert "verified" in verify.stdout


def test_unlisted_wheel_not_installed(bundle: Path, tmp_path: Path) -> None:
    wheels = bundle / "installer" / "wheels"
    _fake_airgap_wheel(wheels, "99.0")
    # the premise: without the pins, pip takes the planted wheel
    unpinned = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--no-index",
         "--find-links", str(wheels), "--report", "-", "--quiet", "airgap"],
        capture_output=True, text=True, env=_offline_env(tmp_path), check=True,
    )  # fmt: skip
    assert json.loads(unpinned.stdout)["install"][0]["metadata"]["version"] == "99.0"
    done, venv = _install(bundle)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _installed_airgap(venv, tmp_path) == __version__


def test_replaced_wheel_refused_by_pip(bundle: Path, tmp_path: Path) -> None:
    wheels = bundle / "installer" / "wheels"
    listed = sorted(wheels.glob(f"airgap-{__version__}-*.whl"))[0]
    listed.unlink()
    (tmp_path / "forged").mkdir()
    os.replace(_fake_airgap_wheel(tmp_path / "forged", __version__), listed)  # same name, other bytes
    done, venv = _install(bundle)
    assert done.returncode != 0
    assert "installer/wheels/requirements.txt: OK" in done.stdout  # the pins were the signed ones ...
    assert "DO NOT MATCH THE HASHES" in done.stderr.upper(), done.stderr[-2000:]  # ... and pip held to them
    assert not list((venv / "lib").glob("python3*/site-packages/airgap"))


def test_edited_requirements_stop_the_documented_install(bundle: Path, tmp_path: Path) -> None:
    """Whoever can write the folder can also rewrite the pins: the signed manifest catches that first."""
    forged = _fake_airgap_wheel(bundle / "installer" / "wheels", "99.0")
    requirements = bundle / "installer" / "wheels" / "requirements.txt"
    lines = [line for line in requirements.read_text().splitlines() if not line.startswith("airgap==")]
    lines.append(f"airgap==99.0 --hash=sha256:{hashlib.sha256(forged.read_bytes()).hexdigest()}")
    requirements.write_text("\n".join(lines) + "\n")
    done, venv = _install(bundle)
    assert done.returncode != 0
    assert "requirements.txt: FAILED" in done.stdout
    assert not venv.exists()


def test_the_install_commands_tested_here_are_the_readme_commands() -> None:
    assert INSTALL in README.read_text()


def test_tampered_wheel_fails_verify(cli, bundle: Path, keypair) -> None:  # type: ignore[no-untyped-def]
    wheel = sorted((bundle / "installer" / "wheels").glob("airgap-*.whl"))[0]
    with open(wheel, "ab") as fh:
        fh.write(b"backdoor")
    r = cli("verify", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 4, r.err
    assert wheel.name in r.err
