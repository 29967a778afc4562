"""Resume: an interrupted install finishes without hashing again the parts it (or verify) already checked,
and an interrupted pack resumes from its own staging only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from airgap._internal.format.parts import make_compressor
from airgap._internal.format.reader import load_bundle
from airgap._internal.format.writer import BundleWriter, journal_mac, journal_mac_key
from airgap._internal.util.tarstream import EntryReader
from airgap.errors import ConflictError, EnvironmentProblem, IntegrityError
from airgap.install import InstallOptions, install
from airgap.progress import Transfer
from airgap.trust.keys import load_public
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples


def test_install_after_verify_hashes_no_part_again(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    result = install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(FakeEngine(tmp_path)))
    assert result.parts_cached == len(load_bundle(bundle).manifest.parts)
    assert result.parts_hashed == 0


def test_part_changed_after_verify_is_hashed_again_and_refused(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    assert cli("verify", str(bundle), "--trust", str(keypair[1])).code == 0
    part = bundle / load_bundle(bundle).manifest.parts[-1].path
    data = bytearray(part.read_bytes())
    data[-5] ^= 1
    part.write_bytes(data)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=part.name):
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(engine))
    assert engine.ids == set()


def test_part_changed_with_its_mtime_restored_is_still_caught(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
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
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(engine))
    assert engine.ids == set()


STAGING = ".airgap-staging"
SKIPPABLE_FRAME = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"backdoor"


def _journal(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / STAGING / "journal.jsonl").read_text().splitlines()]


def _staged_file(entry: dict[str, object]) -> str:
    return f"{entry['stem']}.{entry['index']:05d}.tmp"


# -- a resumed pack signs only bytes it wrote itself -------------------------------------------------


def _pack_args(sample: Path, out: Path, key: Path, *extra: str) -> list[str]:
    return ["pack", f"docker-archive:{sample}", "-o", str(out), "--key", str(key), "--part-size", "1MiB", "--json", *extra]


@pytest.fixture
def interrupted(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pack of the small sample that failed just before committing its parts: its staging is kept."""

    def unplugged(self: BundleWriter, digests: list[str]) -> None:
        raise EnvironmentProblem("the disk was unplugged")

    out = tmp_path / "b"
    with monkeypatch.context() as m:
        m.setattr(BundleWriter, "commit_parts", unplugged)
        r = cli(*_pack_args(samples["docker"].path, out, keypair[0]))
    assert r.code == 6 and "run the same pack again to resume" in r.err, r.err
    assert len(_journal(out)) > 3
    return out


def test_interrupted_pack_resumes_from_its_own_staging(interrupted: Path, cli: Cli, samples: Samples, keypair: KeyPair) -> None:
    staged = len(_journal(interrupted)) - 1
    r = cli(*_pack_args(samples["docker"].path, interrupted, keypair[0]))
    assert r.code == 0, r.err
    assert json.loads(r.out)["reused_parts"] == staged
    assert cli("verify", str(interrupted), "--trust", str(keypair[1])).code == 0


