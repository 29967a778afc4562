"""Ed25519 signing keys: generate, load, fingerprint, and how well a key file's passphrase protects it.

Private keys are PKCS#8 PEM, public keys SubjectPublicKeyInfo PEM, so ``openssl`` reads both.  A key's
fingerprint is the hex sha256 of its public key DER.

A signing key is named by ``--key`` text: a key file, or a key on a PKCS#11 token (``pkcs11:token=...;
object=...``, :mod:`airgap.trust.pkcs11`).  :class:`SigningKey` is that text checked once, with what
unlocks it; :func:`open_signer` is the one way to a :class:`Signer` for either, so pack, sign and signed
receipts never ask which kind they hold.

An encrypted private key is a PKCS#8 EncryptedPrivateKeyInfo with PBES2: scrypt (N=2^14, r=8, p=5, the
OWASP minimum; N=2^14 with r=8 is the most memory OpenSSL allows itself, 32 MiB, when it reads a key)
and AES-256-CBC.  cryptography's ``BestAvailableEncryption`` does not let us choose the KDF (it wrote
PBKDF2 with 2,048 iterations, about a thousand times cheaper to guess), so the DER is built here.  Keys
written by older airgap versions still load; :func:`protection` tells how costly a key file's passphrase
is to guess, so the CLI can warn about weak ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from airgap._internal.util.fsutil import atomic_write, read_capped
from airgap.errors import ConflictError, EnvironmentProblem, Error, FormatError, IntegrityError, TrustError, UsageError
from airgap.trust import pkcs11

# scrypt work factor for new keys: 16 MiB per guess, 5 passes (OWASP: N=2^14, r=8, p=5)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 5
# below these a key file's passphrase counts as weak (cheap to guess offline if the file is stolen)
_MIN_SCRYPT_COST = SCRYPT_N * SCRYPT_R * SCRYPT_P
_MIN_PBKDF2_ITERATIONS = {"sha1": 1_300_000, "sha224": 600_000, "sha256": 600_000, "sha384": 210_000, "sha512": 210_000}
# above these a key file is damaged (or hostile): deriving the key would take hours or all memory
_MAX_SCRYPT_MEMORY = 1 << 30
_MAX_SCRYPT_COST = 1 << 31
_MAX_PBKDF2_ITERATIONS = 100_000_000
MAX_KEY_FILE_BYTES = 64 << 10

_DAMAGED_HINT = "restore the key file from your backup, or pass the PREFIX.key written by 'airgap keygen'"


class WrongPassphrase(FormatError):
    """An encrypted key file whose structure reads, but that the passphrase given does not decrypt."""


def key_prefix(out: Path) -> Path:
    """``keygen --out`` as the prefix of the pair: ``k``, or ``k.key`` / ``k.pub`` naming one of its files,
    writes ``k.key`` and ``k.pub`` (never ``k.key.key``)."""
    return out.with_suffix("") if out.suffix in (".key", ".pub") and out.stem else out


_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_HMAC_OIDS = {
    "1.2.840.113549.2.7": "sha1",
    "1.2.840.113549.2.8": "sha224",
    "1.2.840.113549.2.9": "sha256",
    "1.2.840.113549.2.10": "sha384",
    "1.2.840.113549.2.11": "sha512",
}
_CIPHER_OIDS = {  # PBES2 encryption schemes cryptography decrypts: name, key length
    "2.16.840.1.101.3.4.1.2": ("aes-128-cbc", 16),
    "2.16.840.1.101.3.4.1.22": ("aes-192-cbc", 24),
    _OID_AES256_CBC: ("aes-256-cbc", 32),
    "1.2.840.113549.3.7": ("des-ede3-cbc", 24),
}

_SEQUENCE, _INTEGER, _OCTET_STRING, _OID, _NULL = 0x30, 0x02, 0x04, 0x06, 0x05
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key, its fingerprint (SHA-256 of the DER key) and the file it came from."""

    key: Ed25519PublicKey
    fingerprint: str
    source: str


