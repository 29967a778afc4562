"""installer/install.sh, which pack puts in every bundle: run with dash (Debian's /bin/sh) against the
real Docker engine, with docker, openssl, sha256sum and zstd only -- no Python, no airgap."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from airgap.trust import keys
from airgap.trust import policy as trust
from tests.helpers.bundles import pack_split, two_platform_pack
from tests.helpers.discs import Drive
from tests.helpers.engine import remove
from tests.helpers.samples import sample_image
from tests.helpers.tools import dash, run_sh

pytestmark = [pytest.mark.docker, pytest.mark.tools]


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
        [dash(), str(bundle / "installer" / "install.sh"), "--trust", str(keypair[1])],
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


# --- attacks on the POSIX installer (one test per hole an attacker review found) ----------------------

MIB = 1 << 20


def _manifest(bundle: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((bundle / "manifest.json").read_text())


def _config_part(bundle: Path) -> dict:  # type: ignore[type-arg]
    m = _manifest(bundle)
    config = m["images"][0]["config"]["digest"]
    return next(p for p in m["parts"] if p["blob"] == config)


def _listed(bundle: Path, path: str) -> dict:  # type: ignore[type-arg]
    m = _manifest(bundle)
    return next(f for f in m["parts"] + m.get("files", []) if f["path"] == path)


def _sign(bundle: Path, key: Path) -> Path:
    """Add (or replace) the signature of ``key`` over the bundle's manifest.json."""
    fp, sig = trust.sign((bundle / "manifest.json").read_bytes(), keys.load_private(key, None))
    path = bundle / "signatures" / f"{fp}.sig"
    path.write_bytes(sig)
    return path


def _image_ids(client: docker.DockerClient) -> set[str]:
    return {i.id for i in client.images.list(all=True)}


