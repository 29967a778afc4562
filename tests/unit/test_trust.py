from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap.errors import FormatError, TrustError, UsageError
from airgap.trust import keys
from airgap.trust import policy as trust

MANIFEST = b'{"schema_version": 1}\n'


def pub(key: Ed25519PrivateKey, name: str = "k") -> keys.PublicKey:
    return keys.PublicKey(key.public_key(), keys.fingerprint(key.public_key()), name)


def test_valid_signature_counts() -> None:
    k = Ed25519PrivateKey.generate()
    fp, sig = trust.sign(MANIFEST, k)
    result = trust.verify_signatures(MANIFEST, {fp: sig}, [pub(k)])
    assert result.valid == (fp,)


def test_edited_manifest_rejected() -> None:
    k = Ed25519PrivateKey.generate()
    fp, sig = trust.sign(MANIFEST, k)
    with pytest.raises(TrustError, match=f"signatures/{fp}.sig by a trusted key does not match manifest.json"):
        trust.verify_signatures(MANIFEST.replace(b"1", b"2"), {fp: sig}, [pub(k)])


def test_signature_from_untrusted_key_ignored() -> None:
    trusted, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    fp, sig = trust.sign(MANIFEST, stranger)
    with pytest.raises(TrustError, match="no signature from a trusted key"):
        trust.verify_signatures(MANIFEST, {fp: sig}, [pub(trusted)])


def test_stranger_signature_renamed_to_trusted_fingerprint_rejected() -> None:
    trusted, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _, sig = trust.sign(MANIFEST, stranger)
    fp = keys.fingerprint(trusted.public_key())
    with pytest.raises(TrustError, match="does not match"):
        trust.verify_signatures(MANIFEST, {fp: sig}, [pub(trusted)])


def test_missing_signature_rejected() -> None:
    k = Ed25519PrivateKey.generate()
    with pytest.raises(TrustError, match="no signature"):
        trust.verify_signatures(MANIFEST, {}, [pub(k)])


def test_empty_trust_list_and_zero_threshold_fail_closed() -> None:
    k = Ed25519PrivateKey.generate()
    fp, sig = trust.sign(MANIFEST, k)
    with pytest.raises(TrustError):
        trust.verify_signatures(MANIFEST, {fp: sig}, [])
    with pytest.raises(UsageError):
        trust.verify_signatures(MANIFEST, {fp: sig}, [pub(k)], threshold=0)


def test_below_threshold_rejected() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    fp, sig = trust.sign(MANIFEST, a)
    with pytest.raises(TrustError, match="only 1 valid signature"):
        trust.verify_signatures(MANIFEST, {fp: sig}, [pub(a), pub(b)], threshold=2)


def test_encrypted_key_needs_right_passphrase(tmp_path: Path) -> None:
    key_path, _, _ = keys.generate(tmp_path / "enc", b"correct horse")
    assert b"ENCRYPTED" in key_path.read_bytes()
    assert key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="is encrypted"):
        keys.load_private(key_path, None)
    with pytest.raises(FormatError, match="wrong passphrase"):
        keys.load_private(key_path, b"wrong")
    assert isinstance(keys.load_private(key_path, b"correct horse"), Ed25519PrivateKey)


def test_non_key_file_is_format_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(FormatError, match=r"junk\.pub"):
        keys.load_public(junk)
