"""Resume after a killed process: an install into a real engine finishes without hashing again the parts it
checked; a pack of a 256 MiB image, SIGKILLed midway, resumes from its last complete part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Sample, sample_image


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


STAGING = ".airgap-staging"


def _journal(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / STAGING / "journal.jsonl").read_text().splitlines()]


def _staged_file(entry: dict[str, object]) -> str:
    return f"{entry['stem']}.{entry['index']:05d}.tmp"


def _interrupted_pack(sample_path: Path, out: Path, key: Path, entries: int) -> list[str]:
    """Start a pack in its own process and SIGKILL it once ``entries`` parts are journaled."""
    cmd = [sys.executable, "-m", "airgap", "-q", "pack", f"docker-archive:{sample_path}", "-o", str(out), "--key", str(key),
           "--part-size", "16MiB", "--json"]  # fmt: skip
    journal = out / STAGING / "journal.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= entries + 1):  # a header, then parts
        assert proc.poll() is None and time.monotonic() < deadline, "pack ended before it could be interrupted"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.json").exists()
    return cmd


@pytest.fixture(scope="module")
def big_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    d = tmp_path_factory.mktemp("big")
    return sample_image.build(d / "big.tar", tag="airgap-test/resume:1", model_size=256 << 20, app_size=1 << 20, seed="resume")


def test_pack_killed_midway_resumes_from_the_last_complete_part(
    big_sample: Sample, keypair: KeyPair, cli: Cli, tmp_path: Path
) -> None:
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


def test_damaged_staged_part_stops_the_resume(big_sample: Sample, keypair: KeyPair, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "b"
    cmd = _interrupted_pack(big_sample.path, out, keypair[0], entries=2)
    staged = out / STAGING / _staged_file(_journal(out)[-1])
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


def test_interrupted_pack_directory_with_foreign_files_is_not_resumed(
    big_sample: Sample, keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    cmd = _interrupted_pack(big_sample.path, out, keypair[0], entries=1)
    (out / "notes.txt").write_text("not ours")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 7 and "is not empty" in done.stderr