def _tag_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _path_with(tmp_path: Path, tool: str, script: str) -> dict[str, str]:
    """The environment with a directory holding a wrapper for ``tool`` first in PATH."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    wrapper = shims / tool
    wrapper.write_text("#!/bin/sh\n" + script)
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}


def _real(tool: str) -> str:
    found = shutil.which(tool)
    assert found, tool
    return found


def logging_shim(tmp_path: Path, tool: str) -> tuple[dict[str, str], Path]:
    """PATH whose ``tool`` logs its arguments, one run a line, then runs the real one."""
    log = tmp_path / f"{tool}.log"
    log.touch()
    return _path_with(tmp_path, tool, f'printf \'%s\\n\' "$*" >>{shlex.quote(str(log))}\nexec {_real(tool)} "$@"\n'), log


def swap_shim(
    tmp_path: Path, tool: str, swaps: list[tuple[Path, Path]], after_naming: tuple[str, ...] = ()
) -> tuple[dict[str, str], Path]:
    """PATH whose ``tool`` replaces bundle files with attacker bytes, once: a local process, or a medium
    that returns other bytes on a second read.  With ``after_naming``: right after the real tool ran and
    printed one of those strings (the file's path or sha256, so it was just checked); without: just
    before the tool's first run.  Returns the environment and a marker file that exists once swapped."""
    done = tmp_path / "swapped"
    copies = "".join(
        f"  mkdir -p {shlex.quote(str(dst.parent))} && cp -f {shlex.quote(str(src))} {shlex.quote(str(dst))}\n"
        for src, dst in swaps
    )
    swap = f"swap() {{\n  [ -e {done} ] && return 0\n{copies}  : >{done}\n}}\n"
    real = _real(tool)
    if not after_naming:
        return _path_with(tmp_path, tool, f'{swap}swap\nexec {real} "$@"\n'), done
    patterns = " ".join(f"-e {shlex.quote(s)}" for s in after_naming)
    script = (
        f'{swap}out=$(mktemp)\n{real} "$@" >"$out"\nrc=$?\ncat "$out"\n'
        f'if grep -qF {patterns} "$out"; then swap; fi\nrm -f "$out"\nexit $rc\n'
    )
    return _path_with(tmp_path, tool, script), done


def _attack(
    kind: str, bundle: Path, cli, other_keypair, tmp_path: Path
) -> tuple[list[tuple[Path, Path]], tuple[str, ...], set[str], set[str]]:  # type: ignore[no-untyped-def]
    """Attacker bytes for one file kind: (swaps, strings naming the checked file, attacker image IDs,
    attacker tags).  Every swap keeps the file's name, so nothing new appears before the swap."""
    evil = tmp_path / "evil"
    evil.mkdir()
    if kind == "part":  # the image config, one command changed: another image ID under the signed tag
        part = _config_part(bundle)
        config = subprocess.run([_real("zstd"), "-dc", str(bundle / part["path"])], capture_output=True, check=True).stdout
        assert b"/usr/bin/start" in config
        config = config.replace(b"/usr/bin/start", b"/usr/bin/evil!")
        (evil / "config.zst").write_bytes(
            subprocess.run([_real("zstd"), "-qc"], input=config, capture_output=True, check=True).stdout
        )
        swaps = [(evil / "config.zst", bundle / part["path"])]
        return swaps, (part["sha256"], part["path"]), {"sha256:" + hashlib.sha256(config).hexdigest()}, set()
    blocks = "installer/docker-linux-amd64.blocks"
    if kind == "blocks":  # the archive's manifest.json names another tag: a tag moved without --replace
        data = (bundle / blocks).read_bytes()
        assert b'"RepoTags":["airgap-test/agent:1.0"]' in data
        (evil / "x.blocks").write_bytes(data.replace(b"airgap-test/agent:1.0", b"airgap-test/evilx:1.0"))
        return (
            [(evil / "x.blocks", bundle / blocks)],
            (_listed(bundle, blocks)["sha256"], blocks),
            set(),
            {"airgap-test/evilx:1.0"},
        )
    # kind == "plan": the attacker's own plan, blocks and parts (another image under the signed tag)
    sample = sample_image.build(evil / "e.tar", tag="airgap-test/agent:1.0", model_size=1 << 18, app_size=1 << 16, seed="sh-evil")
    r = cli("pack", f"docker-archive:{sample.path}", "-o", str(evil / "b"), "--key", str(other_keypair[0]), "--part-size", "1MiB")
    assert r.code == 0, r.err
    swaps = [(evil / "b" / p, bundle / p) for p in ("installer/docker-linux-amd64.plan", blocks)]
    swaps += [(p, bundle / "parts" / p.name) for p in sorted((evil / "b" / "parts").iterdir())]
    return swaps, (_listed(bundle, blocks)["sha256"], blocks), {sample.image_id}, set()


@pytest.mark.parametrize(
    ("tool", "kind", "code"),
    [
        ("sha256sum", "part", 0),  # swapped right after its check: the load reads the checked copy
        ("sha256sum", "blocks", 0),
        ("sha256sum", "plan", 0),
        ("zstd", "part", 4),  # swapped before its copy was made: the copy fails its check, nothing loads
        ("dd", "blocks", 0),
    ],
)
def test_install_sh_swap_between_check_and_load_never_loads_the_attackers_bytes(
    bundle: Path, keypair, other_keypair, cli, samples, clean_engine, tmp_path: Path, tool: str, kind: str, code: int
) -> None:
    swaps, naming, evil_ids, evil_tags = _attack(kind, bundle, cli, other_keypair, tmp_path)
    env, swapped = swap_shim(tmp_path, tool, swaps, naming if tool == "sha256sum" else ())
    try:
        done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
        assert swapped.exists(), "the attacker's swap never ran: the test proves nothing"
        assert not evil_ids & _image_ids(clean_engine), done.stderr
        assert all(_tag_id(clean_engine, tag) is None for tag in evil_tags), done.stderr
        assert _tag_id(clean_engine, samples["docker"].tag) == (samples["docker"].image_id if code == 0 else None)
        assert done.returncode == code, done.stderr
        if code:
            assert "cut off" in done.stderr and _config_part(bundle)["path"] in done.stderr
    finally:
        remove(clean_engine, *evil_tags, *evil_ids)


def test_install_sh_ignores_a_planted_plan_for_another_platform(
    cli, keypair, other_keypair, tmp_path: Path, docker_client
) -> None:  # type: ignore[no-untyped-def]
    tag = "airgap-test/sh-plant:1.0"
    arm = sample_image.build(tmp_path / "arm.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed="plant", arch="arm64")
    evil = sample_image.build(tmp_path / "evil.tar", tag=tag, model_size=1 << 18, app_size=1 << 16, seed="plant-evil")
    out, evil_out = tmp_path / "arm-bundle", tmp_path / "evil-bundle"
    assert cli("pack", f"docker-archive:{arm.path}", "-o", str(out), "--key", str(keypair[0])).code == 0
    assert cli("pack", f"docker-archive:{evil.path}", "-o", str(evil_out), "--key", str(other_keypair[0])).code == 0
    for name in ("docker-linux-amd64.plan", "docker-linux-amd64.blocks"):  # the engine's platform, unsigned
        shutil.copy(evil_out / "installer" / name, out / "installer" / name)
    for part in (evil_out / "parts").iterdir():
        shutil.copy(part, out / "parts" / part.name)
    remove(docker_client, tag, arm.image_id, evil.image_id)
    try:
        done = run_sh(out, "--trust", str(keypair[1]))
        assert done.returncode == 4, done.stderr
        assert "installer/docker-linux-amd64.blocks in the bundle is not part of the signed bundle" in done.stderr
        done = run_sh(out, "--trust", str(keypair[1]), "--allow-unexpected")  # even so: only signed plans
        assert done.returncode == 0, done.stderr
        assert "the bundle is for linux/arm64, the engine is linux/amd64; loading it anyway" in done.stderr
        assert docker_client.images.get(tag).id == arm.image_id
        assert evil.image_id not in _image_ids(docker_client)
        done = run_sh(out, "--trust", str(keypair[1]), "--allow-unexpected", "--platform", "linux/amd64")
        assert done.returncode == 2 and "no image for linux/amd64" in done.stderr, done.stderr
    finally:
        remove(docker_client, tag, arm.image_id, evil.image_id)


@pytest.mark.parametrize("what", ["part", "manifest.json", "parts", "signatures", "installer"])
def test_install_sh_refuses_symlinks(bundle: Path, keypair, samples, clean_engine, tmp_path: Path, what: str) -> None:
    # the link points at the genuine bytes: links are refused as such, whatever they point at
    name = _config_part(bundle)["path"] if what == "part" else what
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(bundle / name), elsewhere / "target")
    (bundle / name).symlink_to(elsewhere / "target")
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4, done.stderr
    assert f"{name} is a symbolic link" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


@pytest.mark.parametrize("what", ["manifest.json", "signature", "part"])
def test_install_sh_refuses_a_fifo_without_blocking(bundle: Path, keypair, samples, clean_engine, what: str) -> None:
    names = {
        "manifest.json": "manifest.json",
        "signature": f"signatures/{keys.load_public(keypair[1]).fingerprint}.sig",
        "part": _config_part(bundle)["path"],
    }
    path = bundle / names[what]
    path.unlink()
    os.mkfifo(path)  # no writer: opening it for reading would block forever
    done = run_sh(bundle, "--trust", str(keypair[1]), timeout=60)
    assert done.returncode == 4, done.stderr
    assert f"{names[what]} is not a regular file" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


def test_install_sh_checks_only_the_trusted_keys_signatures_among_20000(
    bundle: Path, keypair, samples, clean_engine, tmp_path: Path
) -> None:
    for i in range(255):  # named like signatures of unknown keys, so allowed in the bundle, and ignored
        (bundle / "signatures" / f"{hashlib.sha256(str(i).encode()).hexdigest()}.sig").write_bytes(os.urandom(64))
    env, log = logging_shim(tmp_path, "openssl")
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    verifies = [line for line in log.read_text().splitlines() if line.startswith("pkeyutl")]
    assert len(verifies) == 1, verifies  # one trusted key: one signature file opened and checked
    # 20,000 of them: refused as a stuffed bundle (as airgap install does), still with one check at most
    for i in range(255, 20000):
        (bundle / "signatures" / f"{hashlib.sha256(str(i).encode()).hexdigest()}.sig").write_bytes(b"\0" * 64)
    log.write_text("")
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env, timeout=120)
    assert done.returncode == 4 and "at most 256 signatures" in done.stderr, done.stderr
    assert len([line for line in log.read_text().splitlines() if line.startswith("pkeyutl")]) <= 1


