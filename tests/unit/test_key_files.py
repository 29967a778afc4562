"""Private key files: a stolen encrypted key must be costly to guess, cryptography must read it, keys
written by earlier versions must still load, and a damaged file must say so (openssl's side:
``integration/test_key_files.py``)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap.errors import ExitCode, FormatError, UsageError
from airgap.trust import keys
from tests.helpers.cli import Cli
from tests.helpers.keys import OLD_KEY_FINGERPRINT, OLD_PBKDF2_2048_KEY, PASS, KeyPair, encrypted_key

# DER contents of the object identifiers (as openssl asn1parse names them)
OID_PBES2 = bytes.fromhex("2a864886f70d01050d")
OID_SCRYPT = bytes.fromhex("2b06010401da47040b")
OID_AES_256_CBC = bytes.fromhex("60864801650304012a")


def _der_tree(data: bytes) -> list[Any]:
    """A DER walk independent of airgap's: constructed elements become lists, primitives (tag, bytes)."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        body = data[pos : pos + n]
        assert len(body) == n, "truncated DER"
        pos += n
        out.append(_der_tree(body) if tag & 0x20 else (tag, body))
    return out


def _pem_der(pem: bytes) -> bytes:
    lines = pem.decode().strip().splitlines()
    assert lines[0] == "-----BEGIN ENCRYPTED PRIVATE KEY-----" and lines[-1] == "-----END ENCRYPTED PRIVATE KEY-----"
    return base64.b64decode("".join(lines[1:-1]))


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return encrypted_key(tmp_path_factory.mktemp("enc"))


def _load_error(path: Path, passphrase: bytes | None) -> FormatError:
    with pytest.raises(FormatError) as info:
        keys.load_private(path, passphrase)
    assert info.value.exit_code == ExitCode.FORMAT
    return info.value


def test_key_file_kdf_is_costly(encrypted: tuple[Path, Path, str]) -> None:
    """PBES2 with scrypt, N=2^14 r=8 p=5 (OWASP's minimum; 16 MiB per guess) and AES-256-CBC."""
    ((algorithm, data),) = _der_tree(_pem_der(encrypted[0].read_bytes()))
    (oid_pbes2, (kdf, scheme)) = algorithm
    assert oid_pbes2 == (0x06, OID_PBES2)
    (oid_kdf, (salt, n, r, p, key_length)) = kdf
    assert oid_kdf == (0x06, OID_SCRYPT)
    assert salt[0] == 0x04 and len(salt[1]) >= 16
    params = {name: int.from_bytes(v[1], "big") for name, v in (("n", n), ("r", r), ("p", p), ("len", key_length))}
    assert params == {"n": 1 << 14, "r": 8, "p": 5, "len": 32}
    assert params["n"] * params["r"] * params["p"] >= (1 << 14) * 8 * 5
    assert 128 * params["r"] * params["n"] <= 32 << 20  # what openssl allows itself when reading a key
    (oid_cipher, iv) = scheme
    assert oid_cipher == (0x06, OID_AES_256_CBC) and iv[0] == 0x04 and len(iv[1]) == 16
    assert data[0] == 0x04 and len(data[1]) == 64  # the 48-byte PKCS#8 key, padded
    prot = keys.protection(encrypted[0])
    assert (prot.kdf, prot.scrypt_n, prot.scrypt_r, prot.scrypt_p, prot.weak) == ("scrypt", 1 << 14, 8, 5, False)
    assert keys.weak_key_warning(encrypted[0]) is None


def test_two_keys_never_share_salt_or_iv(tmp_path: Path) -> None:
    one, _, _ = keys.generate(tmp_path / "one", PASS)
    two, _, _ = keys.generate(tmp_path / "two", PASS)
    (alg1, _), (alg2, _) = _der_tree(_pem_der(one.read_bytes()))[0], _der_tree(_pem_der(two.read_bytes()))[0]
    assert alg1[1][0][1][0] != alg2[1][0][1][0]  # salt
    assert alg1[1][1][1] != alg2[1][1][1]  # IV


def test_key_readable_by_cryptography(encrypted: tuple[Path, Path, str]) -> None:
    key_path, _, fp = encrypted
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=PASS)
    assert isinstance(key, Ed25519PrivateKey) and keys.fingerprint(key.public_key()) == fp
    assert keys.fingerprint(keys.load_private(key_path, PASS).public_key()) == fp


