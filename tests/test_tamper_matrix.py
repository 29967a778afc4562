"""The tamper and fault matrix: one test per attack or fault, each on a real Docker engine, each asserting
the exact exit code, a message naming the file or part at fault, and that the engine gained no image or tag."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import zstandard

from airgap._internal.bundle import load_bundle
from airgap.keys import load_private
from airgap.trust import sign
from tests.conftest import IN_CI, ROOT, evict_images_sharing_layers

pytestmark = pytest.mark.docker

TAG = "airgap-test/agent:1.0"


def engine_state(client: docker.DockerClient) -> set[tuple[str, tuple[str, ...]]]:
    return {(i.id, tuple(sorted(i.tags))) for i in client.images.list(all=True)}


@pytest.fixture
def bundle(cli, docker_client, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    for ref in (TAG, samples["docker"].image_id):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)
    out = tmp_path / "bundle"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    return out


@pytest.fixture
def refused(cli, docker_client, keypair, samples):  # type: ignore[no-untyped-def]
    """Install must fail with ``code``, name ``culprit``, and leave the engine as it was."""

    def check(bundle: Path, code: int, culprit: str, *extra: str) -> str:
        evict_images_sharing_layers(docker_client, samples["docker"].layers)  # the sample every bundle here is packed from
        before = engine_state(docker_client)
        r = cli("install", str(bundle), "--trust", str(keypair[1]), *extra)
        assert r.code == code, r.err
        assert culprit in r.err, r.err
        assert "Traceback" not in r.err and r.err.startswith("error: ") and "\nhint: " in r.err
        assert engine_state(docker_client) == before
        return r.err

    return check


def resign(bundle: Path, key: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    """A manifest changed and signed again with a trusted key: what a compromised build host could ship."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_bytes())
    edit(data)
    raw = (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()
    path.write_bytes(raw)
    fp, sig = sign(raw, load_private(key, None))
    (bundle / "signatures" / f"{fp}.sig").write_bytes(sig)


def part_paths(bundle: Path) -> list[str]:
    return [p.path for p in load_bundle(bundle).manifest.parts]


# --- damaged or rearranged files -----------------------------------------------------------------


def test_truncated_part_refused(bundle: Path, refused) -> None:  # type: ignore[no-untyped-def]
    victim = part_paths(bundle)[len(part_paths(bundle)) // 2]
    data = (bundle / victim).read_bytes()
    (bundle / victim).write_bytes(data[: len(data) // 2])
    refused(bundle, 4, victim)


def test_extra_unexpected_file_refused(bundle: Path, refused) -> None:  # type: ignore[no-untyped-def]
    (bundle / "parts" / "payload.sh").write_text("#!/bin/sh\necho surprise\n")
    refused(bundle, 4, "parts/payload.sh")


def test_swapped_parts_refused(bundle: Path, refused) -> None:  # type: ignore[no-untyped-def]
    model = load_bundle(bundle).manifest.images[0].layers[2].digest
    a, b = [p.path for p in load_bundle(bundle).manifest.parts_of(model)][:2]
    tmp = bundle / "swap"
    (bundle / a).rename(tmp)
    (bundle / b).rename(bundle / a)
    tmp.rename(bundle / b)
    refused(bundle, 4, a)


def test_part_from_another_bundle_with_the_right_name_refused(
    cli, bundle: Path, samples, keypair, refused, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other"
    assert (
        cli(
            "pack", f"docker-archive:{samples['docker2'].path}", "-o", str(other), "--key", str(keypair[0]), "--part-size", "1MiB"
        ).code
        == 0
    )
    mine = load_bundle(bundle).manifest
    theirs = load_bundle(other).manifest
    victim = mine.parts_of(mine.images[0].layers[2].digest)[0]
    foreign = theirs.parts_of(theirs.images[0].layers[2].digest)[0]
    shutil.copy(other / foreign.path, bundle / victim.path)
    refused(bundle, 4, victim.path)


def test_symlinked_part_refused(bundle: Path, refused, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = part_paths(bundle)[0]
    shutil.move(bundle / victim, tmp_path / "outside.zst")
    (bundle / victim).symlink_to(tmp_path / "outside.zst")
    refused(bundle, 4, victim)


# --- manifest and signatures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("airgap-test/agent:1.0", "airgap-test/agent:evil"),  # a tag
        ('"sequence": ', '"sequence": 9'),  # the sequence number
        ("digest", None),  # one layer digest
    ],
    ids=["tag", "sequence", "digest"],
)
def test_edited_manifest_refused(bundle: Path, refused, old: str, new: str | None) -> None:  # type: ignore[no-untyped-def]
    path = bundle / "manifest.json"
    text = path.read_text()
    if new is None:
        layer = load_bundle(bundle).manifest.images[0].layers[0].digest
        text = text.replace(layer, "sha256:" + "0" * 64)
    else:
        text = text.replace(old, new, 1)
    assert text != path.read_text()
    path.write_text(text)
    refused(bundle, 5, "manifest.json")


def test_signature_removed_refused(bundle: Path, refused) -> None:  # type: ignore[no-untyped-def]
    for sig in (bundle / "signatures").iterdir():
        sig.unlink()
    refused(bundle, 5, "no signature")


def test_signature_replaced_by_untrusted_key_refused(bundle: Path, refused, other_keypair) -> None:  # type: ignore[no-untyped-def]
    (sig,) = (bundle / "signatures").iterdir()
    fp, forged = sign((bundle / "manifest.json").read_bytes(), load_private(other_keypair[0], None))
    sig.write_bytes(forged)  # the stranger's signature under the trusted key's name
    refused(bundle, 5, sig.name)
    sig.unlink()
    (bundle / "signatures" / f"{fp}.sig").write_bytes(forged)  # and under its own name
    refused(bundle, 5, "no signature from a trusted key")


def test_below_threshold_refused(bundle: Path, refused, other_keypair) -> None:  # type: ignore[no-untyped-def]
    refused(bundle, 5, "only 1 valid signature", "--trust", str(other_keypair[1]), "--threshold", "2")


def test_rollback_refused(cli, docker_client, samples, keypair, refused, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    new, old = tmp_path / "new", tmp_path / "old"
    for out, sample, seq in ((new, samples["docker2"], "20"), (old, samples["docker"], "10")):
        r = cli(
            "pack",
            f"docker-archive:{sample.path}",
            "-o",
            str(out),
            "--key",
            str(keypair[0]),
            "--name",
            "agent",
            "--sequence",
            seq,
        )
        assert r.code == 0, r.err
    assert cli("install", str(new), "--trust", str(keypair[1])).code == 0
    refused(old, 5, "sequence 10 is older than sequence 20")  # (it evicts the new image: they share a layer)
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(samples["docker2"].tag, force=True)


def test_expired_refused(cli, samples, keypair, refused, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1500000000")
    out = tmp_path / "expired"
    assert (
        cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]), "--expires", "7d").code
        == 0
    )
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    refused(out, 5, "expired at 2017-07-21T02:40:00Z")


def test_zstd_bomb_past_declared_size_refused(bundle: Path, keypair, refused) -> None:  # type: ignore[no-untyped-def]
    manifest = load_bundle(bundle).manifest
    # a small layer's only part: the settings layer, which no other image in the engine shares (layers the
    # engine already holds are not read at all)
    victim = manifest.parts_of(manifest.images[0].layers[3].digest)[0]
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))
    (bundle / victim.path).write_bytes(bomb)

    def edit(d: dict) -> None:  # type: ignore[type-arg]
        for p in d["parts"]:
            if p["path"] == victim.path:
                p["size"], p["sha256"] = len(bomb), hashlib.sha256(bomb).hexdigest()

    resign(bundle, keypair[0], edit)
    refused(bundle, 4, f"{victim.path} decompresses past its declared length")


@pytest.mark.parametrize("evil", ["../../../etc/passwd", "/etc/passwd", "parts/../../outside.zst"])
def test_names_escaping_the_bundle_refused(bundle: Path, keypair, refused, evil: str) -> None:  # type: ignore[no-untyped-def]
    def edit(d: dict) -> None:  # type: ignore[type-arg]
        d["parts"][0]["path"] = evil

    resign(bundle, keypair[0], edit)
    refused(bundle, 3, "manifest.json")


def test_truncated_manifest_refused_as_unsigned(bundle: Path, refused) -> None:  # type: ignore[no-untyped-def]
    path = bundle / "manifest.json"
    path.write_bytes(path.read_bytes()[:-40])
    refused(bundle, 5, "manifest.json")


def test_malformed_json_signed_by_trusted_key_refused(bundle: Path, keypair, refused) -> None:  # type: ignore[no-untyped-def]
    garbage = b'{"schema_version": 1, "images": [\n'
    (bundle / "manifest.json").write_bytes(garbage)
    fp, sig = sign(garbage, load_private(keypair[0], None))
    (bundle / "signatures" / f"{fp}.sig").write_bytes(sig)
    refused(bundle, 3, "manifest.json: not valid JSON")


def test_schema_violation_refused(bundle: Path, keypair, refused) -> None:  # type: ignore[no-untyped-def]
    def edit(d: dict) -> None:  # type: ignore[type-arg]
        d["images"][0]["run_this"] = "rm -rf /"

    resign(bundle, keypair[0], edit)
    refused(bundle, 3, "run_this")


# --- faults ----------------------------------------------------------------------------------------


def small_disk(tmp_path: Path) -> Path:
    """A 2 MiB tmpfs: needs root, as in CI (where it must run, never skip)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting a small tmpfs needs root")
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    return small


def test_disk_full_on_pack_leaves_no_complete_looking_bundle(cli, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = small_disk(tmp_path)
    try:
        out = small / "bundle"
        # the free-space check sees 2 MiB and refuses before writing
        r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]))
        assert r.code == 6 and "needs" in r.err and str(small) in r.err
        assert not (out / "manifest.json").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_disk_filling_during_pack_leaves_no_complete_looking_bundle(cli, samples, keypair, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    small = small_disk(tmp_path)
    try:
        from airgap._internal import fsutil

        monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1 << 40)  # the space check is fooled; the disk is not
        out = small / "bundle"
        r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]))
        assert r.code == 6 and "disk full" in r.err, r.err
        assert "run the same pack again to resume" in r.err
        assert not (out / "manifest.json").exists()
        assert cli("verify", str(out), "--trust", str(keypair[1])).code == 3  # incomplete, and says so
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_sigkill_of_install_at_random_points_then_rerun(docker_client, bundle: Path, samples, keypair) -> None:  # type: ignore[no-untyped-def]
    import random
    import time

    rng = random.Random(1234)
    cmd = [sys.executable, "-m", "airgap", "-q", "install", str(bundle), "--trust", str(keypair[1])]
    for delay in sorted(rng.uniform(0.05, 1.5) for _ in range(4)):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        tags = [t for i in docker_client.images.list(all=True) for t in i.tags]
        if TAG in tags:  # killed after the upload ended: the engine loaded the verified image
            assert docker_client.images.get(TAG).id == samples["docker"].image_id
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert docker_client.images.get(TAG).id == samples["docker"].image_id


def test_daemon_killed_mid_load_loads_nothing(cli, keypair, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A private engine of its own, SIGKILLed while it receives the upload, then started again."""
    import signal
    import time

    import sample_image

    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("starting a private dockerd needs root")
        pytest.skip("starting a private dockerd needs root")
    sample = sample_image.build(tmp_path / "big.tar", tag="airgap-test/big:1", model_size=400 << 20, app_size=1 << 20, seed="big")
    out = tmp_path / "bundle"
    assert cli("pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(keypair[0])).code == 0
    engine_dir = Path(f"/tmp/airgap-kill-{os.getpid()}")
    script = str(ROOT / "scripts" / "private-dockerd")
    host = subprocess.run([script, "start", str(engine_dir)], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("DOCKER_HOST", host)
    try:
        cmd = [sys.executable, "-m", "airgap", "-q", "install", str(out), "--trust", str(keypair[1])]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list((engine_dir / "root" / "tmp").glob("docker-import-*")):  # the engine is receiving the upload
            assert time.monotonic() < deadline and proc.poll() is None, "the upload never started"
            time.sleep(0.02)
        os.killpg(os.getpgid(int((engine_dir / "dockerd.pid").read_text())), signal.SIGKILL)  # dockerd and its containerd
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 6, err
        assert err.startswith("error: Docker engine") and "Traceback" not in err
        restarted = subprocess.run([script, "start", str(engine_dir)], capture_output=True, text=True, check=False)
        assert restarted.returncode == 0, restarted.stderr
        client = docker.from_env(timeout=60)
        try:
            assert not client.images.list(all=True)
        finally:
            client.close()
        # and the same install, re-run on the restarted engine, completes
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run([script, "stop", str(engine_dir)], check=False)
        subprocess.run(["pkill", "-9", "-f", str(engine_dir)], check=False)
        subprocess.run(["umount", "-R", str(engine_dir / "root")], check=False, capture_output=True)
        shutil.rmtree(engine_dir, ignore_errors=True)
