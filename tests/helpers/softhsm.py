"""A private SoftHSM2 (Debian's ``softhsm2``) for a test session: its own token directory and configuration
under a temporary directory, pointed at by ``SOFTHSM2_CONF``, never the host's tokens.

:meth:`SoftHSM.init_token` makes a token with ``softhsm2-util --init-token``, as an operator would, and
remembers the directory SoftHSM2 keeps it in, so a test can take the token away mid-operation
(:meth:`SoftHSM.remove`: the directory is deleted, the module then answers for the key's handle with
CKR_OBJECT_HANDLE_INVALID, as for a token pulled out).  :meth:`SoftHSM.add_key` puts keys on a token
the way another tool would (an Ed448 or P-256 or RSA key, or an Ed25519 pair whose public object belongs
to another key), for the cases airgap must refuse.  Under CI a missing SoftHSM2 fails the tests.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pkcs11 import Session

MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"/usr/lib/{platform.machine()}-linux-gnu/softhsm/libsofthsm2.so",
)
USER_PIN = "4711-airgap"
SO_PIN = "so-4711-airgap"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run every PKCS#11 test: .ci/run installs softhsm2)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Token:
    label: str
    directory: Path  # where SoftHSM2 keeps it: deleting it takes the token away

    def uri(self, obj: str | None = None, **more: str) -> str:
        parts = [f"token={self.label}"] + ([f"object={obj}"] if obj is not None else [])
        parts += [f"{k.replace('_', '-')}={v}" for k, v in more.items()]
        return "pkcs11:" + ";".join(parts)


class SoftHSM:
    def __init__(self, root: Path) -> None:
        module = next((m for m in MODULES if Path(m).is_file()), None)
        if module is None or shutil.which("softhsm2-util") is None:
            _unavailable("SoftHSM2 is not installed (Debian: apt-get install softhsm2)")
        assert module is not None
        self.module = module
        self.tokens = root / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")

    def util(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SOFTHSM2_CONF": str(self.conf)}
        done = subprocess.run(["softhsm2-util", *args], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        return done

    def init_token(self, label: str) -> Token:
        """A fresh token LABEL with the user PIN :data:`USER_PIN`."""
        before = set(self.tokens.iterdir())
        self.util("--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN)
        (directory,) = set(self.tokens.iterdir()) - before
        return Token(label, directory)

    def remove(self, token: Token) -> None:
        """Take TOKEN away: its directory goes, so the module no longer finds its objects."""
        shutil.rmtree(token.directory)

    @contextmanager
    def session(self, token: Token) -> Iterator[Session]:
        """A logged-in read/write session on TOKEN, through the binding airgap uses (module finalized after)."""
        import pkcs11

        lib = pkcs11.lib(self.module)
        try:
            with lib.get_token(token_label=token.label).open(rw=True, user_pin=USER_PIN) as session:
                yield session
        finally:
            lib.finalize()

    def add_key(self, token: Token, label: str, kind: str) -> None:
        """Put a key pair LABEL of KIND on TOKEN: "ed448", "p256", "rsa", "always-authenticate" (Ed25519, wanting
        the PIN again for each signature, as a smart card's signing key does), or "mismatched" (an Ed25519
        private key whose public object, same id and label, holds another key's point), or "no-public" (an
        Ed25519 private key alone)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from pkcs11 import Attribute, KeyType, ObjectClass
        from pkcs11.util.ec import encode_named_curve_parameters

        key_id = label.encode()
        with self.session(token) as session:
            if kind == "rsa":
                session.generate_keypair(KeyType.RSA, 2048, store=True, label=label, id=key_id)
                return
            if kind == "p256":
                params = encode_named_curve_parameters("secp256r1")
                session.generate_keypair(
                    KeyType.EC, store=True, label=label, id=key_id, public_template={Attribute.EC_PARAMS: params}
                )
                return
            ed = bytes.fromhex("06032b6571" if kind == "ed448" else "06032b6570")
            public, _ = session.generate_keypair(
                KeyType.EC_EDWARDS,
                store=True,
                label=label,
                id=key_id,
                public_template={Attribute.EC_PARAMS: ed},
                private_template={Attribute.ALWAYS_AUTHENTICATE: kind == "always-authenticate"},
            )
            if kind in ("mismatched", "no-public"):
                public.destroy()
            if kind == "mismatched":
                other = (
                    Ed25519PrivateKey.generate()
                    .public_key()
                    .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                )
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                        Attribute.TOKEN: True,
                        Attribute.LABEL: label,
                        Attribute.ID: key_id,
                        Attribute.EC_PARAMS: ed,
                        Attribute.EC_POINT: b"\x04\x20" + other,
                        Attribute.VERIFY: True,
                    }
                )


@contextmanager
def private_softhsm(root: Path) -> Iterator[SoftHSM]:
    """A SoftHSM2 of its own under ROOT, with SOFTHSM2_CONF pointing at it for the block."""
    hsm = SoftHSM(root)
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    try:
        yield hsm
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
