"""Freeze, rollback and k-of-n: the policy around signatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from airgap.errors import TrustError
from airgap.install import InstallOptions, install
from airgap.trust.keys import load_public
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Sample, Samples


def pack(cli: Cli, sample: Sample, out: Path, key: Path, *extra: str) -> None:
    r = cli("pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(key), *extra)
    assert r.code == 0, r.err


def test_expired_bundle_rejected(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")  # created 2001-09-09
    pack(cli, samples["docker"], tmp_path / "b", keypair[0], "--expires", "30d")
    assert load_bundle(tmp_path / "b").manifest.expires == "2001-10-09T01:46:40Z"
    r = cli("verify", str(tmp_path / "b"), "--trust", str(keypair[1]))
    assert r.code == 5 and "expired at 2001-10-09T01:46:40Z" in r.err and "--allow-expired" in r.err
    r = cli("verify", str(tmp_path / "b"), "--trust", str(keypair[1]), "--allow-expired", "--json")
    assert r.code == 0 and json.loads(r.out)["signatures"]["expired"] is True


def test_expiry_date_edited_breaks_signature(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    pack(cli, samples["docker"], tmp_path / "b", keypair[0], "--expires", "1h")
    m = tmp_path / "b" / "manifest.json"
    data = json.loads(m.read_bytes())
    data["expires"] = "2099-01-01T00:00:00Z"
    m.write_bytes((json.dumps(data, sort_keys=True, indent=2) + "\n").encode())
    assert cli("verify", str(tmp_path / "b"), "--trust", str(keypair[1])).code == 5


@pytest.mark.parametrize("bad", ["yesterday", "-5d", "1970-01-01T00:00:00Z"])
def test_bad_expiry_is_usage_error(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, bad: str) -> None:
    r = cli(
        "pack", f"docker-archive:{samples['docker'].path}", "-o", str(tmp_path / "b"), "--key", str(keypair[0]), "--expires", bad
    )
    assert r.code == 2 and "--expires" in r.err


def test_rollback_to_older_sequence_rejected(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    pack(cli, samples["docker2"], tmp_path / "new", keypair[0], "--name", "agent", "--sequence", "5")
    pack(cli, samples["docker"], tmp_path / "old", keypair[0], "--name", "agent", "--sequence", "4")
    engine = FakeEngine(tmp_path)
    pub = (load_public(keypair[1]),)
    install(InstallOptions(tmp_path / "new", pub), connect=connect_to(engine))
    with pytest.raises(TrustError, match="sequence 4 is older than sequence 5"):
        install(InstallOptions(tmp_path / "old", pub), connect=connect_to(engine))
    assert engine.load_calls == 1
    install(InstallOptions(tmp_path / "old", pub, allow_downgrade=True), connect=connect_to(engine))
    assert engine.load_calls == 2
    # a forced downgrade does not lower the mark: the old bundle is still refused without the flag
    with pytest.raises(TrustError, match="older"):
        install(InstallOptions(tmp_path / "old", pub), connect=connect_to(engine))


def test_same_sequence_different_bundle_rejected(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    pack(cli, samples["docker"], tmp_path / "a", keypair[0], "--name", "agent", "--sequence", "7")
    pack(cli, samples["docker2"], tmp_path / "b", keypair[0], "--name", "agent", "--sequence", "7")
    engine = FakeEngine(tmp_path)
    pub = (load_public(keypair[1]),)
    install(InstallOptions(tmp_path / "a", pub), connect=connect_to(engine))
    install(InstallOptions(tmp_path / "a", pub), connect=connect_to(engine))  # same bundle again: fine
    with pytest.raises(TrustError, match="differs from the bundle with that sequence"):
        install(InstallOptions(tmp_path / "b", pub), connect=connect_to(engine))


def test_second_signer_meets_threshold_two(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    trust_both = ["--trust", str(keypair[1]), "--trust", str(other_keypair[1]), "--threshold", "2"]
    r = cli("verify", str(out), *trust_both)
    assert r.code == 5 and "only 1 valid signature" in r.err
    r = cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["signers"]) == 2
    assert cli("verify", str(out), *trust_both).code == 0


def test_trust_directory_counts_distinct_keys(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    assert cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1])).code == 0
    trust_dir = tmp_path / "trusted"
    trust_dir.mkdir()
    for pub in (keypair[1], other_keypair[1]):
        (trust_dir / pub.name).write_bytes(pub.read_bytes())
    # the same key given twice is still one key
    r = cli("verify", str(out), "--trust", str(keypair[1]), "--trust", str(keypair[1]), "--threshold", "2")
    assert r.code == 5
    assert cli("verify", str(out), "--trust", str(trust_dir), "--threshold", "2").code == 0


def test_signing_a_damaged_bundle_refused(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    part = out / load_bundle(out).manifest.parts[0].path
    part.write_bytes(part.read_bytes() + b"x")
    r = cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    assert r.code == 4 and part.name in r.err
    assert len(load_bundle(out).signatures) == 1


def test_keygen_without_passphrase_choice_refused(cli: Cli, tmp_path: Path) -> None:
    r = cli("keygen", "--out", str(tmp_path / "k"))
    assert r.code == 2 and "--no-passphrase" in r.err
    assert not (tmp_path / "k.key").exists()
    r = cli("keygen", "--out", str(tmp_path / "k"), "--no-passphrase")
    assert r.code == 0 and (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" not in (tmp_path / "k.key").read_bytes()


def test_keygen_encrypts_with_env_passphrase_and_pack_uses_it(
    cli: Cli, samples: Samples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNING_PASS", "s3cret")
    assert cli("keygen", "--out", str(tmp_path / "k"), "--passphrase-env", "SIGNING_PASS").code == 0
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    src = f"docker-archive:{samples['docker'].path}"
    r = cli("pack", src, "-o", str(tmp_path / "b"), "--key", str(tmp_path / "k.key"))
    assert r.code == 2 and "is encrypted" in r.err
    r = cli("pack", src, "-o", str(tmp_path / "b"), "--key", str(tmp_path / "k.key"), "--passphrase-env", "SIGNING_PASS")
    assert r.code == 0, r.err


def test_unknown_signers_are_reported_not_counted(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    import subprocess
    import sys

    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    assert cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1])).code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "airgap", "verify", str(out), "--trust", str(keypair[1])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    stranger = load_public(other_keypair[1]).fingerprint
    assert f"ignored 1 signature(s) from keys not trusted here: {stranger[:16]}" in proc.stderr
    assert "1 of 1 required" in proc.stderr


def test_sign_refuses_a_manifest_edited_after_signing(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    """A second signer must never vouch for a bundle whose trusted signature no longer matches."""
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0], "--expires", "1h")
    m = out / "manifest.json"
    data = json.loads(m.read_bytes())
    data["expires"] = "2099-01-01T00:00:00Z"
    m.write_bytes((json.dumps(data, sort_keys=True, indent=2) + "\n").encode())
    r = cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    assert r.code == 5 and "does not match manifest.json" in r.err
    assert len(load_bundle(out).signatures) == 1
    # and the other signer alone cannot lift it: a trusted key's bad signature fails verify outright
    r = cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(other_keypair[1]))
    assert r.code == 5 and "no signature from a trusted key" in r.err


def test_sign_requires_trust(cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    r = cli("sign", str(out), "--key", str(other_keypair[0]))
    assert r.code == 2 and "--trust" in r.err


def test_trusted_signature_that_fails_verify_is_tampering(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    """Two trusted signers, one signature replaced by garbage: the bundle fails even at threshold 1."""
    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0])
    assert cli("sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1])).code == 0
    fp = load_public(other_keypair[1]).fingerprint
    (out / "signatures" / f"{fp}.sig").write_bytes(b"\0" * 64)
    r = cli("verify", str(out), "--trust", str(keypair[1]), "--trust", str(other_keypair[1]))
    assert r.code == 5 and f"signatures/{fp}.sig by a trusted key does not match" in r.err


def test_sign_shows_what_it_signs(
    cli: Cli, samples: Samples, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from airgap._cli import main

    out = tmp_path / "b"
    pack(cli, samples["docker"], out, keypair[0], "--expires", "30d")
    capsys.readouterr()
    assert main(["sign", str(out), "--key", str(other_keypair[0]), "--trust", str(keypair[1])]) == 0
    err = capsys.readouterr().err
    assert "expires " in err and samples["docker"].tag in err and samples["docker"].image_id in err
    assert f"already signed by {load_public(keypair[1]).fingerprint}" in err
