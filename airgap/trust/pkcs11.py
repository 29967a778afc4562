"""Ed25519 keys on a PKCS#11 token (an HSM, a smart card, SoftHSM2): name them, sign with them, make them.

A key is named by an RFC 7512 URI, ``pkcs11:token=LABEL;object=LABEL`` (also ``serial``, ``manufacturer``,
``model``, ``slot-id``, ``id``, ``type=private``; ``?module-path=``).  What the URI leaves out matches
anything, so ``pkcs11:token=ops`` names the one private key on that token; an attribute airgap does not
know is refused rather than ignored (an ignored one would widen the match to a key never meant).  A URI
that carries its PIN (``pin-value``, ``pin-source``) is refused too: a URI ends up in shell history,
``ps`` and CI logs, and in airgap's own error lines; the PIN comes from ``--pin-env VAR`` or a prompt.

The module (the token vendor's PKCS#11 library) is ``--pkcs11-module``, else the URI's ``module-path``,
else ``$AIRGAP_PKCS11_MODULE``.  Signing uses CKM_EDDSA on a CKK_EC_EDWARDS key over edwards25519: a raw
64-byte Ed25519 signature, the same bytes a key file makes, so every verifier (airgap, openssl,
installer/install.sh) checks it unchanged.  Each signature is checked against the token's public key
before it is used, so a token whose public and private objects do not belong together fails here, not
at the auditor's.

What goes wrong is one of three kinds: the operator's input (a bad URI, no module given, a wrong or
locked PIN, no such key, several keys or tokens matching: exit 2), the key itself (not Ed25519, or its
public object missing or not its own: exit 3, as for a damaged key file), or the environment (the module missing or not a PKCS#11 library, the token absent,
removed or failing mid-operation, a token that cannot do Ed25519: exit 6).  The binding (python-pkcs11)
is imported only when a token is used.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airgap.errors import ConflictError, EnvironmentProblem, FormatError, UsageError

if TYPE_CHECKING:
    from pkcs11 import Session, Token
    from pkcs11._pkcs11 import lib as Module

SCHEME = "pkcs11:"
MODULE_ENV = "AIRGAP_PKCS11_MODULE"
PinSource = Callable[[str], str]  # the token's label -> its user PIN (asked for only when the token wants a login)

# the curve of a CKK_EC_EDWARDS key, as CKA_EC_PARAMS holds it: the OID 1.3.101.112, or the PrintableString
ED25519_PARAMS = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")
ED448_PARAMS = (bytes.fromhex("06032b6571"), b"\x13\x0aedwards448")

_PATH_ATTRS = ("token", "manufacturer", "serial", "model", "slot-id", "object", "id", "type")
_QUERY_ATTRS = ("module-path",)
_SECRET_ATTRS = ("pin-value", "pin-source")
_URI_HINT = (
    "write it as pkcs11:token=LABEL;object=LABEL (RFC 7512; also serial=, manufacturer=, model=, slot-id=, id=, "
    "type=private, ?module-path=PATH), with %XX for special characters"
)
_MODULE_HINT = (
    f"give the token's PKCS#11 library with --pkcs11-module PATH or ${MODULE_ENV} "
    "(SoftHSM2: /usr/lib/softhsm/libsofthsm2.so; smart cards: OpenSC's opensc-pkcs11.so; an HSM: its vendor's)"
)
_UNLOCK_HINT = "unlock it with the security officer PIN (pkcs11-tool --init-pin --login --login-type so)"
_LIST_HINT = "list what the token holds: pkcs11-tool --module MODULE --login --list-objects"
_REMOVED = {
    "DeviceRemoved",
    "TokenNotPresent",
    "SessionClosed",
    "SessionHandleInvalid",
    "ObjectHandleInvalid",
    "KeyHandleInvalid",
}


@dataclass(frozen=True)
class TokenURI:
    """A parsed ``pkcs11:`` key URI (RFC 7512): which token, which key, and maybe which module."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object: str | None = None  # the key's CKA_LABEL
    id: bytes | None = None  # the key's CKA_ID
    module_path: str | None = None

    def describe(self) -> str:
        """The key as a person reads it in a message (never the PIN: a URI with one is refused)."""
        key = f"key {self.object!r}" if self.object is not None else "the private key"
        if self.id is not None:
            key += f" (id {self.id.hex()})"
        return f"{key} on token {self.token!r}" if self.token is not None else f"{key} on the token"


def is_uri(text: str) -> bool:
    """Whether ``--key`` text names a key on a token rather than a key file."""
    return text[: len(SCHEME)].lower() == SCHEME


