"""Local files another user must not be able to change: the rollback state, the verified-parts cache,
and verification receipts.  Tests run as root, so "another user" is a file chowned to uid 65534."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap import receipt
from airgap._internal.format import cache as cache_mod
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.reader import load_bundle
from airgap.errors import EnvironmentProblem, ExitCode
from airgap.install import InstallOptions, install
from airgap.model.manifest import Manifest
from airgap.trust.keys import load_public
from airgap.trust.policy import Installed
from airgap.trust.rollback import InstallState, cache_path
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples

NOBODY = 65534


@pytest.fixture
def state_path() -> Path:
    return Path(os.environ["AIRGAP_STATE"])


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _recorded(path: Path, sequence: int = 5) -> InstallState:
    state = InstallState(path)
    state.record("agent", sequence, "a" * 64, "2026-01-01T00:00:00Z")
    return state


def _refused(state: InstallState, *words: str) -> EnvironmentProblem:
    with pytest.raises(EnvironmentProblem) as info:
        state.get("agent")
    e = info.value
    assert e.exit_code == ExitCode.ENVIRONMENT
    for word in words:
        assert word in e.message or word in (e.hint or ""), (word, e.diagnostics())
    return e


# -- rollback state -------------------------------------------------------------------------------


def test_state_directory_created_0700_and_file_0600_whatever_the_umask(state_path: Path, umask_000: None) -> None:
    _recorded(state_path)
    assert stat.S_IMODE(state_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    assert InstallState(state_path).get("agent") == Installed(5, "a" * 64)


def test_missing_state_directories_created_0700_under_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_000: None
) -> None:
    from airgap.trust.rollback import default_path

    monkeypatch.delenv("AIRGAP_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg" / "state"))
    path = default_path()
    assert path == tmp_path / "xdg" / "state" / "airgap" / "installed.json"
    _recorded(path)
    for d in (tmp_path / "xdg", tmp_path / "xdg" / "state", path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_state_file_writable_by_others_refused(state_path: Path) -> None:
    state = _recorded(state_path)
    state_path.chmod(0o666)
    e = _refused(state, str(state_path), "writable by group or others", "chmod go-w")
    assert "hint: chmod go-w" in e.diagnostics()
    with pytest.raises(EnvironmentProblem):
        state.record("agent", 9, "b" * 64, "2026-01-02T00:00:00Z")  # nor is it rewritten
    state_path.chmod(0o600)
    assert state.get("agent") == Installed(5, "a" * 64)


def test_state_file_group_writable_refused(state_path: Path) -> None:
    state = _recorded(state_path)
    state_path.chmod(0o620)
    _refused(state, str(state_path), "mode 0620")


def test_state_file_owned_by_another_user_refused(state_path: Path) -> None:
    state = _recorded(state_path)
    os.chown(state_path, NOBODY, NOBODY)
    _refused(state, str(state_path), f"owned by uid {NOBODY}", "chown")


def test_state_file_symlink_refused(state_path: Path, tmp_path: Path) -> None:
    """Another user's link to a state file of their making (say, one without the mark) is not followed."""
    elsewhere = tmp_path / "elsewhere.json"
    _recorded(elsewhere, sequence=1)
    state_path.parent.mkdir(mode=0o700)
    state_path.symlink_to(elsewhere)
    _refused(InstallState(state_path), str(state_path), "symbolic link")


def test_state_directory_writable_by_others_refused_even_without_a_state_file(state_path: Path) -> None:
    """In a directory others can write, deleting installed.json resets the mark: refuse before that matters."""
    state = _recorded(state_path)
    state_path.parent.chmod(0o777)
    _refused(state, str(state_path.parent), "writable by group or others", "chmod go-w")
    state_path.unlink()
    _refused(state, str(state_path.parent))
    with pytest.raises(EnvironmentProblem):
        state.record("agent", 1, "c" * 64, "2026-01-02T00:00:00Z")
    assert not state_path.exists()


def test_state_directory_owned_by_another_user_refused(state_path: Path) -> None:
    state = _recorded(state_path)
    os.chown(state_path.parent, NOBODY, NOBODY)
    _refused(state, str(state_path.parent), f"owned by uid {NOBODY}")