@pytest.fixture
def two_signed(bundle: Path, other_keypair) -> Path:  # type: ignore[no-untyped-def]
    """The bundle, signed by ``keypair`` at pack time and by ``other_keypair`` since."""
    _sign(bundle, other_keypair[0])
    return bundle


def test_install_sh_threshold_counts_distinct_trusted_keys(
    two_signed: Path, keypair, other_keypair, samples, clean_engine, tmp_path: Path
) -> None:
    one, two = str(keypair[1]), str(other_keypair[1])
    copy = tmp_path / "same-key-again.pub"
    shutil.copy(keypair[1], copy)
    done = run_sh(two_signed, "--trust", one, "--trust", str(copy), "--threshold", "2")
    assert done.returncode == 5 and "only 1 valid signature(s) from distinct trusted keys, 2 required" in done.stderr, done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)
    done = run_sh(two_signed, "--trust", one, "--threshold", "0")
    assert done.returncode == 2 and "--threshold" in done.stderr, done.stderr
    done = run_sh(two_signed, "--trust", one, "--trust", two, "--threshold", "2")
    assert done.returncode == 0, done.stderr
    assert _tag_id(clean_engine, samples["docker"].tag) == samples["docker"].image_id


def test_install_sh_threshold_not_met(bundle: Path, keypair, other_keypair, samples, clean_engine) -> None:
    done = run_sh(bundle, "--trust", str(keypair[1]), "--trust", str(other_keypair[1]), "--threshold", "2")
    assert done.returncode == 5 and "only 1 valid signature(s)" in done.stderr, done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