def parse_uri(text: str) -> TokenURI:
    """The one parser of ``pkcs11:`` key URIs; a UsageError (exit 2) names what is wrong (never the PIN)."""
    if not is_uri(text):
        raise UsageError("a key on a token is named by a pkcs11: URI", hint=_URI_HINT)
    path, _, query = text[len(SCHEME) :].partition("?")
    raw: dict[str, bytes] = {}
    for part, separator, allowed in ((path, ";", _PATH_ATTRS), (query, "&", _QUERY_ATTRS)):
        for item in part.split(separator) if part else ():
            name, eq, value = item.partition("=")
            name = name.lower()
            if name in _SECRET_ATTRS:
                raise UsageError(
                    f"the key's pkcs11: URI carries its PIN ({name}): refused, as a URI shows in shell history, ps and logs",
                    hint="remove it from the URI and give the PIN with --pin-env VAR (or at the prompt)",
                )
            if name == "module-name":
                raise UsageError("the key's pkcs11: URI names its module by name (module-name)", hint=_MODULE_HINT)
            if not eq or name not in allowed:
                what = f"the attribute {name!r}" if eq else f"{item[:40]!r} where NAME=VALUE belongs"
                raise UsageError(f"the key's pkcs11: URI has {what}, which airgap does not match on", hint=_URI_HINT)
            if name in raw:
                raise UsageError(f"the key's pkcs11: URI gives {name} twice", hint=_URI_HINT)
            raw[name] = unquote_to_bytes(value)
    texts: dict[str, str] = {}
    for name, data in raw.items():
        if name != "id":
            try:
                texts[name] = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"the key's pkcs11: URI has a {name} that is not UTF-8 text", hint=_URI_HINT) from e
    kind = texts.get("type")
    if kind is not None and kind != "private":
        raise UsageError(
            f"the key's pkcs11: URI names type={kind}: airgap signs with a private key",
            hint="write type=private, or leave type out",
        )
    slot_id = None
    if "slot-id" in texts:
        if not re.fullmatch(r"[0-9]{1,20}", texts["slot-id"]):
            raise UsageError("the key's pkcs11: URI has a slot-id that is not a number", hint=_URI_HINT)
        slot_id = int(texts["slot-id"])
    if texts.get("module-path") == "":
        raise UsageError("the key's pkcs11: URI has an empty module-path", hint=_MODULE_HINT)
    return TokenURI(
        token=texts.get("token"),
        manufacturer=texts.get("manufacturer"),
        serial=texts.get("serial"),
        model=texts.get("model"),
        slot_id=slot_id,
        object=texts.get("object"),
        id=raw.get("id"),
        module_path=texts.get("module-path"),
    )


def module_path(uri: TokenURI, explicit: str | None) -> str:
    """The PKCS#11 module: --pkcs11-module, else the URI's module-path, else $AIRGAP_PKCS11_MODULE."""
    if explicit and uri.module_path and explicit != uri.module_path:
        raise UsageError(
            f"--pkcs11-module {explicit} and the key URI's module-path {uri.module_path} differ", hint="give the module once"
        )
    path = explicit or uri.module_path or os.environ.get(MODULE_ENV)
    if not path:
        raise UsageError(f"no PKCS#11 module for {uri.describe()}", hint=_MODULE_HINT)
    return path


# -- the module ----------------------------------------------------------------------------------------

_lock = threading.Lock()
_users: dict[str, int] = {}


@contextmanager
def _module(path: str) -> Iterator[Module]:
    """The module at PATH, initialized for the block and finalized after its last user (the token is then
    released, and a later use reads the module's configuration afresh)."""
    try:
        import pkcs11 as p11
    except ImportError as e:  # every use of a token starts here: the other functions import it unguarded
        raise EnvironmentProblem(
            f"the PKCS#11 binding airgap uses (python-pkcs11) cannot be imported: {e}", hint="pip install python-pkcs11"
        ) from e

    if "/" in path and not os.path.isfile(path):
        raise EnvironmentProblem(
            f"PKCS#11 module {path} {'is not a file' if os.path.exists(path) else 'does not exist'}", hint=_MODULE_HINT
        )
    with _lock:
        try:
            lib = p11.lib(path)
        except p11.PKCS11Error as e:
            if type(e) is p11.PKCS11Error:  # dlopen or C_GetFunctionList failed: the binding's own message
                why = str(e).rpartition(": ")[2] or "not a shared library"
                if "C_GetFunctionList" in why:
                    why = "it has no C_GetFunctionList: not a PKCS#11 module"
                raise EnvironmentProblem(f"cannot load PKCS#11 module {path}: {why}", hint=_MODULE_HINT) from e
            raise EnvironmentProblem(
                f"PKCS#11 module {path} failed to start ({_ckr(e)})",
                hint="check the module's configuration and the token's driver",
            ) from e
        _users[path] = _users.get(path, 0) + 1
    try:
        yield lib
    finally:
        with _lock:
            _users[path] -= 1
            if not _users[path]:
                del _users[path]
                with suppress(p11.PKCS11Error):  # nothing to do about it: the process ends or loads it afresh
                    lib.finalize()


