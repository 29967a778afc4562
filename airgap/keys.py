"""Ed25519 signing keys: generate, load, fingerprint.

Private keys are PKCS#8 PEM (encrypted when a passphrase is given), public keys SubjectPublicKeyInfo
PEM, so ``openssl`` reads both.  A key's fingerprint is the hex sha256 of its public key DER.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airgap._internal.fsutil import atomic_write
from airgap.errors import ConflictError, FormatError, TrustError, UsageError


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    fingerprint: str
    source: str


def fingerprint(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate(prefix: Path, passphrase: bytes | None) -> tuple[Path, Path, str]:
    """Write PREFIX.key (mode 0600) and PREFIX.pub; return their paths and the fingerprint."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise ConflictError(f"{path} already exists", hint="choose another --out prefix or move the old key away")
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(pub_path, pub_pem, mode=0o644)
    return key_path, pub_path, fingerprint(private.public_key())


def is_encrypted(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"ENCRYPTED" in fh.read(64)
    except OSError:
        return False  # load_private reports the problem


def load_private(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read key {path}: {e.strerror}", hint="pass the PREFIX.key written by 'airgap keygen'") from e
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:
        if passphrase is None:
            raise UsageError(f"key {path} is encrypted", hint="give its passphrase with --passphrase-env VAR") from e
        raise UsageError(f"key {path} is not encrypted but a passphrase was given") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = "check the passphrase" if passphrase else "pass the PREFIX.key written by 'airgap keygen'"
        raise FormatError(f"cannot load private key {path}: wrong passphrase or not a PEM key", hint=hint) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise FormatError(f"key {path} is not an Ed25519 key", hint="airgap signs with Ed25519 keys from 'airgap keygen'")
    return key


def load_public(path: Path) -> PublicKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read trusted key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise FormatError(
            f"trusted key {path} is not a PEM public key", hint="pass the PREFIX.pub written by 'airgap keygen'"
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise FormatError(f"trusted key {path} is not an Ed25519 public key")
    return PublicKey(key=key, fingerprint=fingerprint(key), source=str(path))


def load_trusted(paths: list[Path]) -> list[PublicKey]:
    """Load --trust arguments: .pub files, or directories whose *.pub files are all trusted."""
    keys: list[PublicKey] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise UsageError(f"trust directory {path} holds no .pub file")
            keys.extend(load_public(p) for p in found)
        else:
            keys.append(load_public(path))
    if not keys:
        raise TrustError("no trusted key given", hint="pass --trust KEY.pub (a bundle is never accepted without one)")
    return keys