def test_state_directory_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _recorded(real / "installed.json")
    (tmp_path / "link").symlink_to(real)
    _refused(InstallState(tmp_path / "link" / "installed.json"), str(tmp_path / "link"), "symbolic link")


def test_state_below_a_directory_others_can_write_refused(tmp_path: Path) -> None:
    """Whoever can rename entries in a directory above the state can swap the whole state directory."""
    shared = tmp_path / "shared"
    shared.mkdir()
    state = _recorded(shared / "airgap" / "installed.json")
    shared.chmod(0o777)
    e = _refused(state, str(shared), "which is writable by group or others")
    assert str(shared / "airgap") in e.message
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot rename our entries
    assert state.get("agent") == Installed(5, "a" * 64)


def test_rollback_mark_reset_by_another_user_refused_at_install(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path, state_path: Path
) -> None:
    """The attack end to end: install records the mark; another user's writable state file stops install (exit 6)."""
    trusted = (load_public(keypair[1]),)
    install(InstallOptions(bundle, trusted), connect=connect_to(FakeEngine(tmp_path)))
    seq = load_bundle(bundle).manifest.sequence
    recorded = InstallState(state_path).get(load_bundle(bundle).manifest.name)
    assert recorded is not None and recorded.sequence == seq
    state_path.chmod(0o666)
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{tmp_path / 'out.tar'}")
    assert r.code == 6, r.err
    assert str(state_path) in r.err and "chmod go-w" in r.err
    assert not (tmp_path / "out.tar").exists()


# -- verified-parts cache ------------------------------------------------------------------------


def _cache_with(path: Path, *keys: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"key": k}) + "\n" for k in keys))
    path.chmod(0o600)


def test_cache_symlink_not_followed(state_path: Path, tmp_path: Path) -> None:
    """A link planted where the cache goes: never appended through, and its target's keys never trusted."""
    cache = cache_path(state_path)
    target = tmp_path / "victim.txt"
    target.write_text(json.dumps({"key": "k-planted"}) + "\n")
    target.chmod(0o600)
    state_path.parent.mkdir(mode=0o700)
    cache.symlink_to(target)
    c = VerifiedCache(cache)
    assert "k-planted" not in c
    c.add("k-new")
    assert target.read_text() == json.dumps({"key": "k-planted"}) + "\n"
    assert cache.is_symlink()
    dangling = tmp_path / "not-yet"
    cache.unlink()
    cache.symlink_to(dangling)
    VerifiedCache(cache).add("k-new")
    assert not dangling.exists()


def test_cache_owned_by_another_user_ignored_and_left_alone(state_path: Path) -> None:
    cache = cache_path(state_path)
    _cache_with(cache, "k-planted")
    os.chown(cache, NOBODY, NOBODY)
    c = VerifiedCache(cache)
    assert "k-planted" not in c
    c.add("k-new")
    assert "k-new" not in cache.read_text()


def test_cache_writable_by_others_ignored(state_path: Path) -> None:
    cache = cache_path(state_path)
    _cache_with(cache, "k-planted")
    cache.chmod(0o646)
    assert "k-planted" not in VerifiedCache(cache)
    cache.chmod(0o600)
    assert "k-planted" in VerifiedCache(cache)


def test_cache_in_a_directory_others_can_write_ignored(state_path: Path) -> None:
    cache = cache_path(state_path)
    _cache_with(cache, "k-planted")
    cache.parent.chmod(0o777)
    c = VerifiedCache(cache)
    assert "k-planted" not in c
    c.add("k-new")
    assert "k-new" not in cache.read_text()


def test_cache_created_0600_in_a_0700_directory_whatever_the_umask(state_path: Path, umask_000: None) -> None:
    cache = cache_path(state_path)
    VerifiedCache(cache).add("k-1")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert "k-1" in VerifiedCache(cache)