def _ckr(e: BaseException) -> str:
    """The PKCS#11 return value an exception stands for, as the standard names it: CKR_DEVICE_REMOVED."""
    name = type(e).__name__
    if name == "PKCS11Error":
        return str(e) or "a PKCS#11 error"  # the binding names codes it does not map: "Unmapped error code 0x68"
    return "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _environment(e: BaseException, doing: str, uri: TokenURI) -> EnvironmentProblem:
    """A token that failed while airgap used it: removed, broken, or answering outside the standard."""
    if type(e).__name__ in _REMOVED:
        return EnvironmentProblem(
            f"{doing} {uri.describe()} failed: the token went away ({_ckr(e)}), removed or its key deleted",
            hint="plug the token in again and run the same command again",
        )
    return EnvironmentProblem(
        f"{doing} {uri.describe()} failed: the token answered {_ckr(e)}", hint="check the token and its module"
    )


# -- tokens and keys ---------------------------------------------------------------------------------


def _find_token(lib: Module, uri: TokenURI, path: str) -> Token:
    import pkcs11 as p11
    from pkcs11 import TokenFlag

    try:
        tokens = [slot.get_token() for slot in lib.get_slots(token_present=True)]
    except p11.PKCS11Error as e:
        raise EnvironmentProblem(f"PKCS#11 module {path} cannot list its tokens ({_ckr(e)})", hint=_MODULE_HINT) from e
    tokens = [t for t in tokens if t.flags & TokenFlag.TOKEN_INITIALIZED]
    found = [
        t
        for t in tokens
        if (uri.token is None or t.label == uri.token)
        and (uri.manufacturer is None or t.manufacturer_id == uri.manufacturer)
        and (uri.serial is None or t.serial.decode("utf-8", "replace").strip() == uri.serial)
        and (uri.model is None or t.model == uri.model)
        and (uri.slot_id is None or t.slot.slot_id == uri.slot_id)
    ]
    if not found:
        present = ", ".join(repr(t.label) for t in tokens[:8]) or "none"
        raise EnvironmentProblem(
            f"no token matches {uri.describe()} (tokens present through {path}: {present})",
            hint="plug the token in, or check the URI's token= label (pkcs11-tool --module MODULE --list-slots)",
        )
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} tokens match {uri.describe()}", hint="add serial=... to the URI to name one (pkcs11-tool --list-slots)"
        )
    token: Token = found[0]
    return token


def _ask_pin(token: Token, pin: PinSource | None) -> str:
    """The token's user PIN, from PIN; refused early for a token whose PIN cannot work."""
    from pkcs11 import TokenFlag

    if token.flags & TokenFlag.USER_PIN_LOCKED:
        raise UsageError(f"the user PIN of token {token.label!r} is locked (too many wrong tries)", hint=_UNLOCK_HINT)
    if not token.flags & TokenFlag.USER_PIN_INITIALIZED:
        raise UsageError(f"token {token.label!r} has no user PIN set", hint="set one with the token's tools first")
    if pin is None:
        raise UsageError(f"token {token.label!r} needs its user PIN", hint="give it with --pin-env VAR (or at the prompt)")
    return pin(token.label)


@contextmanager
def _pin_errors(token: Token, uri: TokenURI, doing: str) -> Iterator[None]:
    """A wrong, locked or expired PIN is the operator's (exit 2); any other failure the token's (exit 6)."""
    import pkcs11 as p11

    try:
        yield
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as e:
        raise UsageError(
            f"wrong PIN for token {token.label!r}",
            hint="check the PIN (--pin-env VAR names the variable holding it); a token locks its PIN after a few wrong tries",
        ) from e
    except p11.PinLocked as e:
        raise UsageError(f"the user PIN of token {token.label!r} is locked (too many wrong tries)", hint=_UNLOCK_HINT) from e
    except p11.PinExpired as e:
        raise UsageError(f"the user PIN of token {token.label!r} has expired", hint="set a new one with the token's tools") from e
    except p11.PKCS11Error as e:
        raise _environment(e, doing, uri) from e