@dataclass(frozen=True)
class KeyProtection:
    """How a private key file is protected: its KDF and that KDF's parameters."""

    encrypted: bool
    kdf: str  # "none", "scrypt", "pbkdf2-hmac-sha256" (or -sha1, ...), or "other <oid>" (PBES1 and the like)
    cipher: str = ""
    iterations: int = 0  # PBKDF2
    scrypt_n: int = 0
    scrypt_r: int = 0
    scrypt_p: int = 0

    @property
    def weak(self) -> bool:
        """An encrypted key whose passphrase is cheap to guess (below OWASP's 2023+ work factors)."""
        if not self.encrypted:
            return False  # unencrypted on purpose (--no-passphrase): nothing to guess
        if self.kdf == "scrypt":
            return self.scrypt_n * self.scrypt_r * self.scrypt_p < _MIN_SCRYPT_COST
        if self.kdf.startswith("pbkdf2-hmac-"):
            return self.iterations < _MIN_PBKDF2_ITERATIONS[self.kdf.removeprefix("pbkdf2-hmac-")]
        return True  # PBES1 and other legacy schemes

    def describe(self) -> str:
        if not self.encrypted:
            return "not encrypted"
        if self.kdf == "scrypt":
            return f"scrypt N={self.scrypt_n} r={self.scrypt_r} p={self.scrypt_p}, {self.cipher}"
        if self.kdf.startswith("pbkdf2-"):
            return f"{self.kdf} with {self.iterations:,} iterations, {self.cipher}"
        return f"legacy scheme {self.kdf.removeprefix('other ')}"


class Signer(Protocol):
    """An Ed25519 signing key wherever it lives: an ``Ed25519PrivateKey`` from a file, or a key on a token."""

    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature over DATA (deterministic, RFC 8032)."""
        ...


@dataclass(frozen=True)
class SigningKey:
    """What ``--key`` names, checked when made: a key file (with its passphrase), or a key on a PKCS#11 token
    (with its module and a source of its PIN).  A bad URI, or a token's option given for a file, fails here."""

    text: str  # a key file's path, or a pkcs11: URI
    passphrase: bytes | None = None  # a key file's
    pkcs11_module: str | None = None  # a token's module (else the URI's module-path, else $AIRGAP_PKCS11_MODULE)
    pin: pkcs11.PinSource | None = field(default=None, compare=False, repr=False)  # a token's user PIN, on demand
    uri: pkcs11.TokenURI | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not pkcs11.is_uri(self.text):
            if self.pkcs11_module:
                raise UsageError(
                    "--pkcs11-module is for a key on a token", hint="name the key as --key pkcs11:token=...;object=..."
                )
            if self.pin is not None:
                raise UsageError("a PIN is for a key on a token", hint="a key file takes --passphrase-env VAR")
            if not self.text:
                raise UsageError("--key names no key", hint="pass the PREFIX.key written by 'airgap keygen', or a pkcs11: URI")
            return
        if self.passphrase:
            raise UsageError(
                "a passphrase is for a key file", hint="a key on a token takes its PIN from --pin-env VAR or the prompt"
            )
        object.__setattr__(self, "uri", pkcs11.parse_uri(self.text))

    @classmethod
    def of(cls, key: SigningKey | Path) -> SigningKey:
        """KEY itself, or an unencrypted key file at KEY."""
        return key if isinstance(key, SigningKey) else cls(str(key))

    def __str__(self) -> str:
        return self.text


def is_token_key(text: str) -> bool:
    """Whether ``--key`` text names a key on a PKCS#11 token (a ``pkcs11:`` URI) rather than a key file."""
    return pkcs11.is_uri(text)


@contextmanager
def open_signer(key: SigningKey | Path) -> Iterator[Signer]:
    """The signer KEY names, usable for the block: a key file is loaded (and its passphrase checked); a key on
    a token is found, logged in to and checked to be Ed25519, and its session closed after the block."""
    key = SigningKey.of(key)
    if key.uri is None:
        yield load_private(Path(key.text), key.passphrase)
        return
    with pkcs11.open_signer(key.uri, key.pkcs11_module, key.pin) as signer:
        yield signer