def test_resume_refuses_appended_skippable_frame(interrupted: Path, cli: Cli, samples: Samples, keypair: KeyPair) -> None:
    """A skippable frame appended to a staged part, its journal entry's size and sha256 fixed up: the
    entry's HMAC (keyed by the resume key, which the signer's key makes) no longer holds."""
    lines = _journal(interrupted)
    victim = lines[2]
    path = interrupted / STAGING / _staged_file(victim)
    with open(path, "ab") as fh:
        fh.write(SKIPPABLE_FRAME)
    victim.update(size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (interrupted / STAGING / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    r = cli(*_pack_args(samples["docker"].path, interrupted, keypair[0]))
    assert r.code == 7, r.err
    assert path.name in r.err and "--overwrite" in r.err
    assert not (interrupted / "manifest.json").exists() and not (interrupted / "parts").exists()
    again = cli(*_pack_args(samples["docker"].path, interrupted, keypair[0], "--overwrite"))
    assert again.code == 0, again.err
    assert json.loads(again.out)["reused_parts"] == 0


def _writer(out: Path, key: str | None, overwrite: bool = False) -> BundleWriter:
    return BundleWriter(out, 64 << 10, make_compressor(3, 1), overwrite, Transfer(), 3, resume_key=key)


def _store(writer: BundleWriter, data: bytes) -> str:
    return writer.store_stream(len(data), EntryReader(io.BytesIO(data), len(data), "layer"), "layer.tar").digest


def test_resume_refuses_appended_skippable_frame_with_a_valid_journal_entry(tmp_path: Path) -> None:
    """Even an attacker who knows the resume key and writes a valid entry: the staged part must be exactly
    one zstd frame, so the bytes after it stop the resume."""
    data = os.urandom(300_000)
    out = tmp_path / "b"
    first = _writer(out, "the key")
    _store(first, data)
    assert first.keep_for_resume()
    lines = _journal(out)
    victim = lines[3]
    path = out / STAGING / _staged_file(victim)
    with open(path, "ab") as fh:
        fh.write(SKIPPABLE_FRAME)
    victim.pop("mac")
    victim.update(size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    victim["mac"] = journal_mac(journal_mac_key("the key"), victim)
    (out / STAGING / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    resumed = _writer(out, "the key")
    assert resumed.resumable_parts == len(lines) - 1
    with pytest.raises(ConflictError, match=f"{path.name} .*bytes follow its zstd frame"):
        _store(resumed, data)
    assert resumed.keep_for_resume()


def _chown_staging(out: Path) -> None:
    for p in [out / STAGING, *(out / STAGING).iterdir()]:
        os.chown(p, 65534, 65534)


def _chown_journal(out: Path) -> None:
    os.chown(out / STAGING / "journal.jsonl", 65534, 65534)


def _open_staging(out: Path) -> None:
    (out / STAGING).chmod(0o777)


def _link_staging(out: Path) -> None:
    elsewhere = out.parent / "planted-staging"
    os.replace(out / STAGING, elsewhere)
    (out / STAGING).symlink_to(elsewhere)


def _link_journal(out: Path) -> None:
    journal = out / STAGING / "journal.jsonl"
    os.replace(journal, out.parent / "planted-journal")
    journal.symlink_to(out.parent / "planted-journal")


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (_chown_staging, r"\.airgap-staging is not from an interrupted pack of this user \(owned by uid 65534\)"),
        (_chown_journal, r"journal\.jsonl is not from an interrupted pack of this user \(owned by uid 65534\)"),
        (_open_staging, r"\(writable by other users, mode 0777\)"),
        (_link_staging, r"\.airgap-staging is not from an interrupted pack of this user \(a symbolic link\)"),
        (_link_journal, r"journal\.jsonl is not from an interrupted pack of this user \(not a regular file\)"),
    ],
    ids=["staging-owner", "journal-owner", "staging-mode", "staging-symlink", "journal-symlink"],
)
def test_resume_refuses_staging_owned_by_another_user(
    interrupted: Path, cli: Cli, samples: Samples, keypair: KeyPair, plant: Callable[[Path], None], why: str
) -> None:
    """Staging another local user could have written is never resumed (and, quiet or not, never silently:
    the pack stops with exit 7), nor deleted without --overwrite."""
    assert os.geteuid() == 0, "chown to another user needs root (the test suite runs as root)"
    plant(interrupted)
    before = sorted(p.name for p in (interrupted / STAGING).iterdir())
    r = cli(*_pack_args(samples["docker"].path, interrupted, keypair[0]))
    assert r.code == 7, r.err
    assert re.search(why, r.err) and "--overwrite" in r.err, r.err
    assert sorted(p.name for p in (interrupted / STAGING).iterdir()) == before
    assert not (interrupted / "parts").exists()
    again = cli(*_pack_args(samples["docker"].path, interrupted, keypair[0], "--overwrite"))
    assert again.code == 0, again.err
    assert json.loads(again.out)["reused_parts"] == 0


@pytest.mark.parametrize("change", ["--part-size", "--level", "--long", "--key"])
def test_resume_ignores_staging_of_other_options(
    interrupted: Path, cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, change: str
) -> None:
    """This user's staging from a pack of other options (or another signer) is discarded, not reused."""
    extra = {"--part-size": ["--part-size", "2MiB"], "--level": ["--level", "5"], "--long": ["--long"], "--key": []}[change]
    key = other_keypair if change == "--key" else keypair
    r = cli(*_pack_args(samples["docker"].path, interrupted, key[0], *extra))
    assert r.code == 0, r.err
    assert json.loads(r.out)["reused_parts"] == 0
    assert not (interrupted / STAGING).exists()
    assert cli("verify", str(interrupted), "--trust", str(key[1])).code == 0


def test_staging_of_a_writer_without_resume_key_is_never_reused(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    out = tmp_path / "b"
    for key in ("k", None):
        first = _writer(out, "k")
        _store(first, data)
        assert first.keep_for_resume()
        again = _writer(out, key)
        assert again.resumable_parts == (4 if key else 0)
        assert again.discarded_parts == (0 if key else 4)
        _store(again, data)
        assert again.reused_parts == (4 if key else 0)
        again.cleanup()


def _plant_before(out: Path, name: str, elsewhere: Path) -> None:
    """An output directory that looks like an interrupted pack, with ``name`` a link to ``elsewhere``."""
    out.mkdir()
    if name == STAGING:
        (elsewhere / "journal.jsonl").write_text('{"airgap_staging": 1, "key": null}\n')
    else:
        (out / STAGING).mkdir(mode=0o700)
    (out / name).symlink_to(elsewhere)


PLANTED_DURING = {"parts": "commit_parts", "installer": "write_files", "signatures": "write_manifest", STAGING: "store_stream"}


@pytest.mark.parametrize("when", ["before", "during"])
@pytest.mark.parametrize("name", ["parts", "installer", "signatures", STAGING])
def test_planted_parts_symlink_gets_no_writes(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, when: str
) -> None:
    """A link planted in the output directory, before the pack or while it runs, never receives a write:
    every directory below the output directory is made and opened without following links."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "b"
    if when == "before":
        _plant_before(out, name, elsewhere)
    else:
        method = PLANTED_DURING[name]
        original = getattr(BundleWriter, method)

        def planting(self: BundleWriter, *args: object) -> object:
            if not (out / name).is_symlink():
                if (out / name).exists():
                    os.replace(out / name, tmp_path / "moved")
                (out / name).symlink_to(elsewhere)
            return original(self, *args)

        monkeypatch.setattr(BundleWriter, method, planting)
    before = sorted(p.name for p in elsewhere.iterdir())
    r = cli(*_pack_args(samples["docker"].path, out, keypair[0]))
    if when == "before" or name != STAGING:
        assert r.code == 7 and "symbolic link" in r.err, r.err
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    if when == "before":
        r = cli(*_pack_args(samples["docker"].path, out, keypair[0], "--overwrite"))
        assert r.code == 0, r.err
        assert sorted(p.name for p in elsewhere.iterdir()) == before
        assert not (out / name).is_symlink()