def test_cache_fifo_neither_blocks_nor_counts(state_path: Path) -> None:
    """A FIFO planted as the cache would hang a plain open(); it must be skipped at once."""
    cache = cache_path(state_path)
    cache.parent.mkdir(mode=0o700)
    os.mkfifo(cache, 0o600)
    made: list[VerifiedCache] = []

    def use() -> None:
        c = VerifiedCache(cache)
        c.add("k-new")
        made.append(c)

    worker = threading.Thread(target=use, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock it so the session can end, then fail
        for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
            with contextlib.suppress(OSError):
                os.close(os.open(cache, flags))
        pytest.fail("the cache blocked on a FIFO")
    assert "k-new" in made[0]  # this process hashed it; nothing was trusted from the FIFO


def test_huge_cache_file_read_only_up_to_the_cap(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "MAX_READ", 4096)
    cache = cache_path(state_path)
    _cache_with(cache, "k-oldest", *(f"k-filler-{i:05d}" for i in range(400)), "k-newest")
    assert cache.stat().st_size > 4096
    c = VerifiedCache(cache)
    assert "k-newest" in c and "k-oldest" not in c


def test_untrusted_cache_never_makes_install_skip_a_hash(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path, state_path: Path
) -> None:
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    cache = cache_path(state_path)
    assert cache.stat().st_size > 0
    cache.chmod(0o666)
    result = install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(FakeEngine(tmp_path)))
    assert result.parts_cached == 0
    assert result.parts_hashed == len(load_bundle(bundle).manifest.parts)


# -- receipts ------------------------------------------------------------------------------------


def test_receipt_start_replaces_a_previous_pass_and_removes_its_signature(tmp_path: Path) -> None:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps({"result": "pass"}))
    Path(f"{path}.sig").write_bytes(b"x" * 64)
    receipt.start(path, tmp_path / "bundle")
    data = json.loads(path.read_bytes())
    assert data["result"] == "incomplete" and data["bundle"] == str(tmp_path / "bundle")
    assert not Path(f"{path}.sig").exists()


def test_killed_verify_leaves_no_pass_receipt(
    cli: Cli, bundle: Path, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    core = importlib.import_module("airgap.verify")  # the module: airgap.verify is the function

    path = tmp_path / "receipt.json"
    args = ("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(path), "--receipt-key", str(other_keypair[0]))
    assert cli(*args).code == 0
    assert json.loads(path.read_bytes())["result"] == "pass" and Path(f"{path}.sig").exists()

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # as far as files go, the same as SIGKILL halfway through hashing

    monkeypatch.setattr(core, "check_parts", killed)
    assert cli(*args).code == 130
    assert json.loads(path.read_bytes())["result"] == "incomplete"
    assert not Path(f"{path}.sig").exists()


def test_unsigned_receipt_leaves_no_stale_signature_beside_it(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    path = tmp_path / "receipt.json"
    Path(f"{path}.sig").write_bytes(b"s" * 64)
    assert cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(path)).code == 0
    assert not Path(f"{path}.sig").exists()


def test_delta_receipt_names_the_layers_it_could_not_check(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    full, delta = tmp_path / "full", tmp_path / "delta"
    for out, sample, extra in (
        (full, "docker", ("--sequence", "1")),
        (delta, "docker2", ("--sequence", "2", "--since", str(full))),
    ):
        r = cli(
            "pack", f"docker-archive:{samples[sample].path}", "-o", str(out), "--key", str(keypair[0]), "--name", "agent", *extra
        )
        assert r.code == 0, r.err
    manifest = Manifest.from_bytes((delta / "manifest.json").read_bytes())
    left_out = {d.digest for d in manifest.external_layers()} | {r.layer for r in manifest.rebuilds}
    assert left_out  # the sample images share their base layers

    path = tmp_path / "receipt.json"
    assert cli("verify", str(delta), "--trust", str(keypair[1]), "--receipt", str(path)).code == 0
    data = json.loads(path.read_bytes())
    assert data["result"] == f"pass (delta: {len(left_out)} layers not in this bundle, checked against their digests at install)"
    assert data["delta"]["base"] == "sha256:" + hashlib.sha256((full / "manifest.json").read_bytes()).hexdigest()
    assert {x["layer"] for x in data["delta"]["layers"]} == left_out
    assert "not checked here" in data["delta"]["note"]
    unchecked = [c for c in data["verification"]["checks"] if c["result"] == "not checked here"]
    assert {c["check"] for c in unchecked} == {f"layer {d}" for d in left_out}

    path_full = tmp_path / "receipt-full.json"
    assert cli("verify", str(full), "--trust", str(keypair[1]), "--receipt", str(path_full)).code == 0
    data = json.loads(path_full.read_bytes())
    assert data["result"] == "pass" and data["delta"] is None