def _login(token: Token, uri: TokenURI, pin: PinSource | None, rw: bool = False) -> tuple[Session, str | None]:
    """A session on TOKEN, logged in as its user when it wants that; and the PIN it took (None without one)."""
    from pkcs11 import TokenFlag

    secret = _ask_pin(token, pin) if token.flags & TokenFlag.LOGIN_REQUIRED else None
    with _pin_errors(token, uri, "logging in for"):
        return token.open(rw=rw, user_pin=secret), secret


def _search(uri: TokenURI, object_class: Any) -> dict[Any, Any]:
    from pkcs11 import Attribute

    attrs: dict[Any, Any] = {Attribute.CLASS: object_class}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    return attrs


def _curve(params: bytes | None) -> str:
    if params in ED25519_PARAMS:
        return "Ed25519"
    if params in ED448_PARAMS:
        return "Ed448"
    return "an unknown Edwards curve"


def _ed25519_public(session: Session, private: Any, uri: TokenURI) -> Ed25519PublicKey:
    """The public key beside PRIVATE (same CKA_ID, else same label), checked to be Ed25519."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    key_type = private[Attribute.KEY_TYPE]
    if key_type != KeyType.EC_EDWARDS:
        name = getattr(key_type, "name", str(key_type))
        raise FormatError(
            f"{uri.describe()} is not an Ed25519 key (key type {name})",
            hint="airgap signs with Ed25519: make one with 'airgap keygen --pkcs11 URI'",
        )
    link: dict[Any, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS}
    key_id = private[Attribute.ID]
    if key_id:
        link[Attribute.ID] = key_id
    else:
        link[Attribute.LABEL] = private[Attribute.LABEL]
    publics = list(session.get_objects(link))
    if len(publics) != 1:
        raise FormatError(
            f"{'no' if not publics else len(publics)} public key object(s) beside {uri.describe()} (by its id or label)",
            hint="airgap names a signature by its public key: keep the key pair's public object on the token",
        )
    params = publics[0][Attribute.EC_PARAMS]
    if params not in ED25519_PARAMS:
        raise FormatError(
            f"{uri.describe()} is {_curve(params)}, not Ed25519",
            hint="airgap signs with Ed25519: make one with 'airgap keygen --pkcs11 URI'",
        )
    return _ed25519_point(bytes(publics[0][Attribute.EC_POINT]), f"the public key beside {uri.describe()}")


class TokenSigner:
    """An Ed25519 key on a token, behind an open, logged-in session: a :class:`airgap.trust.keys.Signer`."""

    def __init__(
        self, session: Session, private: Any, public: Ed25519PublicKey, uri: TokenURI, token: Token, pin: str | None = None
    ) -> None:
        """PIN is given for a key that wants it again for every signature (CKA_ALWAYS_AUTHENTICATE), as the
        signing keys of smart cards (a PIV card's signature slot) do."""
        self._session = session
        self._private = private
        self._public = public
        self._token = token
        self._pin = pin
        self.uri = uri

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """A raw Ed25519 signature over DATA (CKM_EDDSA), checked against the public key before it is returned."""
        import pkcs11 as p11
        from pkcs11 import Mechanism

        again = {"pin": self._pin} if self._pin is not None else {}
        unable = (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.FunctionNotSupported, p11.KeyTypeInconsistent)
        with _pin_errors(self._token, self.uri, "signing with"):
            try:
                signature = bytes(self._private.sign(data, mechanism=Mechanism.EDDSA, **again))
            except unable as e:
                raise EnvironmentProblem(
                    f"{self.uri.describe()} cannot sign Ed25519 by CKM_EDDSA ({_ckr(e)})",
                    hint="use a token and key that sign Ed25519 (CKM_EDDSA), e.g. one made by 'airgap keygen --pkcs11'",
                ) from e
        try:
            self._public.verify(signature, data)
        except InvalidSignature as e:
            raise FormatError(
                f"a signature by {self.uri.describe()} does not verify with the public key beside it",
                hint="the token's private and public key objects do not belong together: make the pair again",
            ) from e
        return signature


@contextmanager
def open_signer(uri: TokenURI, module: str | None, pin: PinSource | None) -> Iterator[TokenSigner]:
    """The key URI names, logged in for the block: find the token, log in, find the one private key, check
    it is Ed25519 and has its public key beside it."""
    import pkcs11 as p11
    from pkcs11 import Attribute, ObjectClass

    path = module_path(uri, module)
    with _module(path) as lib:
        token = _find_token(lib, uri, path)
        session, secret = _login(token, uri, pin)
        try:
            try:
                privates = list(session.get_objects(_search(uri, ObjectClass.PRIVATE_KEY)))
                if not privates:
                    raise UsageError(f"no private key matches {uri.describe()}", hint=_LIST_HINT)
                if len(privates) > 1:
                    raise UsageError(
                        f"{len(privates)} private keys match {uri.describe()}", hint=f"name one with object= or id=; {_LIST_HINT}"
                    )
                public = _ed25519_public(session, privates[0], uri)
                again = _flag(privates[0], Attribute.ALWAYS_AUTHENTICATE)
            except p11.PKCS11Error as e:
                raise _environment(e, "looking for", uri) from e
            if again and secret is None:
                secret = _ask_pin(token, pin)
            yield TokenSigner(session, privates[0], public, uri, token, secret if again else None)
        finally:
            _close(session)


def _flag(obj: Any, attribute: Any) -> bool:
    """A boolean attribute of OBJ; one the token does not keep counts as false."""
    import pkcs11 as p11

    try:
        return bool(obj[attribute])
    except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
        return False


def _close(session: Session) -> None:
    import pkcs11 as p11

    with suppress(p11.PKCS11Error):  # a removed token: its sessions are gone already
        session.close()


def generate(uri: TokenURI, module: str | None, pin: PinSource | None) -> Ed25519PublicKey:
    """Make an Ed25519 key pair on the token the URI names, labelled by its ``object`` (and ``id`` when given):
    the private key never leaves the token (sensitive, not extractable).  Returns the public key."""
    import pkcs11 as p11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    if uri.object is None:
        raise UsageError(
            "the new key needs a label: object= in the pkcs11: URI", hint="e.g. pkcs11:token=LABEL;object=release-2027"
        )
    refused = (p11.MechanismInvalid, p11.TemplateInconsistent, p11.AttributeValueInvalid, p11.DomainParamsInvalid)
    path = module_path(uri, module)
    with _module(path) as lib:
        token = _find_token(lib, uri, path)
        session, _ = _login(token, uri, pin, rw=True)
        try:
            try:
                if Mechanism.EC_EDWARDS_KEY_PAIR_GEN not in token.slot.get_mechanisms():
                    raise EnvironmentProblem(
                        f"token {token.label!r} cannot make Ed25519 keys (no CKM_EC_EDWARDS_KEY_PAIR_GEN)",
                        hint="use a token that supports Ed25519 (SoftHSM2 2.6, YubiHSM 2, recent Nitrokey and Thales HSMs)",
                    )
                same = [{Attribute.LABEL: uri.object}] + ([{Attribute.ID: uri.id}] if uri.id is not None else [])
                if any(
                    next(session.get_objects({Attribute.CLASS: c, **a}), None)
                    for c in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                    for a in same
                ):
                    raise ConflictError(
                        f"token {token.label!r} already holds a key {uri.object!r}"
                        + (f" or id {uri.id.hex()}" if uri.id else ""),
                        hint="choose another object= label (airgap never replaces a key on a token)",
                    )
                public, _ = session.generate_keypair(
                    KeyType.EC_EDWARDS,
                    store=True,
                    label=uri.object,
                    id=uri.id if uri.id is not None else os.urandom(16),
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                    public_template={Attribute.EC_PARAMS: ED25519_PARAMS[0], Attribute.VERIFY: True},
                    private_template={
                        Attribute.SIGN: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.PRIVATE: True,
                    },
                )
                point = bytes(public[Attribute.EC_POINT])
            except refused as e:
                raise EnvironmentProblem(
                    f"token {token.label!r} refused to make an Ed25519 key ({_ckr(e)})",
                    hint="use a token that supports Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN over edwards25519)",
                ) from e
            except p11.PKCS11Error as e:
                raise _environment(e, "making", uri) from e
        finally:
            _close(session)
    return _ed25519_point(point, f"the public key made for {uri.describe()}")


def _ed25519_point(point: bytes, what: str) -> Ed25519PublicKey:
    """An Ed25519 public key from CKA_EC_POINT: a DER OCTET STRING as the standard says, or, as some tokens
    give it, the 32 bytes bare."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        point = point[2:]
    if len(point) != 32:
        raise FormatError(f"{what} is not 32 bytes", hint="the token answers outside the PKCS#11 standard")
    return Ed25519PublicKey.from_public_bytes(point)