def test_install_sh_trusts_a_directory_of_keys(
    two_signed: Path, keypair, other_keypair, samples, clean_engine, tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted-keys"
    trusted.mkdir()
    done = run_sh(two_signed, "--trust", str(trusted))
    assert done.returncode == 2 and "holds no .pub file" in done.stderr, done.stderr
    shutil.copy(keypair[1], trusted / "security-team.pub")
    shutil.copy(other_keypair[1], trusted / "release-manager.pub")
    (trusted / "README").write_text("only *.pub files count\n")
    done = run_sh(two_signed, "--trust", str(trusted), "--threshold", "2")
    assert done.returncode == 0, done.stderr
    assert _tag_id(clean_engine, samples["docker"].tag) == samples["docker"].image_id


@pytest.mark.parametrize("damage", ["flipped", "short"])
def test_install_sh_bad_signature_of_a_trusted_key_fails_even_above_threshold(
    two_signed: Path, keypair, other_keypair, samples, clean_engine, damage: str
) -> None:
    sig = two_signed / "signatures" / f"{keys.load_public(other_keypair[1]).fingerprint}.sig"
    if damage == "flipped":
        _flip_byte(sig, 10)
    else:
        sig.write_bytes(sig.read_bytes()[:63])
    done = run_sh(two_signed, "--trust", str(keypair[1]), "--trust", str(other_keypair[1]))  # threshold 1, met by keypair
    assert done.returncode == 5, done.stderr
    assert f"signatures/{sig.name}" in done.stderr and "do not install this bundle" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


@pytest.mark.parametrize(
    "extra",
    ["signatures/x/y.sig", ".airgap-staging/journal.jsonl", "parts/notes.txt", "installer/docker-linux-arm64.plan", "README"],
)
def test_install_sh_refuses_unlisted_files(bundle: Path, keypair, samples, clean_engine, extra: str) -> None:
    (bundle / extra).parent.mkdir(parents=True, exist_ok=True)
    (bundle / extra).write_bytes(b"not signed\n")
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4, done.stderr
    assert f"file {extra} in the bundle is not part of the signed bundle" in done.stderr
    assert "--allow-unexpected" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)
    done = run_sh(bundle, "--trust", str(keypair[1]), "--allow-unexpected")
    assert done.returncode == 0, done.stderr
    assert f"warning: unexpected file {extra} (not part of the signed bundle; allowed)" in done.stderr


