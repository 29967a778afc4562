"""Signing keys on a PKCS#11 token, against a private SoftHSM2: keygen on the token, sign and pack with it,
signed receipts, and what an auditor checks (airgap verify, openssl, installer/install.sh), then each
fault as one line and its documented exit code: wrong PIN, no such key, no such token, no or a wrong
module, a key that is not Ed25519, a token taken away while signing, a PIN written into the URI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap.errors import EnvironmentProblem, ExitCode, FormatError, UsageError
from airgap.trust import keys, pkcs11
from airgap.trust import policy as trust
from tests.helpers.cli import Cli, CliResult
from tests.helpers.keys import KeyPair
from tests.helpers.samples import Samples
from tests.helpers.softhsm import USER_PIN, SoftHSM, Token, private_softhsm
from tests.helpers.tools import openssl_verifies, run_sh

PIN_ENV = "AIRGAP_TEST_TOKEN_PIN"


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    with private_softhsm(tmp_path_factory.mktemp("softhsm")) as hsm:
        yield hsm


@pytest.fixture(scope="session")
def token(hsm: SoftHSM) -> Token:
    """A token with the key pair "release" made by airgap keygen --pkcs11, and keys of other kinds."""
    t = hsm.init_token("airgap-release")
    for kind in ("ed448", "p256", "rsa", "mismatched", "no-public", "always-authenticate"):
        hsm.add_key(t, kind, kind)
    return t


@pytest.fixture(scope="session")
def token_pub(hsm: SoftHSM, token: Token, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pub, _ = keys.generate_on_token(tmp_path_factory.mktemp("token-pub") / "release", _key(hsm, token.uri("release")))
    return pub


@pytest.fixture(autouse=True)
def _pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIN_ENV, USER_PIN)
    monkeypatch.delenv(pkcs11.MODULE_ENV, raising=False)


def _key(hsm: SoftHSM, uri: str, pin: str = USER_PIN) -> keys.SigningKey:
    return keys.SigningKey(uri, pkcs11_module=hsm.module, pin=lambda _label: pin)


def _token_args(hsm: SoftHSM, uri: str) -> list[str]:
    return ["--key", uri, "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV]


def _sig(bundle: Path, pub: Path) -> Path:
    return bundle / "signatures" / f"{keys.load_public(pub).fingerprint}.sig"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert "Traceback" not in err
    return lines[0]


# -- end to end -----------------------------------------------------------------------------------------------


def test_keygen_on_a_fresh_token_writes_only_the_public_key(cli: Cli, hsm: SoftHSM, tmp_path: Path) -> None:
    t = hsm.init_token("airgap-fresh")
    r = cli("keygen", "--pkcs11", t.uri("signer"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV, "--out", str(tmp_path / "signer"), "--json")  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["private_key"] == t.uri("signer") and out["public_key"] == str(tmp_path / "signer.pub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signer.pub"]  # nothing secret on disk
    pub = keys.load_public(tmp_path / "signer.pub")
    assert pub.fingerprint == out["fingerprint"]
    with keys.open_signer(_key(hsm, t.uri("signer"))) as signer:
        assert keys.fingerprint(signer.public_key()) == pub.fingerprint
        signature = signer.sign(b"data")
        assert signer.sign(b"data") == signature  # deterministic: pack's resume journal key stays the same
    pub.key.verify(signature, b"data")
    with keys.open_signer(_key(hsm, t.uri("signer"))) as again:  # and in the next session: an interrupted pack resumes
        assert again.sign(b"data") == signature
    with hsm.session(t) as session:  # the private key is sensitive and never extractable
        from pkcs11 import Attribute, ObjectClass

        (private,) = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "signer"})
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]


def test_keygen_never_replaces_a_key_on_the_token(cli: Cli, hsm: SoftHSM, token: Token, token_pub: Path, tmp_path: Path) -> None:
    r = cli("keygen", "--pkcs11", token.uri("release"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV, "--out", str(tmp_path / "again"))  # fmt: skip
    assert r.code == ExitCode.CONFLICT
    assert "already holds a key 'release'" in _one_error_line(r.err)
    assert not (tmp_path / "again.pub").exists()


def test_keygen_on_a_token_needs_a_label_and_takes_no_passphrase(cli: Cli, hsm: SoftHSM, token: Token, tmp_path: Path) -> None:
    r = cli("keygen", "--pkcs11", token.uri(), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV, "--out", str(tmp_path / "k"))
    assert r.code == ExitCode.USAGE and "object=" in _one_error_line(r.err)
    r = cli("keygen", "--pkcs11", token.uri("x"), "--no-passphrase", "--out", str(tmp_path / "k"))
    assert r.code == ExitCode.USAGE and "--no-passphrase" in _one_error_line(r.err)


@pytest.mark.tools
def test_token_signature_verifies_with_airgap_openssl_and_install_sh(
    cli: Cli, hsm: SoftHSM, token: Token, token_pub: Path, bundle: Path, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    """A bundle packed with a key file, signed again with the token's key: every verifier accepts the token's
    signature unchanged, alone and as the second of a threshold of two."""
    r = cli("sign", str(bundle), *_token_args(hsm, token.uri("release")), "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["fingerprint"] == keys.load_public(token_pub).fingerprint
    r = cli("verify", str(bundle), "--trust", str(token_pub))
    assert r.code == 0, r.err
    r = cli("verify", str(bundle), "--trust", str(token_pub), "--trust", str(keypair[1]), "--threshold", "2")
    assert r.code == 0, r.err
    assert openssl_verifies(token_pub, bundle / "manifest.json", _sig(bundle, token_pub))
    # install.sh checks signatures with openssl before it asks the engine anything: a docker that does not
    # answer stops it after the signature check (6), an untrusted signer before (5)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\necho 'engine not running here' >&2\nexit 1\n")
    (fake / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "AIRGAP_STATE": str(tmp_path / "state.json")}

    def install_sh(*trust_args: str) -> subprocess.CompletedProcess[str]:
        return run_sh(bundle, *trust_args, env=env, timeout=120)

    done = install_sh("--trust", str(token_pub), "--trust", str(keypair[1]), "--threshold", "2")
    assert done.returncode == 6 and "the Docker engine does not answer" in done.stderr, done.stderr
    done = install_sh("--trust", str(other_keypair[1]))
    assert done.returncode == 5, done.stderr


@pytest.mark.tools
def test_pack_signs_with_the_token(
    cli: Cli, hsm: SoftHSM, token: Token, token_pub: Path, samples: Samples, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    source = f"docker-archive:{samples['docker'].path}"
    r = cli("pack", source, "-o", str(out), *_token_args(hsm, token.uri("release")), "--part-size", "1MiB", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signer"] == keys.load_public(token_pub).fingerprint
    assert cli("verify", str(out), "--trust", str(token_pub)).code == 0
    assert openssl_verifies(token_pub, out / "manifest.json", _sig(out, token_pub))


@pytest.mark.tools
def test_receipt_signed_on_the_token_checks_with_openssl(
    cli: Cli, hsm: SoftHSM, token: Token, token_pub: Path, bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.json"
    args = ["--receipt-key", token.uri("release"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV]
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(receipt), *args)
    assert r.code == 0, r.err
    assert json.loads(receipt.read_bytes())["signed_by"] == keys.load_public(token_pub).fingerprint
    assert openssl_verifies(token_pub, receipt, Path(f"{receipt}.sig"))


def test_module_from_the_environment(
    cli: Cli, hsm: SoftHSM, token: Token, token_pub: Path, bundle: Path, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pkcs11.MODULE_ENV, hsm.module)
    r = cli("sign", str(bundle), "--key", token.uri("release"), "--pin-env", PIN_ENV, "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert _sig(bundle, token_pub).is_file()


# -- faults: one line, a documented exit code, no signature written ------------------------------------------


def _sign(cli: Cli, bundle: Path, keypair: KeyPair, uri: str, *more: str) -> CliResult:
    return cli("sign", str(bundle), "--key", uri, *more, "--trust", str(keypair[1]))


def test_wrong_pin_is_a_usage_error(
    cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PIN_ENV, "not-the-pin")
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.USAGE
    assert _one_error_line(r.err) == "error: wrong PIN for token 'airgap-release'"
    assert "not-the-pin" not in r.err
    assert sorted(p.name for p in (bundle / "signatures").iterdir()) == [f"{keys.load_public(keypair[1]).fingerprint}.sig"]


def test_no_pin_without_a_terminal_is_a_usage_error(cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pkcs11-module", hsm.module)
    assert r.code == ExitCode.USAGE and "needs its user PIN" in _one_error_line(r.err)


def test_missing_object_is_a_usage_error(cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(cli, bundle, keypair, token.uri("no-such-key"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.USAGE
    assert _one_error_line(r.err) == "error: no private key matches key 'no-such-key' on token 'airgap-release'"


def test_several_matching_keys_are_a_usage_error(cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(cli, bundle, keypair, token.uri(), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.USAGE and "private keys match" in _one_error_line(r.err)


def test_token_not_found_is_an_environment_error(cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(
        cli, bundle, keypair, "pkcs11:token=not-plugged-in;object=release", "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV
    )
    assert r.code == ExitCode.ENVIRONMENT
    line = _one_error_line(r.err)
    assert line.startswith("error: no token matches key 'release' on token 'not-plugged-in'") and "'airgap-release'" in line


def test_no_module_is_a_usage_error(cli: Cli, token: Token, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pin-env", PIN_ENV)
    assert r.code == ExitCode.USAGE
    assert _one_error_line(r.err) == "error: no PKCS#11 module for key 'release' on token 'airgap-release'"


def test_module_that_does_not_exist_is_an_environment_error(
    cli: Cli, token: Token, bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pkcs11-module", str(tmp_path / "nope.so"), "--pin-env", PIN_ENV)
    assert r.code == ExitCode.ENVIRONMENT
    assert _one_error_line(r.err) == f"error: PKCS#11 module {tmp_path / 'nope.so'} does not exist"


def test_library_that_is_not_a_pkcs11_module_is_an_environment_error(
    cli: Cli, token: Token, bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    import zstandard.backend_c  # type: ignore[import-not-found]

    library = zstandard.backend_c.__file__  # a real shared library, without C_GetFunctionList
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pkcs11-module", library, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.ENVIRONMENT
    assert (
        _one_error_line(r.err)
        == f"error: cannot load PKCS#11 module {library}: it has no C_GetFunctionList: not a PKCS#11 module"
    )
    text = tmp_path / "module.so"
    text.write_text("not a library\n")
    r = _sign(cli, bundle, keypair, token.uri("release"), "--pkcs11-module", str(text), "--pin-env", PIN_ENV)
    assert r.code == ExitCode.ENVIRONMENT and f"cannot load PKCS#11 module {text}" in _one_error_line(r.err)


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("ed448", "is Ed448, not Ed25519"),
        ("p256", "is not an Ed25519 key (key type EC)"),
        ("rsa", "is not an Ed25519 key (key type RSA)"),
    ],
)
def test_key_that_is_not_ed25519_is_a_format_error(
    cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair, label: str, why: str
) -> None:
    r = _sign(cli, bundle, keypair, token.uri(label), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.FORMAT
    assert _one_error_line(r.err) == f"error: key {label!r} on token 'airgap-release' {why}"


def test_private_key_without_its_public_object_is_a_format_error(hsm: SoftHSM, token: Token) -> None:
    with pytest.raises(FormatError, match="no public key object"), keys.open_signer(_key(hsm, token.uri("no-public"))):
        pass


def test_key_that_wants_the_pin_for_each_signature_signs(hsm: SoftHSM, token: Token) -> None:
    """CKA_ALWAYS_AUTHENTICATE (a PIV card's signature slot): the PIN is given again with each signature."""
    with keys.open_signer(_key(hsm, token.uri("always-authenticate"))) as signer:
        for data in (b"resume journal", b"manifest"):
            signer.public_key().verify(signer.sign(data), data)


def test_public_object_of_another_key_is_caught_before_the_signature_is_used(hsm: SoftHSM, token: Token) -> None:
    with (
        keys.open_signer(_key(hsm, token.uri("mismatched"))) as signer,
        pytest.raises(FormatError, match="does not verify with the public key beside it"),
    ):
        trust.sign(b"manifest", signer)


def test_token_taken_away_mid_sign_is_an_environment_error(
    cli: Cli, hsm: SoftHSM, bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token's directory is deleted after the key was found and logged in to, while sign hashes the parts:
    SoftHSM2 then answers the signing call with CKR_OBJECT_HANDLE_INVALID, as a module does for a pulled token."""
    import airgap.sign

    t = hsm.init_token("airgap-removable")
    keys.generate_on_token(tmp_path / "removable", _key(hsm, t.uri("k")))
    check = getattr(airgap.sign, "_check")  # noqa: B009  # sign's hashing of the parts, before it signs

    def then_remove(*args: Any, **kwargs: Any) -> Any:
        results = check(*args, **kwargs)
        hsm.remove(t)
        return results

    monkeypatch.setattr(airgap.sign, "_check", then_remove)
    r = _sign(cli, bundle, keypair, t.uri("k"), "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert r.code == ExitCode.ENVIRONMENT
    line = _one_error_line(r.err)
    assert (
        line
        == "error: signing with key 'k' on token 'airgap-removable' failed: the token went away (CKR_OBJECT_HANDLE_INVALID), removed or its key deleted"
    )
    assert not _sig(bundle, tmp_path / "removable.pub").exists()


@pytest.mark.parametrize("ckr", ["DeviceRemoved", "TokenNotPresent", "SessionHandleInvalid"])
def test_module_reporting_the_device_removed_is_an_environment_error(
    hsm: SoftHSM, token: Token, token_pub: Path, ckr: str
) -> None:
    """The module's own removal codes (CKR_DEVICE_REMOVED and kin), raised by the binding as the module returns them."""
    import pkcs11 as p11

    class Pulled:
        def sign(self, data: bytes, **kwargs: object) -> bytes:
            raise getattr(p11.exceptions, ckr)()

    with keys.open_signer(_key(hsm, token.uri("release"))) as signer:
        assert isinstance(signer, pkcs11.TokenSigner)
        signer._private = Pulled()
        with pytest.raises(EnvironmentProblem, match=r"failed: the token went away \(CKR_[A-Z_]+\)") as e:
            signer.sign(b"manifest")
    assert e.value.exit_code == ExitCode.ENVIRONMENT


def test_pin_in_the_uri_is_refused_without_showing_it(
    cli: Cli, hsm: SoftHSM, token: Token, bundle: Path, keypair: KeyPair
) -> None:
    r = _sign(cli, bundle, keypair, token.uri("release") + f"?pin-value={USER_PIN}", "--pkcs11-module", hsm.module)
    assert r.code == ExitCode.USAGE and "carries its PIN (pin-value)" in _one_error_line(r.err)
    assert USER_PIN not in r.err


def test_token_options_with_a_key_file_are_refused(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    r = _sign(cli, bundle, keypair, str(keypair[0]), "--pin-env", PIN_ENV)
    assert r.code == ExitCode.USAGE and "--pin-env is for a key on a token" in _one_error_line(r.err)
    r = _sign(cli, bundle, keypair, str(keypair[0]), "--pkcs11-module", "/x.so")
    assert r.code == ExitCode.USAGE and "--pkcs11-module is for a key on a token" in _one_error_line(r.err)


# -- the URI, checked once ----------------------------------------------------------------------------------


def test_uri_attributes_and_escapes() -> None:
    uri = pkcs11.parse_uri(
        "pkcs11:token=Release%20HSM;object=sign%3Bkey;id=%01%ff;serial=42;slot-id=7;type=private?module-path=/opt/hsm.so"
    )
    assert uri == pkcs11.TokenURI(
        token="Release HSM",  # noqa: S106  # a token label, not a password
        serial="42",
        slot_id=7,
        object="sign;key",
        id=b"\x01\xff",
        module_path="/opt/hsm.so",
    )
    assert pkcs11.parse_uri("PKCS11:") == pkcs11.TokenURI()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("pkcs11:token=a;objct=b", "the attribute 'objct'"),  # a typo must not widen the match to every key
        ("pkcs11:token=a;token=b", "gives token twice"),
        ("pkcs11:token=a;type=public", "type=public"),
        ("pkcs11:slot-id=one", "slot-id that is not a number"),
        ("pkcs11:token=a;object", "where NAME=VALUE belongs"),
        ("pkcs11:token=a?pin-source=file:/pin", "carries its PIN (pin-source)"),
        ("pkcs11:token=a?module-name=softhsm2", "module-name"),
        ("pkcs11:token=%ff", "not UTF-8"),
        ("pkcs11:token=a;module-path=/x.so", "the attribute 'module-path'"),  # a query attribute, after ?
    ],
)
def test_bad_uris_are_usage_errors(text: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        keys.SigningKey(text)
    assert why in e.value.message


def test_module_given_twice_must_agree(token: Token) -> None:
    key = keys.SigningKey(token.uri("release") + "?module-path=/a.so", pkcs11_module="/b.so")
    with pytest.raises(UsageError, match="differ"), keys.open_signer(key):
        pass
