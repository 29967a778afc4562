"""Resume: an interrupted install finishes without hashing again the parts it (or verify) already checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import sample_image

from airgap._internal.bundle import load_bundle
from airgap.errors import IntegrityError
from airgap.install import InstallOptions, install
from airgap.keys import load_public
from tests.conftest import ROOT
from tests.test_install_unit import FakeEngine


def test_install_after_verify_hashes_no_part_again(cli, bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    result = install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=lambda: FakeEngine(tmp_path))  # type: ignore[arg-type,return-value]
    assert result.parts_cached == len(load_bundle(bundle).manifest.parts)
    assert result.parts_hashed == 0


def test_part_changed_after_verify_is_hashed_again_and_refused(cli, bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    part = bundle / load_bundle(bundle).manifest.parts[-1].path
    data = bytearray(part.read_bytes())
    data[-5] ^= 1
    part.write_bytes(data)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=part.name):
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=lambda: engine)  # type: ignore[arg-type,return-value]
    assert engine.ids == set()


def test_part_changed_with_its_mtime_restored_is_still_caught(cli, bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The cache trusts size and mtime; an attacker who forges both still meets the blob digest."""
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    m = load_bundle(bundle).manifest
    victim = m.parts_of(m.images[0].layers[2].digest)[0]
    path = bundle / victim.path
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # inside a raw (incompressible) block: still a valid frame, except its checksum
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=r"rebuilt from its parts does not match|not a valid zstd frame"):
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=lambda: engine)  # type: ignore[arg-type,return-value]
    assert engine.ids == set()


@pytest.mark.docker
def test_install_killed_midway_resumes_without_rehashing(docker_client, cli, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sample = sample_image.build(
        tmp_path / "big.tar", tag="airgap-test/resume:1", model_size=320 << 20, app_size=1 << 20, seed="resume"
    )
    out = tmp_path / "b"
    assert (
        cli("pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(keypair[0]), "--part-size", "32MiB").code == 0
    )
    total = len(load_bundle(out).manifest.parts)
    cache = Path(os.environ["AIRGAP_STATE"]).with_name("verified.jsonl")
    cmd = [sys.executable, "-m", "airgap", "-q", "install", str(out), "--trust", str(keypair[1]), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (cache.exists() and len(cache.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "install ended before it could be interrupted"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(sample.tag)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # layers the engine already holds (the base layer all samples share, when another sample is loaded) are not read
    manifest = load_bundle(out).manifest
    skipped = sum(len(manifest.parts_of(layer.digest)) for layer in manifest.images[0].layers[: result["layers_present"]])
    assert result["parts_cached"] >= 3 and result["parts_hashed"] + result["parts_cached"] == total - skipped
    assert docker_client.images.get(sample.tag).id == sample.image_id
    docker_client.images.remove(sample.tag, force=True)


def _interrupted_pack(sample_path: Path, out: Path, key: Path, entries: int) -> list[str]:
    """Start a pack in its own process and SIGKILL it once ``entries`` parts are journaled."""
    cmd = [sys.executable, "-m", "airgap", "-q", "pack", f"docker-archive:{sample_path}", "-o", str(out), "--key", str(key),
           "--part-size", "16MiB", "--json"]  # fmt: skip
    journal = out / ".airgap-staging" / "journal.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= entries):
        assert proc.poll() is None and time.monotonic() < deadline, "pack ended before it could be interrupted"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.json").exists()
    return cmd


@pytest.fixture(scope="module")
def big_sample(tmp_path_factory: pytest.TempPathFactory) -> sample_image.Sample:
    d = tmp_path_factory.mktemp("big")
    return sample_image.build(d / "big.tar", tag="airgap-test/resume:1", model_size=256 << 20, app_size=1 << 20, seed="resume")


def test_pack_killed_midway_resumes_from_the_last_complete_part(big_sample, keypair, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    cmd = _interrupted_pack(big_sample.path, out, keypair[0], entries=4)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reused_parts"] >= 4
    assert not (out / ".airgap-staging").exists()
    assert cli("verify", str(out), "--trust", str(keypair[1])).code == 0
    fresh = tmp_path / "fresh"
    r = cli("pack", f"docker-archive:{big_sample.path}", "-o", str(fresh), "--key", str(keypair[0]), "--part-size", "16MiB")
    assert r.code == 0, r.err
    assert load_bundle(out).manifest.parts == load_bundle(fresh).manifest.parts  # resuming changes no byte


def test_damaged_staged_part_stops_the_resume(big_sample, keypair, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    cmd = _interrupted_pack(big_sample.path, out, keypair[0], entries=2)
    journal = (out / ".airgap-staging" / "journal.jsonl").read_text().splitlines()
    staged = out / ".airgap-staging" / json.loads(journal[-1])["file"]
    data = bytearray(staged.read_bytes())
    data[100] ^= 1
    staged.write_bytes(data)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 7, done.stderr
    assert staged.name in done.stderr and "--overwrite" in done.stderr
    assert not (out / "manifest.json").exists()
    again = subprocess.run([*cmd, "--overwrite"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reused_parts"] == 0


def test_interrupted_pack_directory_with_foreign_files_is_not_resumed(big_sample, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    cmd = _interrupted_pack(big_sample.path, out, keypair[0], entries=1)
    (out / "notes.txt").write_text("not ours")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 7 and "is not empty" in done.stderr
