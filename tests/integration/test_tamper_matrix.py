"""The tamper and fault matrix.  One table of attacks, each run against every path that reads a bundle: the
Python installer, the POSIX installer (install.sh under dash) and verify.  Each row asserts the exact exit code,
a message naming the file or part at fault, and that the engine gained no image and no tag moved."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import zstandard

from airgap._internal.format.reader import load_bundle
from airgap.trust.keys import load_private, load_public
from airgap.trust.policy import sign
from tests.helpers.engine import IN_CI, evict_images_sharing_layers
from tests.helpers.paths import ROOT
from tests.helpers.tools import run_sh

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


RUNNERS = ("install", "install.sh", "verify")


@pytest.fixture
def refused(cli, docker_client, keypair, samples):  # type: ignore[no-untyped-def]
    """Run ``runner`` on the bundle: it must fail with ``code``, name ``culprit``, print no traceback and no
    forged line, finish in bounded time (a FIFO never hangs it), and leave the engine as it was."""

    def check(bundle: Path, code: int, culprit: str, *extra: str, runner: str = "install") -> str:
        evict_images_sharing_layers(docker_client, samples["docker"].layers)  # the sample every bundle here is packed from
        before = engine_state(docker_client)
        started = time.monotonic()
        if runner == "install.sh":
            done = run_sh(bundle, "--trust", str(keypair[1]), *extra)
            got, err = done.returncode, done.stderr
        else:
            r = cli(runner, str(bundle), "--trust", str(keypair[1]), *extra)
            got, err = r.code, r.err
        assert time.monotonic() - started < 120, f"{runner} took too long"
        assert got == code, f"{runner}: exit {got}, expected {code}\n{err}"
        assert culprit in err, f"{runner}: {culprit!r} not named\n{err}"
        assert "Traceback" not in err and "error: " in err, err
        assert not any(line.startswith(("OK", "loaded")) for line in err.splitlines()), err
        assert engine_state(docker_client) == before
        return err

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


@dataclass(frozen=True)
class Ctx:
    bundle: Path
    key: Path  # the trusted signer's private key
    other_key: Path  # a second key (trusted only where a row says so)
    other_pub: Path
    tmp: Path


@dataclass(frozen=True)
class Attack:
    """One way to tamper with a bundle: ``tamper`` does it and returns the culprit every runner must name."""

    name: str
    tamper: Callable[[Ctx], str]
    code: int
    extra: tuple[str, ...] = ()  # more arguments for every runner (e.g. a second --trust)
    runners: tuple[str, ...] = ("install", "install.sh", "verify")  # which paths this attack concerns


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _truncated_part(c: Ctx) -> str:
    victim = part_paths(c.bundle)[len(part_paths(c.bundle)) // 2]
    data = (c.bundle / victim).read_bytes()
    (c.bundle / victim).write_bytes(data[: len(data) // 2])
    return victim


def _unlisted(rel: str) -> Callable[[Ctx], str]:
    def tamper(c: Ctx) -> str:
        (c.bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (c.bundle / rel).write_text("#!/bin/sh\necho surprise\n")
        return rel

    return tamper


def _swapped_parts(c: Ctx) -> str:
    m = load_bundle(c.bundle).manifest
    a, b = [p.path for p in m.parts_of(m.images[0].layers[2].digest)][:2]
    tmp = c.tmp / "swap"
    (c.bundle / a).rename(tmp)
    (c.bundle / b).rename(c.bundle / a)
    tmp.rename(c.bundle / b)
    return a


def _symlinked_part(c: Ctx) -> str:
    victim = part_paths(c.bundle)[0]
    shutil.move(c.bundle / victim, c.tmp / "outside.zst")
    (c.bundle / victim).symlink_to(c.tmp / "outside.zst")
    return victim


def _symlinked_parts_dir(c: Ctx) -> str:
    shutil.move(c.bundle / "parts", c.tmp / "elsewhere")
    (c.bundle / "parts").symlink_to(c.tmp / "elsewhere")
    return "parts"


def _fifo_part(c: Ctx) -> str:
    victim = part_paths(c.bundle)[0]
    _fifo(c.bundle / victim)
    return victim


def _fifo_manifest(c: Ctx) -> str:
    _fifo(c.bundle / "manifest.json")
    return "manifest.json"


def _fifo_trusted_signature(c: Ctx) -> str:
    (sig,) = (c.bundle / "signatures").iterdir()
    _fifo(sig)
    return sig.name


def _fifo_unknown_signature(c: Ctx) -> str:
    os.mkfifo(c.bundle / "signatures" / f"{'ab' * 32}.sig")
    return "ab" * 32


def _deep_tree(c: Ctx) -> str:
    fd = os.open(c.bundle / "installer", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    return "installer/d/d/d"


def _newline_name(c: Ctx) -> str:
    (c.bundle / "parts" / "x\nOK: signature by everyone; 999 parts verified").write_text("x")
    return "parts/x\\n"


def _planted_plan(c: Ctx) -> str:
    """An unsigned load plan under the name install.sh would look for on this engine, beside a signed one for
    another platform: it must never be used."""
    for name in ("docker-linux-amd64.plan", "docker-linux-arm64.plan"):
        if not (c.bundle / "installer" / name).exists():
            (c.bundle / "installer" / name).write_text("image sha256:" + "0" * 64 + " evil:1\n")
            return f"installer/{name}"
    plan = c.bundle / "installer" / "docker-linux-amd64.plan"
    plan.write_text(plan.read_text() + "part /etc/passwd\n")
    return "installer/docker-linux-amd64.plan"


def _edited(old: str, new: str | None) -> Callable[[Ctx], str]:
    def tamper(c: Ctx) -> str:
        path = c.bundle / "manifest.json"
        text = path.read_text()
        if new is None:
            layer = load_bundle(c.bundle).manifest.images[0].layers[0].digest
            text = text.replace(layer, "sha256:" + "0" * 64)
        else:
            text = text.replace(old, new, 1)
        assert text != path.read_text()
        path.write_text(text)
        return "manifest.json"

    return tamper


def _signature_removed(c: Ctx) -> str:
    for sig in (c.bundle / "signatures").iterdir():
        sig.unlink()
    return "signature"


def _stranger_under_trusted_name(c: Ctx) -> str:
    (sig,) = (c.bundle / "signatures").iterdir()
    _, forged = sign((c.bundle / "manifest.json").read_bytes(), load_private(c.other_key, None))
    sig.write_bytes(forged)
    return sig.name


def _second_trusted_signature_bad(c: Ctx) -> str:
    fp = load_public(c.other_pub).fingerprint
    (c.bundle / "signatures" / f"{fp}.sig").write_bytes(b"\0" * 64)
    return f"{fp}.sig"


def _zstd_bomb(c: Ctx) -> str:
    manifest = load_bundle(c.bundle).manifest
    victim = manifest.parts_of(manifest.images[0].layers[3].digest)[0]
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))
    (c.bundle / victim.path).write_bytes(bomb)

    def edit(d: dict) -> None:  # type: ignore[type-arg]
        for p in d["parts"]:
            if p["path"] == victim.path:
                p["size"], p["sha256"] = len(bomb), hashlib.sha256(bomb).hexdigest()

    resign(c.bundle, c.key, edit)
    return victim.path


def _escaping_name(evil: str) -> Callable[[Ctx], str]:
    def tamper(c: Ctx) -> str:
        def edit(d: dict) -> None:  # type: ignore[type-arg]
            d["parts"][0]["path"] = evil

        resign(c.bundle, c.key, edit)
        return "manifest.json"

    return tamper


def _truncated_manifest(c: Ctx) -> str:
    path = c.bundle / "manifest.json"
    path.write_bytes(path.read_bytes()[:-40])
    return "manifest.json"


def _oversized_manifest(c: Ctx) -> str:
    path = c.bundle / "manifest.json"
    with open(path, "ab") as fh:
        fh.truncate(17 << 20)
    return "manifest.json"


def _malformed_json_signed(c: Ctx) -> str:
    garbage = b'{"schema_version": 1, "images": [\n'
    (c.bundle / "manifest.json").write_bytes(garbage)
    fp, sig = sign(garbage, load_private(c.key, None))
    (c.bundle / "signatures" / f"{fp}.sig").write_bytes(sig)
    return "manifest.json"


def _schema_violation(c: Ctx) -> str:
    def edit(d: dict) -> None:  # type: ignore[type-arg]
        d["images"][0]["run_this"] = "rm -rf /"

    resign(c.bundle, c.key, edit)
    return "manifest.json"


def _second_copy_on_a_from_directory(c: Ctx) -> str:
    """A listed part's name in another directory given with --from, holding other bytes: never read, and
    reported, since it is not where the part is read from."""
    victim = part_paths(c.bundle)[0]
    (c.tmp / "mnt" / "parts").mkdir(parents=True)
    (c.tmp / "mnt" / victim).write_bytes(os.urandom(4096))
    return victim


def _stuffed_signature(c: Ctx) -> str:
    name = "ab" * 32 + ".sig"
    (c.bundle / "signatures" / name).write_bytes(os.urandom(5 << 20))
    return name


def _many_signatures(c: Ctx) -> str:
    for i in range(300):
        (c.bundle / "signatures" / f"{i:064x}.sig").write_bytes(b"\0" * 64)
    return "signatures/"


def _resigned(field: str, value: object) -> Callable[[Ctx], str]:
    def tamper(c: Ctx) -> str:
        def edit(d: dict) -> None:  # type: ignore[type-arg]
            d[field] = value

        resign(c.bundle, c.key, edit)
        return "manifest.json"

    return tamper


def _huge_number(c: Ctx) -> str:
    path = c.bundle / "manifest.json"
    raw = path.read_bytes().replace(b'"sequence": ', b'"sequence": ' + b"9" * 5000, 1)
    path.write_bytes(raw)
    fp, sig = sign(raw, load_private(c.key, None))
    (c.bundle / "signatures" / f"{fp}.sig").write_bytes(sig)
    return "manifest.json"


def _tampered_side_file(c: Ctx) -> str:
    plan = next(p for p in sorted((c.bundle / "installer").iterdir()) if p.name.endswith(".blocks"))
    data = bytearray(plan.read_bytes())
    data[0] ^= 0xFF
    plan.write_bytes(bytes(data))
    return f"installer/{plan.name}"


ATTACKS = [
    Attack("truncated_part", _truncated_part, 4),
    Attack("unlisted_file", _unlisted("parts/payload.sh"), 4),
    Attack("unlisted_file_in_signature_subfolder", _unlisted("signatures/x/" + "cd" * 32 + ".sig"), 4),
    Attack("staging_leftover", _unlisted(".airgap-staging/journal.jsonl"), 4),
    Attack("swapped_parts", _swapped_parts, 4),
    Attack("symlinked_part", _symlinked_part, 4),
    Attack("symlinked_parts_directory", _symlinked_parts_dir, 4),
    Attack("fifo_as_part", _fifo_part, 4),
    Attack("fifo_as_manifest", _fifo_manifest, 4),
    Attack("fifo_as_trusted_signature", _fifo_trusted_signature, 4),
    Attack("fifo_as_unknown_signature", _fifo_unknown_signature, 4),
    Attack("directory_tree_1500_deep", _deep_tree, 4),
    Attack("newline_in_file_name_forges_no_line", _newline_name, 4),
    Attack("planted_unsigned_load_plan", _planted_plan, 4),
    Attack("edited_tag", _edited("airgap-test/agent:1.0", "airgap-test/agent:evil"), 5),
    Attack("edited_sequence", _edited('"sequence": ', '"sequence": 9'), 5),
    Attack("edited_digest", _edited("digest", None), 5),
    Attack("signature_removed", _signature_removed, 5),
    Attack("stranger_signature_under_trusted_name", _stranger_under_trusted_name, 5),
    Attack("second_trusted_signature_does_not_verify", _second_trusted_signature_bad, 5, ("--trust", "{other_pub}")),
    # signed by the trusted key, with parts that match: only a path that decompresses sees it (verify hashes
    # parts; install.sh trusts the signer's parts and relies on the engine's tar reader)
    Attack("zstd_bomb_past_declared_size", _zstd_bomb, 4, runners=("install",)),
    Attack("name_escaping_bundle_relative", _escaping_name("../../../etc/passwd"), 3),
    Attack("name_escaping_bundle_absolute", _escaping_name("/etc/passwd"), 3),
    Attack("name_escaping_bundle_dotdot_inside", _escaping_name("parts/../../outside.zst"), 3),
    Attack("truncated_manifest", _truncated_manifest, 5),
    Attack("oversized_manifest", _oversized_manifest, 3),
    Attack("malformed_json_signed_by_trusted_key", _malformed_json_signed, 3),
    # install.sh reads only the fields it needs from a trusted manifest, in airgap's canonical layout
    Attack("schema_violation_signed_by_trusted_key", _schema_violation, 3, runners=("install", "verify")),
    Attack("second_copy_of_a_part_on_a_from_directory", _second_copy_on_a_from_directory, 4, ("--from", "{tmp}/mnt")),
    Attack("stuffed_unknown_signature_file", _stuffed_signature, 4),
    Attack("three_hundred_signature_files", _many_signatures, 4),
    Attack("impossible_expiry_date_signed", _resigned("expires", "2030-02-30T00:00:00Z"), 3, runners=("install", "verify")),
    Attack("part_size_beyond_64_bits_signed", _resigned("part_size", 10**400), 3, runners=("install", "verify")),
    Attack("sequence_of_5000_digits_signed", _huge_number, 3, runners=("install", "verify")),
    Attack("signed_side_file_changed", _tampered_side_file, 4),
]


@pytest.mark.parametrize(
    ("attack", "runner"),
    [(a, r) for a in ATTACKS for r in RUNNERS if r in a.runners],
    ids=[f"{a.name}-{r}" for a in ATTACKS for r in RUNNERS if r in a.runners],
)
def test_attack_refused(attack: Attack, runner: str, bundle: Path, refused, keypair, other_keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = Ctx(bundle, keypair[0], other_keypair[0], other_keypair[1], tmp_path)
    culprit = attack.tamper(ctx)
    extra = tuple(a.replace("{other_pub}", str(other_keypair[1])).replace("{tmp}", str(tmp_path)) for a in attack.extra)
    try:
        refused(bundle, attack.code, culprit, *extra, runner=runner)
    finally:
        # coreutils rm walks deep trees iteratively; pytest's own cleanup (shutil.rmtree) would recurse past the
        # interpreter's limit on the 1500-deep one
        subprocess.run(["rm", "-rf", str(bundle / "installer" / "d")], check=False)


def test_stranger_signature_under_its_own_name_refused(bundle: Path, refused, other_keypair) -> None:  # type: ignore[no-untyped-def]
    fp, forged = sign((bundle / "manifest.json").read_bytes(), load_private(other_keypair[0], None))
    for sig in (bundle / "signatures").iterdir():
        sig.unlink()
    (bundle / "signatures" / f"{fp}.sig").write_bytes(forged)
    refused(bundle, 5, "no signature from a trusted key")


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
    for runner in RUNNERS:
        refused(bundle, 4, victim.path, runner=runner)


def test_below_threshold_refused(bundle: Path, refused, other_keypair) -> None:  # type: ignore[no-untyped-def]
    for runner in RUNNERS:
        refused(bundle, 5, "1", "--trust", str(other_keypair[1]), "--threshold", "2", runner=runner)


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
    refused(old, 5, "older", runner="install.sh")  # the POSIX installer keeps the same rollback state
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
    for runner in RUNNERS:
        refused(out, 5, "expired at 2017-07-21T02:40:00Z", runner=runner)


def test_part_rewritten_in_place_after_verify_keeps_nothing(bundle: Path, cli, keypair, refused) -> None:  # type: ignore[no-untyped-def]
    """A medium that returns other bytes on a second read: verify hashed (and cached) the part, then its bytes
    change with size and mtime kept.  The install still checks every blob over the bytes it streams."""
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    m = load_bundle(bundle).manifest
    victim = m.parts_of(m.images[0].layers[3].digest)[0]
    path = bundle / victim.path
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    refused(bundle, 4, victim.blob.removeprefix("sha256:")[:12])


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
        from airgap._internal.util import fsutil

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

    from tests.helpers.samples import sample_image

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