def test_install_sh_refuses_unlisted_files_on_another_volume(
    bundle: Path, keypair, samples, clean_engine, tmp_path: Path
) -> None:
    volume = tmp_path / "vol-02"
    part = _config_part(bundle)["path"]
    (volume / "parts").mkdir(parents=True)
    shutil.move(str(bundle / part), volume / part)
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4 and f"part {part} is missing" in done.stderr, done.stderr
    (volume / "autorun.sh").write_text("echo pwned\n")
    done = run_sh(bundle, "--trust", str(keypair[1]), "--from", str(volume))
    assert done.returncode == 4 and f"file {volume}/autorun.sh in the bundle is not part" in done.stderr, done.stderr
    (volume / "autorun.sh").unlink()
    done = run_sh(bundle, "--trust", str(keypair[1]), "--from", str(volume))
    assert done.returncode == 0, done.stderr
    assert _tag_id(clean_engine, samples["docker"].tag) == samples["docker"].image_id


def test_install_sh_escapes_control_characters_in_names(bundle: Path, keypair, clean_engine) -> None:
    (bundle / "evil\x1b]0;pwned\x07\rOK.txt").write_text("x")
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4, done.stderr
    assert "evil\\x1b]0;pwned\\x07\\x0dOK.txt" in done.stderr
    assert not any(c in done.stderr for c in "\x1b\x07\r")


def test_install_sh_a_line_break_in_a_name_cannot_hide_a_file(bundle: Path, keypair, clean_engine) -> None:
    # a line-based check would read "./signatures/<64 hex>.sig", an allowed name, and one more line
    (bundle / "signatures" / f"{'ab' * 32}.sig\nmanifest.json").write_text("x")
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4 and "holds a line break" in done.stderr, done.stderr
    assert f"{'ab' * 32}.sig\\nmanifest.json" in done.stderr


def test_install_sh_refuses_an_oversized_manifest_before_openssl_reads_it(
    bundle: Path, keypair, clean_engine, tmp_path: Path
) -> None:
    os.truncate(bundle / "manifest.json", 64 * MIB + 1)  # sparse: nothing need read it to know
    env, log = logging_shim(tmp_path, "openssl")
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
    assert done.returncode == 3 and "larger than any manifest airgap writes" in done.stderr, done.stderr
    assert not [line for line in log.read_text().splitlines() if "manifest" in line or line.startswith("pkeyutl")]


# --- rollback: the same state file as 'airgap install' ------------------------------------------------


def _pack_seq(cli, samples, keypair, tmp_path: Path, sequence: int, *more: str) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / f"seq-{sequence}-{len(more)}"
    r = cli(
        "pack",
        f"docker-archive:{samples['docker'].path}",
        "-o",
        str(out),
        "--key",
        str(keypair[0]),
        "--sequence",
        str(sequence),
        *more,
    )
    assert r.code == 0, r.err
    return out


def _state_path() -> Path:
    return Path(os.environ["AIRGAP_STATE"])  # conftest gives every test its own


def test_install_sh_refuses_a_rollback(cli, samples, keypair, clean_engine, tmp_path: Path) -> None:
    from airgap.trust.policy import Installed
    from airgap.trust.rollback import InstallState

    new, old = _pack_seq(cli, samples, keypair, tmp_path, 100), _pack_seq(cli, samples, keypair, tmp_path, 99)
    name = _manifest(new)["name"]
    assert cli("install", str(new), "--trust", str(keypair[1])).code == 0  # airgap install remembers 100
    remove(clean_engine, samples["docker"].tag, samples["docker"].image_id)
    done = run_sh(old, "--trust", str(keypair[1]))
    assert done.returncode == 5, done.stderr
    assert f"bundle {name} sequence 99 is older than sequence 100" in done.stderr and "--allow-downgrade" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)
    done = run_sh(old, "--trust", str(keypair[1]), "--allow-downgrade")
    assert done.returncode == 0, done.stderr
    new_sha = hashlib.sha256((new / "manifest.json").read_bytes()).hexdigest()
    assert InstallState(_state_path()).get(name) == Installed(100, new_sha)  # a forced downgrade keeps the mark