def generate_on_token(prefix: Path, key: SigningKey) -> tuple[Path, str]:
    """Make an Ed25519 pair on the token KEY names (its ``object=`` labels it) and write only PREFIX.pub;
    return its path and the fingerprint.  The private key never leaves the token."""
    if key.uri is None:
        raise UsageError("--pkcs11 takes a pkcs11: URI", hint="e.g. --pkcs11 'pkcs11:token=LABEL;object=release-2027'")
    pub_path = Path(f"{key_prefix(prefix)}.pub")
    if pub_path.exists():
        raise ConflictError(f"{pub_path} already exists", hint="choose another --out prefix or move the old key away")
    public = pkcs11.generate(key.uri, key.pkcs11_module, key.pin)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        atomic_write(pub_path, pem, mode=0o644)
    except Error as e:
        label = key.uri.object
        e.with_hint(f"the key is on the token: read its public key with pkcs11-tool --read-object --type pubkey --label {label}")
        raise
    return pub_path, fingerprint(public)


def fingerprint(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate(prefix: Path, passphrase: bytes | None) -> tuple[Path, Path, str]:
    """Write PREFIX.key (mode 0600) and PREFIX.pub; return their paths and the fingerprint."""
    prefix = key_prefix(prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise ConflictError(f"{path} already exists", hint="choose another --out prefix or move the old key away")
    private = Ed25519PrivateKey.generate()
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, private_pem(private, passphrase), mode=0o600)
    atomic_write(pub_path, pub_pem, mode=0o644)
    return key_path, pub_path, fingerprint(private.public_key())


def private_pem(private: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of the key: encrypted (PBES2, scrypt, AES-256-CBC) when a passphrase is given."""
    plain = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if not passphrase:
        return _pem("PRIVATE KEY", plain)
    salt, iv = os.urandom(16), os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    kdf = _seq(_oid(_OID_SCRYPT), _seq(_der(_OCTET_STRING, salt), _int(SCRYPT_N), _int(SCRYPT_R), _int(SCRYPT_P), _int(32)))
    scheme = _seq(_oid(_OID_AES256_CBC), _der(_OCTET_STRING, iv))
    info = _seq(_seq(_oid(_OID_PBES2), _seq(kdf, scheme)), _der(_OCTET_STRING, encrypted))
    return _pem("ENCRYPTED PRIVATE KEY", info)


def is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in _read_key_file(path)[:64]
    except (UsageError, FormatError):
        return False  # load_private reports the problem


def _read_file(path: Path, what: str, hint: str) -> bytes:
    """A key file's bytes: a regular file (never a FIFO or device, which would block), at most
    MAX_KEY_FILE_BYTES."""
    try:
        return read_capped(path, f"{what} {path}", MAX_KEY_FILE_BYTES)
    except IntegrityError as e:  # missing, a link's target, not a regular file: the operator's input, not a bundle
        raise UsageError(f"cannot read {what} {path}: {e.message.removeprefix(f'{what} {path} ')}", hint=hint) from e
    except FormatError as e:
        raise FormatError(f"{what} file {path} is damaged or not a key (larger than any key)", hint=_DAMAGED_HINT) from e
    except EnvironmentProblem as e:
        raise UsageError(e.message, hint=hint) from e


def protection(path: Path) -> KeyProtection:
    """How the private key file at PATH is protected (no passphrase needed); FormatError if it is no key."""
    return _protection(_read_key_file(path), path)


def weak_key_warning(path: Path) -> str | None:
    """A warning line for the CLI when PATH is an encrypted key whose passphrase is cheap to guess, else None."""
    try:
        prot = protection(path)
    except (FormatError, UsageError):
        return None  # load_private reports the problem
    if not prot.weak:
        return None
    q = shlex.quote(str(path))
    return (
        f"warning: key {path} is protected by {prot.describe()}: its passphrase is cheap to guess if the file is "
        f"stolen; re-encrypt it with scrypt: (umask 077 && openssl pkcs8 -topk8 -scrypt -scrypt_p {SCRYPT_P} -in {q} "
        f"-passin env:VAR -passout env:VAR -out {q}.new) && mv {q}.new {q}"
    )


def load_private(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``, decrypted with ``passphrase``; UsageError or FormatError naming the file otherwise."""
    data = _read_key_file(path)
    prot = _protection(data, path)
    if prot.encrypted and not passphrase:
        raise UsageError(f"key {path} is encrypted", hint="give its passphrase with --passphrase-env VAR")
    if not prot.encrypted and passphrase:
        raise UsageError(f"key {path} is not encrypted but a passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if prot.encrypted else None)
    except UnsupportedAlgorithm as e:
        raise FormatError(
            f"key file {path} uses an algorithm or encryption this airgap cannot read",
            hint="pass the PREFIX.key written by 'airgap keygen' (Ed25519, PKCS#8 PEM)",
        ) from e
    except (ValueError, TypeError) as e:
        if prot.encrypted:
            # the structure parsed above, so what fails is the decryption: the passphrase
            raise WrongPassphrase(
                f"cannot load private key {path}: wrong passphrase",
                hint="check the passphrase; if it is right, the key file is damaged: restore it from your backup",
            ) from e
        raise FormatError(f"key file {path} is damaged or not a private key", hint=_DAMAGED_HINT) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise FormatError(f"key {path} is not an Ed25519 key", hint="airgap signs with Ed25519 keys from 'airgap keygen'")
    return key


def load_public(path: Path) -> PublicKey:
    data = _read_file(path, "trusted key", "pass the signer's .pub file, or a directory of them")
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


# -- key files ----------------------------------------------------------------------------------


def _read_key_file(path: Path) -> bytes:
    return _read_file(path, "key", "pass the PREFIX.key written by 'airgap keygen'")


def _protection(data: bytes, path: Path) -> KeyProtection:
    """Parse the first PEM block's structure (not its secret): refuse a damaged file before any passphrase."""
    m = _PEM_RE.search(data)
    if m is None:
        raise FormatError(f"key file {path} is damaged or not a private key (no complete PEM block)", hint=_DAMAGED_HINT)
    label = m.group(1)
    if label not in (b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"):
        # another PEM private key format (e.g. EC PRIVATE KEY, legacy-encrypted): cryptography decides
        return KeyProtection(encrypted=b"ENCRYPTED" in m.group(2)[:200], kdf="other (not PKCS#8)")
    try:
        der = base64.b64decode(b"".join(m.group(2).split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"key file {path} is damaged or not a private key (bad base64)", hint=_DAMAGED_HINT) from e
    if label == b"PRIVATE KEY":
        return KeyProtection(encrypted=False, kdf="none")
    try:
        return _parse_encrypted_info(der)
    except _Malformed as e:
        raise FormatError(f"key file {path} is damaged or not a private key ({e})", hint=_DAMAGED_HINT) from e


def _parse_encrypted_info(der: bytes) -> KeyProtection:
    """EncryptedPrivateKeyInfo (RFC 5958) with PBES2 (RFC 8018) and scrypt (RFC 7914) or PBKDF2."""
    algorithm, encrypted = _items(_whole(der, _SEQUENCE), _SEQUENCE, _OCTET_STRING)
    if not encrypted or len(encrypted) % 8:
        raise _Malformed("encrypted data of a bad length")
    alg_items = _items_any(algorithm)
    oid = _parse_oid(_expect(alg_items[0], _OID))
    if oid != _OID_PBES2:
        return KeyProtection(encrypted=True, kdf=f"other {oid}")
    if len(alg_items) != 2:
        raise _Malformed("PBES2 without parameters")
    kdf_alg, scheme = _items(_expect(alg_items[1], _SEQUENCE), _SEQUENCE, _SEQUENCE)
    scheme_items = _items_any(scheme)
    scheme_oid = _parse_oid(_expect(scheme_items[0], _OID))
    if scheme_oid not in _CIPHER_OIDS:
        return KeyProtection(encrypted=True, kdf=f"other {scheme_oid}")
    cipher, key_length = _CIPHER_OIDS[scheme_oid]
    if len(scheme_items) != 2 or len(_expect(scheme_items[1], _OCTET_STRING)) != (8 if cipher == "des-ede3-cbc" else 16):
        raise _Malformed("the cipher's IV is missing or has a bad length")
    kdf_items = _items_any(kdf_alg)
    kdf_oid = _parse_oid(_expect(kdf_items[0], _OID))
    if len(kdf_items) != 2:
        raise _Malformed("the KDF has no parameters")
    params = _items_any(_expect(kdf_items[1], _SEQUENCE))
    if kdf_oid == _OID_SCRYPT:
        if len(params) not in (4, 5):
            raise _Malformed("scrypt parameters of a bad shape")
        salt = _expect(params[0], _OCTET_STRING)
        n, r, p = (_parse_int(_expect(x, _INTEGER)) for x in params[1:4])
        if len(params) == 5 and _parse_int(_expect(params[4], _INTEGER)) != key_length:
            raise _Malformed("scrypt key length does not fit the cipher")
        if not salt or n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise _Malformed("scrypt parameters out of range")
        if 128 * r * n > _MAX_SCRYPT_MEMORY or n * r * p > _MAX_SCRYPT_COST:
            raise _Malformed(f"scrypt parameters N={n} r={r} p={p} beyond any airgap accepts")
        return KeyProtection(encrypted=True, kdf="scrypt", cipher=cipher, scrypt_n=n, scrypt_r=r, scrypt_p=p)
    if kdf_oid == _OID_PBKDF2:
        if not 2 <= len(params) <= 4:
            raise _Malformed("PBKDF2 parameters of a bad shape")
        salt = _expect(params[0], _OCTET_STRING)
        iterations = _parse_int(_expect(params[1], _INTEGER))
        rest = list(params[2:])
        if rest and rest[0][0] == _INTEGER and _parse_int(rest.pop(0)[1]) != key_length:
            raise _Malformed("PBKDF2 key length does not fit the cipher")
        digest = "sha1"  # RFC 8018 default PRF
        if rest:
            prf = _items_any(_expect(rest.pop(0), _SEQUENCE))
            prf_oid = _parse_oid(_expect(prf[0], _OID))
            if prf_oid not in _HMAC_OIDS:
                return KeyProtection(encrypted=True, kdf=f"other {prf_oid}")
            digest = _HMAC_OIDS[prf_oid]
        if rest or not salt or iterations < 1:
            raise _Malformed("PBKDF2 parameters out of range")
        if iterations > _MAX_PBKDF2_ITERATIONS:
            raise _Malformed(f"PBKDF2 with {iterations} iterations is beyond any airgap accepts")
        return KeyProtection(encrypted=True, kdf=f"pbkdf2-hmac-{digest}", cipher=cipher, iterations=iterations)
    return KeyProtection(encrypted=True, kdf=f"other {kdf_oid}")


# -- a minimal DER writer and reader (only what PKCS#8 PBES2 needs) -----------------------------


class _Malformed(Exception):
    pass


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _seq(*items: bytes) -> bytes:
    return _der(_SEQUENCE, b"".join(items))


def _int(value: int) -> bytes:
    return _der(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    arcs = [int(x) for x in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(_OID, bytes(body))


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode("ascii")


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One DER element at POS: tag, contents, position after it (definite lengths only)."""
    if pos + 2 > len(data):
        raise _Malformed("truncated")
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or pos + k > len(data):
            raise _Malformed("bad length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise _Malformed("truncated")
    return tag, data[pos : pos + n], pos + n


def _whole(data: bytes, tag: int) -> bytes:
    got, body, end = _tlv(data, 0)
    if got != tag or end != len(data):
        raise _Malformed("not a DER structure of the expected kind" if got != tag else "trailing bytes")
    return body


def _items_any(body: bytes) -> list[tuple[int, bytes]]:
    items, pos = [], 0
    while pos < len(body):
        tag, contents, pos = _tlv(body, pos)
        items.append((tag, contents))
    if not items:
        raise _Malformed("empty structure")
    return items


def _items(body: bytes, *tags: int) -> list[bytes]:
    items = _items_any(body)
    if len(items) != len(tags):
        raise _Malformed("structure of a bad shape")
    return [_expect(item, tag) for item, tag in zip(items, tags, strict=True)]


def _expect(item: tuple[int, bytes], tag: int) -> bytes:
    if item[0] != tag:
        raise _Malformed(f"found tag {item[0]:#x} where {tag:#x} belongs")
    return item[1]


def _parse_int(body: bytes) -> int:
    if not body or body[0] & 0x80:
        raise _Malformed("a negative or empty integer")
    if len(body) > 9:
        raise _Malformed("an integer out of range")
    return int.from_bytes(body, "big")


def _parse_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80 or len(body) > 64:
        raise _Malformed("a bad object identifier")
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])
