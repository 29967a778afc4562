"""installer/audit.sh, the auditor's check shipped in every bundle, and the README block that checks it and runs
it: with dash, openssl, sha256sum and zstd (or without zstd), no airgap, no Docker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from airgap._internal.format.reader import load_bundle
from airgap.trust.keys import load_private
from airgap.trust.policy import sign
from tests.helpers.bundles import pack_split
from tests.helpers.cli import Cli
from tests.helpers.keys import KeyPair, make_keypair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Samples
from tests.helpers.tools import dash

pytestmark = pytest.mark.tools

README = ROOT / "README.md"
# every tool audit.sh and the README block use, zstd aside
TOOLS = ("awk", "openssl", "sha256sum", "head", "find", "ls", "sort", "mktemp", "wc", "cat", "sed", "grep", "date", "rm", "mv")
TOOLS += ("uniq", "df", "dirname", "cut", "sh")


def readme_block() -> str:
    """The sh block of the README's "Checking a bundle by hand": exactly what the auditor runs."""
    text = README.read_text()
    section = text[text.index("### Checking a bundle by hand") :]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None, "no sh block under 'Checking a bundle by hand'"
    return found.group(1)


def _require_tools() -> None:
    for tool in (*TOOLS, "zstd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")


def _no_zstd_path(tmp_path: Path) -> str:
    """A PATH holding every tool the auditor uses except zstd."""
    bin_dir = tmp_path / "bin-without-zstd"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def run_block(workdir: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """The README block, verbatim, as a dash script in WORKDIR (holding bundle/ and security-team.pub)."""
    script = workdir / "audit-by-hand.sh"
    script.write_text(readme_block())
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    return subprocess.run([dash(), str(script)], cwd=workdir, capture_output=True, text=True, check=False, env=env, timeout=300)


def run_audit(bundle: Path, *args: str, path: str | None = None, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The bundle's own installer/audit.sh with dash (no BUNDLE argument unless given in ARGS)."""
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    script = script or bundle / "installer" / "audit.sh"
    return subprocess.run([dash(), str(script), *args], capture_output=True, text=True, check=False, env=env, timeout=300)


@pytest.fixture
def workdir(bundle: Path, keypair: KeyPair, tmp_path: Path) -> Path:
    """What an auditor is given: bundle/ and security-team.pub, side by side."""
    _require_tools()
    work = tmp_path / "audit"
    work.mkdir()
    shutil.copytree(bundle, work / "bundle")
    shutil.copy(keypair[1], work / "security-team.pub")
    return work


@pytest.fixture
def split(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    """An auditor's work directory with the sample split over three vol-NN folders."""
    _require_tools()
    work = tmp_path / "audit-split"
    work.mkdir()
    r = pack_split(cli, samples["docker"], keypair, work / "bundle", "1MiB", "3MiB")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (work / "bundle").iterdir()) == ["vol-01", "vol-02", "vol-03"]
    shutil.copy(keypair[1], work / "security-team.pub")
    return work


def _resign(bundle: Path, key: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """The manifest changed and signed again with the trusted key, as a compromised build host could."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_bytes())
    edit(data)
    raw = (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()
    path.write_bytes(raw)
    fp, signature = sign(raw, load_private(key, None))
    (bundle / "signatures" / f"{fp}.sig").write_bytes(signature)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the README block ------------------------------------------------------------------------------------


def test_readme_block_is_a_script_that_checks_audit_sh_before_running_it() -> None:
    block = readme_block()
    assert block.startswith("set -eu\n")
    assert block.index("openssl pkeyutl -verify") < block.index("installer/audit.sh") < block.index('sh "$m/installer/audit.sh"')


def test_readme_block_passes_a_good_bundle(workdir: Path) -> None:
    done = run_block(workdir)
    assert done.returncode == 0, done.stderr
    assert "AUDIT PASSED: bundle agent" in done.stdout
    assert "blobs they carry decompress to their digests" in done.stdout


def test_readme_block_passes_a_split_bundle(split: Path) -> None:
    done = run_block(split)
    assert done.returncode == 0, done.stderr
    assert "AUDIT PASSED" in done.stdout


def test_readme_block_without_zstd_checks_the_rest_and_says_so(workdir: Path, tmp_path: Path) -> None:
    done = run_block(workdir, path=_no_zstd_path(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "zstd is not installed" in done.stderr and "AUDIT PASSED" in done.stdout


def test_readme_block_catches_an_edited_manifest(workdir: Path) -> None:
    m = workdir / "bundle" / "manifest.json"
    m.write_bytes(m.read_bytes().replace(b'"name": "agent"', b'"name": "evil!"'))
    done = run_block(workdir)
    assert done.returncode != 0 and "AUDIT PASSED" not in done.stdout
    assert "Verification Failure" in done.stdout + done.stderr


def test_readme_block_never_runs_a_changed_audit_sh(workdir: Path) -> None:
    script = workdir / "bundle" / "installer" / "audit.sh"
    script.write_text(script.read_text().replace("set -u\n", "set -u\necho AUDIT PASSED; exit 0\n", 1))
    done = run_block(workdir)
    assert done.returncode == 4, done.stderr
    assert "audit.sh does not match the signed manifest" in done.stderr and "AUDIT PASSED" not in done.stdout


def test_readme_block_catches_a_damaged_part(workdir: Path) -> None:
    part = load_bundle(workdir / "bundle").manifest.parts[-1].path
    _flip(workdir / "bundle" / part)
    done = run_block(workdir)
    assert done.returncode == 4 and part in done.stderr, done.stderr
    assert "AUDIT FAILED" in done.stderr


# -- audit.sh itself ---------------------------------------------------------------------------------------


def test_audit_sh_is_signed_with_the_bundle_and_verify_catches_a_change(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    listed = {f.path for f in load_bundle(bundle).manifest.files}
    assert "installer/audit.sh" in listed and (bundle / "installer" / "audit.sh").stat().st_mode & 0o111
    script = bundle / "installer" / "audit.sh"
    script.write_text(script.read_text() + "\ntrue\n")
    r = cli("verify", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 4 and "installer/audit.sh" in r.err, r.err


def test_audit_sh_finds_its_bundle_from_anywhere(workdir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [dash(), str(workdir / "bundle" / "installer" / "audit.sh"), "--trust", str(workdir / "security-team.pub")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_untrusted_key_fails_with_trust_exit_code(workdir: Path, other_keypair: KeyPair) -> None:
    done = run_audit(workdir / "bundle", "--trust", str(other_keypair[1]))
    assert done.returncode == 5 and "no valid signature" in done.stderr, done.stderr


def test_threshold_counts_distinct_trusted_keys(workdir: Path, other_keypair: KeyPair) -> None:
    pub = str(workdir / "security-team.pub")
    done = run_audit(workdir / "bundle", "--trust", pub, "--trust", pub, "--threshold", "2")
    assert done.returncode == 5 and "2 required" in done.stderr, done.stderr


def test_expired_bundle_refused_unless_allowed(workdir: Path, keypair: KeyPair) -> None:
    b = workdir / "bundle"
    _resign(b, keypair[0], lambda m: m.update(expires="2020-01-01T00:00:00Z"))
    pub = str(workdir / "security-team.pub")
    assert run_audit(b, "--trust", pub).returncode == 5
    done = run_audit(b, "--trust", pub, "--allow-expired")
    assert done.returncode == 0 and "expired at 2020-01-01" in done.stderr, done.stderr


def test_unlisted_file_fails_unless_allowed(workdir: Path) -> None:
    b, pub = workdir / "bundle", str(workdir / "security-team.pub")
    (b / "parts" / "extra.zst").write_bytes(b"rides along")
    done = run_audit(b, "--trust", pub)
    assert done.returncode == 4 and "parts/extra.zst" in done.stderr and "not part of the signed bundle" in done.stderr
    done = run_audit(b, "--trust", pub, "--allow-unexpected")
    assert done.returncode == 0 and "warning: unexpected file parts/extra.zst" in done.stderr, done.stderr


def test_symlinked_part_fails_without_being_followed(workdir: Path, tmp_path: Path) -> None:
    b = workdir / "bundle"
    part = b / load_bundle(b).manifest.parts[0].path
    outside = tmp_path / "outside.zst"
    shutil.move(part, outside)
    part.symlink_to(outside)
    done = run_audit(b, "--trust", str(workdir / "security-team.pub"), "--allow-unexpected")
    assert done.returncode == 4 and "symbolic link" in done.stderr, done.stderr


def test_fifo_in_the_bundle_fails_without_hanging(workdir: Path) -> None:
    b = workdir / "bundle"
    os.mkfifo(b / "installer" / "listen")
    done = run_audit(b, "--trust", str(workdir / "security-team.pub"))
    assert done.returncode == 4 and "installer/listen is not a regular file" in done.stderr, done.stderr


def test_truncated_file_fails_before_it_is_read(workdir: Path) -> None:
    b = workdir / "bundle"
    plan = b / "installer" / "docker-linux-amd64.plan"
    plan.write_bytes(plan.read_bytes()[:-1])
    done = run_audit(b, "--trust", str(workdir / "security-team.pub"))
    assert done.returncode == 4 and "docker-linux-amd64.plan is" in done.stderr and "the manifest says" in done.stderr


def test_parts_that_decompress_to_another_blob_caught_with_zstd_only(workdir: Path, keypair: KeyPair, tmp_path: Path) -> None:
    """A signed manifest whose part hashes match parts that are not the blob they claim (a build host that
    signed garbage): sha256 of each part cannot see it, decompressing and hashing the blob does."""
    b = workdir / "bundle"
    victim = load_bundle(b).manifest.parts[0]
    other = zstandard.ZstdCompressor(write_checksum=True).compress(b"not the blob" * 100)
    (b / victim.path).write_bytes(other)
    sha = hashlib.sha256(other).hexdigest()

    def edit(m: dict) -> None:  # type: ignore[type-arg]
        for p in m["parts"]:
            if p["path"] == victim.path:
                p.update(sha256=sha, size=len(other))

    _resign(b, keypair[0], edit)
    pub = str(workdir / "security-team.pub")
    done = run_audit(b, "--trust", pub)
    assert done.returncode == 4 and f"blob {victim.blob}" in done.stderr and "do not decompress to it" in done.stderr
    done = run_audit(b, "--trust", pub, path=_no_zstd_path(tmp_path))
    assert done.returncode == 0 and "zstd is not installed" in done.stderr, done.stderr


# -- split bundles ------------------------------------------------------------------------------------------


def test_split_bundle_from_its_folder_from_vol_01_and_with_from(split: Path, tmp_path: Path) -> None:
    top, pub = split / "bundle", str(split / "security-team.pub")
    script = top / "vol-01" / "installer" / "audit.sh"
    assert run_audit(top, "--trust", pub, str(top), script=script).returncode == 0
    assert run_audit(top, "--trust", pub, str(top / "vol-01"), script=script).returncode == 0  # siblings found
    # discs mounted elsewhere, one --from each
    mounts = tmp_path / "media"
    shutil.copytree(top, mounts)
    for n in ("02", "03"):
        (mounts / f"vol-{n}").rename(tmp_path / f"disc-{n}")
    done = run_audit(mounts / "vol-01", "--trust", pub, "--from", str(tmp_path / "disc-02"), "--from", str(tmp_path / "disc-03"))
    assert done.returncode == 0, done.stderr


def test_split_bundle_missing_volume_named(split: Path) -> None:
    top = split / "bundle"
    shutil.rmtree(top / "vol-02")
    done = run_audit(top, "--trust", str(split / "security-team.pub"), str(top), script=top / "vol-01" / "installer" / "audit.sh")
    assert done.returncode == 4 and "(on vol-02)" in done.stderr and "--from" in done.stderr, done.stderr


def test_split_bundle_damaged_part_on_a_later_volume(split: Path) -> None:
    top = split / "bundle"
    victim = next((top / "vol-03" / "parts").iterdir())
    _flip(victim)
    done = run_block(split)
    assert done.returncode == 4 and victim.name in done.stderr, done.stderr


def test_split_folder_holding_a_second_manifest_refused(split: Path) -> None:
    top = split / "bundle"
    shutil.copy(top / "vol-01" / "manifest.json", top / "vol-02" / "manifest.json")
    done = run_audit(top, "--trust", str(split / "security-team.pub"), str(top), script=top / "vol-01" / "installer" / "audit.sh")
    assert done.returncode == 4 and "two bundles in one place" in done.stderr, done.stderr


def test_split_folder_with_a_stray_file_refused(split: Path) -> None:
    top = split / "bundle"
    (top / "notes.txt").write_text("unsigned")
    done = run_block(split)
    assert done.returncode == 4 and "notes.txt is not part of the signed bundle" in done.stderr, done.stderr


def test_unlisted_file_on_another_volume_refused(split: Path) -> None:
    top = split / "bundle"
    (top / "vol-03" / "parts" / "planted.zst").write_bytes(b"x")
    done = run_block(split)
    assert done.returncode == 4 and "vol-03/parts/planted.zst" in done.stderr, done.stderr


def test_a_second_signer_may_be_required(workdir: Path, tmp_path: Path, cli: Cli) -> None:
    second = make_keypair(tmp_path, "second")
    b = workdir / "bundle"
    assert cli("sign", str(b), "--key", str(second[0]), "--trust", str(workdir / "security-team.pub")).code == 0
    done = run_audit(b, "--trust", str(workdir / "security-team.pub"), "--trust", str(second[1]), "--threshold", "2")
    assert done.returncode == 0 and "2 of 2 required" in done.stdout, done.stderr


def test_audit_sh_refuses_a_tmpdir_another_user_could_swap_files_in(
    bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TMPDIR", str(shared))
    done = run_audit(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 6 and "swap the files checked there" in done.stderr, done.stderr
    assert "AUDIT FAILED" in done.stdout + done.stderr and not any(shared.iterdir())
    shared.chmod(0o1777)
    done = run_audit(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 0, done.stderr
