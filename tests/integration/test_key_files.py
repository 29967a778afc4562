"""Private key files and openssl: openssl reads the keys airgap writes, the fix airgap prints for a weak key
works, and a key openssl encrypted loads (and is reported weak)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap.trust import keys
from tests.helpers.keys import OLD_KEY_FINGERPRINT, OLD_PBKDF2_2048_KEY, PASS, encrypted_key


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return encrypted_key(tmp_path_factory.mktemp("enc"))


@pytest.mark.tools
def test_key_readable_by_openssl(encrypted: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (.ci/run installs it)")
    key_path, pub_path, _ = encrypted
    monkeypatch.setenv("AIRGAP_TEST_PASS", PASS.decode())
    cmd = ["openssl", "pkey", "-in", str(key_path), "-passin", "env:AIRGAP_TEST_PASS", "-pubout"]
    done = subprocess.run(cmd, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == pub_path.read_bytes()
    monkeypatch.setenv("AIRGAP_TEST_PASS", "wrong")
    assert subprocess.run(cmd, capture_output=True, check=False).returncode != 0


@pytest.mark.tools
def test_weak_key_warning_fix_gives_a_costly_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command the warning prints re-encrypts an old key with scrypt at our work factor."""
    old = tmp_path / "old key.key"
    old.write_bytes(OLD_PBKDF2_2048_KEY)
    warning = keys.weak_key_warning(old)
    assert warning is not None
    command = warning.split("re-encrypt it with scrypt: ", 1)[1]
    monkeypatch.setenv("VAR", PASS.decode())
    done = subprocess.run(["sh", "-c", command], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not keys.protection(old).weak and keys.protection(old).kdf == "scrypt"
    assert keys.fingerprint(keys.load_private(old, PASS).public_key()) == OLD_KEY_FINGERPRINT
    assert old.stat().st_mode & 0o077 == 0


@pytest.mark.tools
def test_openssl_default_scrypt_key_loads_and_is_reported_weak(tmp_path: Path) -> None:
    plain, enc = tmp_path / "plain.pem", tmp_path / "enc.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(plain)], check=True, capture_output=True)
    cmd = ["openssl", "pkcs8", "-topk8", "-scrypt", "-in", str(plain), "-passout", "pass:x", "-out", str(enc)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert isinstance(keys.load_private(enc, b"x"), Ed25519PrivateKey)
    prot = keys.protection(enc)
    assert (prot.kdf, prot.scrypt_n, prot.scrypt_p, prot.weak) == ("scrypt", 1 << 14, 1, True)