def test_old_pbkdf2_2048_key_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "old.key"
    old.write_bytes(OLD_PBKDF2_2048_KEY)
    assert keys.fingerprint(keys.load_private(old, PASS).public_key()) == OLD_KEY_FINGERPRINT
    prot = keys.protection(old)
    assert (prot.kdf, prot.iterations, prot.cipher, prot.weak) == ("pbkdf2-hmac-sha256", 2048, "aes-256-cbc", True)
    warning = keys.weak_key_warning(old)
    assert warning is not None and str(old) in warning and "2,048 iterations" in warning and "openssl pkcs8" in warning
    assert "wrong passphrase" in _load_error(old, b"wrong").message


def test_wrong_passphrase_says_so(encrypted: tuple[Path, Path, str]) -> None:
    e = _load_error(encrypted[0], b"not it")
    assert "wrong passphrase" in e.message and str(encrypted[0]) in e.message
    assert "check the passphrase" in (e.hint or "")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda pem: pem[: len(pem) // 2], id="cut-in-half"),
        pytest.param(lambda pem: pem.rsplit(b"-----END", 1)[0], id="end-line-lost"),
        pytest.param(lambda pem: pem[:20], id="only-the-start"),
        pytest.param(lambda pem: b"", id="empty"),
        pytest.param(lambda pem: pem.replace(b"\n", b"\n!", 1), id="not-base64"),
        pytest.param(lambda pem: _rewrap(_pem_der(pem)[:-10]), id="der-truncated-inside"),
        pytest.param(lambda pem: _rewrap(b"\x31" + _pem_der(pem)[1:]), id="der-wrong-tag"),
    ],
)
def test_truncated_key_says_damaged(encrypted: tuple[Path, Path, str], tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    bad = tmp_path / "signer.key"
    bad.write_bytes(damage(encrypted[0].read_bytes()))
    e = _load_error(bad, PASS)
    assert f"key file {bad} is damaged or not a private key" in e.message
    assert "passphrase" not in e.message and "passphrase" not in (e.hint or "")
    with pytest.raises(FormatError, match="damaged"):
        keys.protection(bad)


def _rewrap(der: bytes) -> bytes:
    text = base64.b64encode(der).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return ("\n".join(["-----BEGIN ENCRYPTED PRIVATE KEY-----", *lines, "-----END ENCRYPTED PRIVATE KEY-----"]) + "\n").encode()


def test_truncated_key_says_damaged_at_the_cli(
    cli: Cli, bundle: Path, keypair: KeyPair, encrypted: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "auditor.key"
    bad.write_bytes(encrypted[0].read_bytes()[:100])
    monkeypatch.setenv("AUDITOR_PASS", PASS.decode())
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(tmp_path / "r.json"),
            "--receipt-key", str(bad), "--passphrase-env", "AUDITOR_PASS")  # fmt: skip
    assert r.code == 3
    assert f"key file {bad} is damaged" in r.err and "passphrase" not in r.err


def test_damaged_kdf_parameters_refused_before_deriving(tmp_path: Path) -> None:
    """A flipped bit in N or the iteration count must not make loading take hours or all memory."""
    seq, integer = keys._seq, keys._int

    def octets(b: bytes) -> bytes:
        return keys._der(0x04, b)

    scheme = seq(keys._oid(keys._OID_AES256_CBC), octets(b"\0" * 16))
    cases = {
        "scrypt": seq(keys._oid(keys._OID_SCRYPT), seq(octets(b"s" * 16), integer(1 << 30), integer(8), integer(1))),
        "pbkdf2": seq(keys._oid(keys._OID_PBKDF2), seq(octets(b"s" * 16), integer(2**31 - 1))),
    }
    for name, kdf in cases.items():
        path = tmp_path / f"{name}.key"
        path.write_bytes(
            keys._pem("ENCRYPTED PRIVATE KEY", seq(seq(keys._oid(keys._OID_PBES2), seq(kdf, scheme)), octets(b"\0" * 64)))
        )
        started = time.monotonic()
        e = _load_error(path, PASS)
        assert time.monotonic() - started < 5
        assert "damaged" in e.message and "beyond any airgap accepts" in e.message, e.message


def test_unencrypted_key_with_a_passphrase_is_usage_error(tmp_path: Path) -> None:
    key_path, _, _ = keys.generate(tmp_path / "plain", None)
    assert not keys.protection(key_path).encrypted and not keys.protection(key_path).weak
    with pytest.raises(UsageError, match="not encrypted"):
        keys.load_private(key_path, PASS)
    assert isinstance(keys.load_private(key_path, None), Ed25519PrivateKey)


def test_encrypted_key_without_passphrase_is_usage_error(encrypted: tuple[Path, Path, str]) -> None:
    with pytest.raises(UsageError, match="is encrypted"):
        keys.load_private(encrypted[0], None)
