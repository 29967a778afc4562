"""Signing key pairs, and key files as other tools and older airgap versions wrote them."""

from __future__ import annotations

from pathlib import Path

from airgap.trust import keys

KeyPair = tuple[Path, Path]  # (private key file, public key file)

PASS = b"correct horse"

# An encrypted key exactly as airgap <= 0.x wrote it (cryptography's BestAvailableEncryption: PBES2,
# PBKDF2-HMAC-SHA256 with 2,048 iterations, AES-256-CBC); passphrase "correct horse".
OLD_PBKDF2_2048_KEY = b"""\
-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBC0dje0/mERNB0wrqns
0OTOAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQesDv3KA4LTU2+0Kv
BMwUyARAXvqW1tdorg3fHzHrNyVKoDIi0rt5L4WThLHZMQ/O8ZeDBmgKT+XekXCa
4cCa+bbCt8mr9S9MxiwVU2mw6A4dYA==
-----END ENCRYPTED PRIVATE KEY-----
"""
OLD_KEY_FINGERPRINT = "94edab6eccd59ad48db68ff804b3a9e88dfc9607ba861d328c0b726e96dec978"


def make_keypair(directory: Path, name: str) -> KeyPair:
    """An unencrypted Ed25519 key pair ``NAME.key`` and ``NAME.pub`` in ``directory``."""
    key, pub, _ = keys.generate(directory / name, None)
    return key, pub


def encrypted_key(directory: Path) -> tuple[Path, Path, str]:
    """A key encrypted with :data:`PASS` as airgap writes it today: key file, public key file, fingerprint."""
    return keys.generate(directory / "signer", PASS)