def test_install_sh_refuses_another_bundle_with_the_same_sequence(cli, samples, keypair, clean_engine, tmp_path: Path) -> None:
    first, other = (
        _pack_seq(cli, samples, keypair, tmp_path, 100),
        _pack_seq(cli, samples, keypair, tmp_path, 100, "--expires", "30d"),
    )
    assert run_sh(first, "--trust", str(keypair[1])).returncode == 0
    done = run_sh(other, "--trust", str(keypair[1]))
    assert done.returncode == 5 and "differs from the bundle with that sequence installed here before" in done.stderr, done.stderr


def test_install_sh_records_the_state_as_airgap_install_writes_it(cli, samples, keypair, clean_engine, tmp_path: Path) -> None:
    from airgap.trust.policy import Installed
    from airgap.trust.rollback import InstallState

    state = _state_path()
    state.parent.mkdir(parents=True)
    InstallState(state).record("zz-other", 7, "ab" * 32, "2026-01-01T00:00:00Z")  # another bundle's entry stays
    bundle = _pack_seq(cli, samples, keypair, tmp_path, 100)
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 0, done.stderr
    text = state.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"  # byte for byte what state.py writes
    name = _manifest(bundle)["name"]
    sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert InstallState(state).get(name) == Installed(100, sha)
    assert InstallState(state).get("zz-other") == Installed(7, "ab" * 32)
    assert state.stat().st_mode & 0o777 == 0o600
    assert not [p for p in state.parent.iterdir() if p != state]  # no temp file left behind
    assert cli("install", str(_pack_seq(cli, samples, keypair, tmp_path, 99)), "--trust", str(keypair[1])).code == 5


def test_install_sh_creates_a_private_state_directory(bundle: Path, keypair, clean_engine, tmp_path: Path) -> None:
    state = tmp_path / "fresh" / "deep" / "installed.json"
    done = run_sh(bundle, "--trust", str(keypair[1]), env={**os.environ, "AIRGAP_STATE": str(state)})
    assert done.returncode == 0, done.stderr
    assert state.parent.stat().st_mode & 0o777 == 0o700 and state.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("unsafe", ["symlink", "group-writable", "someone-else's", "fifo", "writable-directory"])
def test_install_sh_refuses_an_unsafe_state_file(
    bundle: Path, keypair, samples, clean_engine, tmp_path: Path, unsafe: str
) -> None:
    from airgap.trust.rollback import InstallState

    state = _state_path()
    state.parent.mkdir(parents=True)
    real = tmp_path / "real-state.json"
    InstallState(real).record("other", 1, "cd" * 32, "2026-01-01T00:00:00Z")
    if unsafe == "symlink":
        state.symlink_to(real)
    elif unsafe == "fifo":
        os.mkfifo(state)
    elif unsafe == "writable-directory":  # anyone in the group could replace the file
        shutil.copy(real, state)
        state.parent.chmod(0o770)
    else:
        shutil.copy(real, state)
        if unsafe == "group-writable":
            state.chmod(0o620)
        else:
            os.chown(state, 65534, 65534)
    done = run_sh(bundle, "--trust", str(keypair[1]), timeout=60)
    assert done.returncode == 6, done.stderr
    assert f"install state {state if unsafe != 'writable-directory' else f'directory {state.parent}'} " in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


@pytest.mark.parametrize(
    "text",
    [
        '{"bundles": {}}\n',  # valid JSON, not the layout airgap writes: refused, never guessed at
        '{\n  "bundles": {\n    "a": {\n      "sequence": 1\n    }\n  }\n}\n',
        "not json\n",
    ],
)
def test_install_sh_refuses_a_state_file_it_cannot_read_exactly(bundle: Path, keypair, samples, clean_engine, text: str) -> None:
    state = _state_path()
    state.parent.mkdir(parents=True)
    state.write_text(text)
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 3 and "is not in the layout airgap writes" in done.stderr, done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_install_sh_a_bad_part_never_lets_the_archive_manifest_reach_the_engine(
    bundle: Path, keypair, samples, clean_engine, tmp_path: Path, damage: str
) -> None:
    part = _config_part(bundle)  # streamed last, just before the archive's manifest.json
    if damage == "missing":
        (bundle / part["path"]).unlink()
    else:
        _flip_byte(bundle / part["path"], part["size"] // 2)
    sent = tmp_path / "sent-to-docker-load"
    docker_cli = _real("docker")
    env = _path_with(
        tmp_path, "docker", f'if [ "$1" = load ]; then tee {sent} | {docker_cli} "$@"; exit $?; fi\nexec {docker_cli} "$@"\n'
    )
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
    assert done.returncode == 4 and part["path"] in done.stderr, done.stderr
    if damage == "missing":  # found before anything is sent
        assert not sent.exists()
    else:  # found mid-stream: the layers went, the archive's manifest.json did not
        assert sent.stat().st_size > (3 << 20)
        assert b'"RepoTags"' not in sent.read_bytes()
        assert "cut off" in done.stderr
    assert samples["docker"].image_id not in _image_ids(clean_engine)


# --- run twice: what the engine holds under all its names is not loaded again -------------------------


def _loads(log: Path) -> list[str]:
    """The ``docker load`` runs a logging shim saw."""
    return [line for line in log.read_text().splitlines() if line.split(" ", 1)[0] == "load"]


def test_install_sh_run_twice_does_not_load_again(bundle: Path, keypair, samples, clean_engine, tmp_path: Path) -> None:
    from airgap.trust.policy import Installed
    from airgap.trust.rollback import InstallState

    env, log = logging_shim(tmp_path, "docker")
    tag, image_id = samples["docker"].tag, samples["docker"].image_id
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
    assert done.returncode == 0, done.stderr
    assert len(_loads(log)) == 1 and f"loaded: {tag}  {image_id}" in done.stdout
    _state_path().unlink()  # the second run records the state as a completed install does
    log.write_text("")
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"already present: {tag}  {image_id}\n"
    assert _loads(log) == [] and "loading into Docker" not in done.stderr
    sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert InstallState(_state_path()).get(_manifest(bundle)["name"]) == Installed(_manifest(bundle)["sequence"], sha)
    # the signature is still checked first: an edited manifest fails though its images are present
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"sequence": ', '"sequence": 9'))
    done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
    assert done.returncode == 5 and "does not match manifest.json" in done.stderr, done.stderr
    assert "already present" not in done.stdout and _loads(log) == []


def test_install_sh_run_twice_with_the_tag_moved_is_a_conflict(
    bundle: Path, keypair, samples, clean_engine, tmp_path: Path
) -> None:
    tag, image_id = samples["docker"].tag, samples["docker"].image_id
    assert run_sh(bundle, "--trust", str(keypair[1])).returncode == 0
    with open(samples["docker2"].path, "rb") as fh:
        clean_engine.images.load(fh)
    try:
        clean_engine.images.get(samples["docker2"].image_id).tag(tag)  # the bundle's image stays, untagged
        env, log = logging_shim(tmp_path, "docker")
        done = run_sh(bundle, "--trust", str(keypair[1]), env=env)
        assert done.returncode == 7, done.stderr
        assert f"tag {tag} already names image {samples['docker2'].image_id}" in done.stderr and "--replace" in done.stderr
        assert "already present" not in done.stdout and _loads(log) == []
        assert _tag_id(clean_engine, tag) == samples["docker2"].image_id
        done = run_sh(bundle, "--trust", str(keypair[1]), "--replace", env=env)
        assert done.returncode == 0, done.stderr
        assert len(_loads(log)) == 1 and f"loaded: {tag}  {image_id}" in done.stdout
        assert _tag_id(clean_engine, tag) == image_id
    finally:
        remove(clean_engine, samples["docker2"].tag, samples["docker2"].image_id)


def test_install_sh_run_twice_with_one_image_missing_loads(cli, samples, keypair, clean_engine, tmp_path: Path) -> None:
    one, two = samples["docker"], samples["docker2"]
    out = tmp_path / "two"
    r = cli("pack", f"docker-archive:{one.path}", f"docker-archive:{two.path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    remove(clean_engine, two.tag, two.image_id)
    try:
        assert run_sh(out, "--trust", str(keypair[1])).returncode == 0
        remove(clean_engine, two.tag, two.image_id)
        env, log = logging_shim(tmp_path, "docker")
        done = run_sh(out, "--trust", str(keypair[1]), env=env)
        assert done.returncode == 0, done.stderr
        assert len(_loads(log)) == 1 and "already present" not in done.stdout
        assert f"loaded: {two.tag}  {two.image_id}" in done.stdout
        assert _tag_id(clean_engine, one.tag) == one.image_id and _tag_id(clean_engine, two.tag) == two.image_id
    finally:
        remove(clean_engine, two.tag, two.image_id)


def test_install_sh_run_twice_from_several_volumes_asks_for_no_other_disc(
    cli, samples, keypair, clean_engine, tmp_path: Path
) -> None:
    split = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, split, "1MiB", "2MiB")
    assert r.code == 0, r.err
    vols = sorted(p.name for p in split.iterdir())
    assert len(vols) > 2
    froms = [arg for v in vols[1:] for arg in ("--from", str(split / v))]
    done = run_sh(split / "vol-01", "--trust", str(keypair[1]), *froms)
    assert done.returncode == 0, done.stderr
    env, log = logging_shim(tmp_path, "docker")
    done = run_sh(split / "vol-01", "--trust", str(keypair[1]), *froms, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"already present: {samples['docker'].tag}  {samples['docker'].image_id}\n" and _loads(log) == []
    # from one drive: vol-01 alone is read; no other disc is asked for
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    asked = tmp_path / "asked"
    command = f'printf "%s\\n" "$*" >>{shlex.quote(str(asked))}; exit 1'
    done = subprocess.run(
        [dash(), str(drive.media / "installer" / "install.sh"), "--trust", str(keypair[1]), "--media-command", command],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"already present: {samples['docker'].tag}  {samples['docker'].image_id}\n"
    assert not asked.exists() and _loads(log) == []
    assert "vol-01 in " in done.stderr  # the disc it read was checked as it came


def test_install_sh_after_airgap_install_says_already_present_too(bundle: Path, keypair, samples, clean_engine, capsys) -> None:  # type: ignore[no-untyped-def]
    from airgap._cli import main
    from airgap._internal.sinks.engine import UPLOAD_COMPLETE

    tag, image_id = samples["docker"].tag, samples["docker"].image_id
    capsys.readouterr()
    code = main(["install", str(bundle), "--trust", str(keypair[1])])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert f"loaded: {tag}  {image_id}" in said.out
    assert said.err.count(UPLOAD_COMPLETE) == 1  # the word while the engine registers the layers
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"already present: {tag}  {image_id}\n"
    code = main(["install", str(bundle), "--trust", str(keypair[1])])
    said = capsys.readouterr()
    assert code == 0 and f"already present: {tag}  {image_id}" in said.out, said.err
    assert UPLOAD_COMPLETE not in said.err  # nothing was uploaded


@pytest.mark.parametrize("kind", ["another user's", "writable by all, not sticky"])
def test_install_sh_refuses_a_tmpdir_where_another_user_could_swap_the_checked_files(
    bundle: Path, keypair, tmp_path: Path, kind: str, clean_engine
) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    if kind == "another user's":
        os.chown(shared, 65534, 65534)  # nobody: could rename what the installer makes there and put its own
        shared.chmod(0o755)
    else:
        shared.chmod(0o777)
    for extra in ((), ("--one-drive",)):  # the plain run, and the self-copy a one-drive run execs
        done = run_sh(bundle, "--trust", str(keypair[1]), *extra, env={**os.environ, "TMPDIR": str(shared)})
        assert done.returncode == 6, done.stderr
        assert f"TMPDIR {shared}" in done.stderr and "swap the files checked there" in done.stderr
        assert not any(shared.iterdir())  # nothing made there, nothing loaded
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is not theirs
    if kind == "writable by all, not sticky":
        done = run_sh(bundle, "--trust", str(keypair[1]), env={**os.environ, "TMPDIR": str(shared)})
        assert done.returncode == 0, done.stderr
