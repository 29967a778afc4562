"""Options and parameter types shared by the commands, each declared once.

A default that the core also declares (an ``Options`` dataclass field, a function parameter) is read from the
core with :func:`core_default`, never written here a second time.  Sizes are parsed by one parameter type
before any work starts; passphrases are read from the environment or a terminal prompt.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from airgap._cli import render
from airgap._cli.reporters import PROGRESS_MODES
from airgap._internal.format.discs import volume_number
from airgap._internal.util.text import printable
from airgap.errors import EnvironmentProblem, UsageError
from airgap.model.units import parse_media_size, parse_size
from airgap.trust import keys
from airgap.trust.keys import PublicKey

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class CoreDefault:
    """The default the core declares for ``name`` (a field of an options dataclass, or a function's parameter),
    read when a command needs it: naming the owner as ``"module:attr"`` keeps the module unimported until then,
    so ``airgap --version`` or one command never loads the others.  ``show`` turns it into the option's text."""

    def __init__(self, owner: str, name: str, kind: type, show: Callable[[Any], Any] | None = None) -> None:
        self.owner, self.name, self.kind, self.show = owner, name, kind, show

    def resolve(self) -> Any:
        """Import the owner's module and read the default."""
        module, _, attr = self.owner.partition(":")
        owner = getattr(importlib.import_module(module), attr)
        default = inspect.signature(owner).parameters[self.name].default
        if not isinstance(default, self.kind):
            raise TypeError(f"{self.owner}.{self.name} declares no {self.kind.__name__} default")
        return self.show(default) if self.show is not None else default


class CoreOption(click.Option):
    """An option whose default is a :class:`CoreDefault`, resolved when parsing or showing help needs it."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        """The core's default, read now; other defaults as click reads them."""
        if isinstance(self.default, CoreDefault):
            return self.default.resolve()
        return super().get_default(ctx, call)


def core_default(owner: str, name: str, kind: type, show: Callable[[Any], Any] | None = None) -> CoreDefault:
    """The default ``owner`` (``"airgap.pack:PackOptions"``) declares for ``name``, read when needed; pass it to an
    option made with ``cls=CoreOption``."""
    return CoreDefault(owner, name, kind, show)


_IEC = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size_text(n: int) -> str:
    """``n`` bytes as the shortest exact size that :func:`parse_size` reads back: 1GiB, 128MiB, 4097."""
    for unit, scale in _IEC:
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


class SizeType(click.ParamType):  # type: ignore[type-arg]  # not generic before click 8.5: no subscript at run time
    """A size such as 4GiB or 700MB (or, with the media parser, a medium such as dvd), as a byte count."""

    name = "text"  # the metavar help shows: TEXT

    def __init__(self, parse: Callable[[str], int], empty_is_unset: bool = False) -> None:
        """A size type reading its text with ``parse``; with ``empty_is_unset``, an empty text means no size."""
        self._parse = parse
        self._empty_is_unset = empty_is_unset

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        """Bytes from the option's text; a bad size is our UsageError (one line, a hint, exit code 2)."""
        if isinstance(value, int):
            return value
        if self._empty_is_unset and not value:
            return None
        return self._parse(str(value))


SIZE = SizeType(parse_size)
MEDIA_SIZE = SizeType(parse_media_size)  # the one type for --part-size
OPTIONAL_MEDIA_SIZE = SizeType(parse_media_size, empty_is_unset=True)  # --media-dir-size "" splits nothing
PART_SIZE_HELP = "largest part file, e.g. 4GiB, 700MB, or a medium: fat32 (4GiB-1), dvd, dvd-dl, bd25, bd50"


def part_size_option(owner: str) -> Decorator:
    """``--part-size``, read with the medium-aware size type; the default is ``owner``'s ``part_size``."""
    default = core_default(owner, "part_size", int, size_text)
    return click.option("--part-size", cls=CoreOption, type=MEDIA_SIZE, default=default, show_default=True, help=PART_SIZE_HELP)


def chunk_size_option(owner: str, name: str, help: str) -> Decorator:
    """``--chunk-size``: the largest single upload request; the default is ``owner``'s ``name``."""
    default = core_default(owner, name, int, size_text)
    return click.option("--chunk-size", cls=CoreOption, type=SIZE, default=default, show_default=True, help=help)


def key_option() -> Decorator:
    """``--key``: the private signing key, a key file or a key on a PKCS#11 token (checked by keys.SigningKey)."""
    return click.option(
        "--key",
        "key_text",
        required=True,
        metavar="KEY",
        help="signing key: PREFIX.key, or a key on a PKCS#11 token, 'pkcs11:token=LABEL;object=LABEL'",
    )


def token_options() -> Decorator:
    """``--pkcs11-module PATH`` and ``--pin-env VAR``: what a key on a PKCS#11 token needs."""
    module = click.option(
        "--pkcs11-module",
        metavar="PATH",
        help="the token's PKCS#11 library, for a pkcs11: key (default: the URI's module-path, else $AIRGAP_PKCS11_MODULE)",
    )
    pin = click.option("--pin-env", metavar="VAR", help="a pkcs11: key's token PIN is in $VAR (else asked on a terminal)")

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        """Add both options, in the order help lists them."""
        return module(pin(f))

    return apply


def passphrase_env_option(help: str = "the key's passphrase is in $VAR") -> Decorator:
    """``--passphrase-env VAR``: the name of the variable holding a key's passphrase."""
    return click.option("--passphrase-env", metavar="VAR", help=help)


class OutputPath(click.ParamType):  # type: ignore[type-arg]  # not generic before click 8.5
    """A path a command writes to, checked before any work starts: its directory must exist (a directory to be
    made, ``makes_dirs``: its nearest existing ancestor) and take a new file.  A missing or wrong directory is
    a usage error (exit 2), one we may not write in an environment problem (exit 6): never an internal
    error after the work is done."""

    name = "path"

    def __init__(self, makes_dirs: bool = False, file: bool = False) -> None:
        """``makes_dirs``: the command makes the missing directories itself (an output directory); ``file``:
        the path names a file, so an existing directory there is refused."""
        self._makes_dirs = makes_dirs
        self._file = file

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        """The path, once its directory is known to take new files."""
        path = value if isinstance(value, Path) else Path(str(value))
        option = max(param.opts, key=len) if isinstance(param, click.Option) and param.opts else "the path"
        check_writable_place(path, option, self._makes_dirs, self._file)
        return path

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        """Complete file names (directories for an output directory), as click.Path does."""
        return [CompletionItem(incomplete, type="dir" if self._makes_dirs else "file")]


def check_writable_place(path: Path, option: str, makes_dirs: bool = False, file: bool = False) -> None:
    """Refuse PATH, named by ``option``, when nothing can be written there (see :class:`OutputPath`)."""
    shown = printable(str(path))
    if file and path.is_dir():
        raise UsageError(f"{option} {shown} is a directory", hint="name the file to write, in an existing directory")
    directory = Path(os.path.abspath(path)).parent
    if makes_dirs:
        while not os.path.lexists(directory) and directory != directory.parent:
            directory = directory.parent
    where = printable(str(directory))
    if not os.path.lexists(directory):
        raise UsageError(
            f"{option} {shown}: directory {where} does not exist",
            hint=f"create it first (mkdir -p {where}), or name a place in an existing directory",
        )
    if not directory.is_dir():
        raise UsageError(f"{option} {shown}: {where} is not a directory", hint="name a place in an existing directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".airgap-", suffix=".probe", dir=directory)
    except OSError as e:
        raise EnvironmentProblem(
            f"{option} {shown}: cannot write in {where}: {e.strerror or e}",
            hint="choose a directory you can write to (check its permissions, and that its file system is not read-only or full)",
            path=str(directory),
        ) from e
    os.close(fd)
    os.unlink(probe)


OUTPUT_FILE = OutputPath(file=True)  # a file written in an existing directory (verify --receipt)
OUTPUT_PREFIX = OutputPath()  # PREFIX of files written beside it (keygen --out: PREFIX.key, PREFIX.pub)
OUTPUT_DIR = OutputPath(makes_dirs=True)  # a directory made with its missing parents (pack -o, pull -o)


class TargetType(click.ParamType):  # type: ignore[type-arg]  # not generic before click 8.5
    """``install --to``, read before any work (before the bundle's signatures): its grammar is the sinks' own
    (``parse_target``, a containerd address's parser), and an archive's path is checked as every path a
    command writes to is (:func:`check_writable_place`)."""

    name = "target"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The target's text, once it reads as one."""
        from airgap._internal.sinks.base import parse_target
        from airgap._internal.sinks.containerd import ContainerdAddress

        text = str(value)
        target = parse_target(text)  # a registry address it cannot read is worded as one, with its form
        if target.kind == "containerd":
            ContainerdAddress.parse(target.value)
        elif target.kind in ("docker-archive", "oci-archive"):
            check_writable_place(Path(target.value), "--to", file=True)
        return text


TARGET = TargetType()


def out_option() -> Decorator:
    """``-o/--out``: the bundle directory a command writes (made with its parents; checked before any work)."""
    return click.option("-o", "--out", "out_dir", required=True, type=OUTPUT_DIR, help="bundle directory to write")


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record ``--json`` in the run's Invocation, where rendering (success and failure alike) reads it."""
    ctx.ensure_object(render.Invocation).as_json = value
    return value


def json_option(help: str = "print the result as one JSON object (failures too)") -> Decorator:
    """``--json``: one JSON object on stdout instead of text, whatever the outcome (render.success, render.failure)."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_set_json, help=help)


def _set_progress(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Record ``--progress`` (the group's or the command's) in the run's Invocation."""
    if value is not None:
        ctx.ensure_object(render.Invocation).progress = value
    return value


PROGRESS_HELP = "how progress shows on stderr: auto (a bar on a terminal, else a line every 10 s), bar, lines, json (events, one per line), none"


def progress_option() -> Decorator:
    """``--progress MODE``, on the group and on each command that reports progress; beats ``-q``."""
    return click.option(
        "--progress",
        type=click.Choice(PROGRESS_MODES),
        expose_value=False,
        callback=_set_progress,
        help=PROGRESS_HELP,
    )


def plain_http_option(help: str) -> Decorator:
    """``--plain-http``: talk to a registry without TLS."""
    return click.option("--plain-http", is_flag=True, help=help)


def platform_option(help: str) -> Decorator:
    """``--platform``: os/arch[/variant] (checked by the core, which owns the platform grammar)."""
    return click.option("--platform", help=help)


def trust_option(required: bool, help: str) -> Decorator:
    """``--trust``: a public key file or a directory of them, repeatable."""
    return click.option("--trust", "trust", multiple=True, required=required, type=click.Path(path_type=Path), help=help)


def threshold_option(owner: str) -> Decorator:
    """``--threshold``: at least 1, rejected by click before any work; the default is ``owner``'s."""
    return click.option(
        "--threshold",
        cls=CoreOption,
        default=core_default(owner, "threshold", int),
        show_default=True,
        type=click.IntRange(min=1),
        help="valid signatures from distinct trusted keys required",
    )


def jobs_option(owner: str) -> Decorator:
    """``--jobs``: parts hashed at once, at least 1; the default (the CPU count) is ``owner``'s."""
    return click.option(
        "--jobs",
        cls=CoreOption,
        default=core_default(owner, "jobs", int),
        show_default=True,
        type=click.IntRange(min=1),
        help="parts hashed at once",
    )


def from_option() -> Decorator:
    """``--from``: more directories holding parts (the mounted volumes of a split bundle)."""
    return click.option(
        "--from",
        "search",
        multiple=True,
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        help="another directory holding parts (a mounted volume of a split bundle); repeatable",
    )


def one_drive_options() -> Decorator:
    """``--one-drive`` and ``--media-command CMD``: a split bundle's discs come one after another into BUNDLE."""
    one = click.option(
        "--one-drive",
        is_flag=True,
        help="BUNDLE is a drive's directory (e.g. /media/cdrom): the discs of a split bundle go in one after another, "
        "in any order, as asked (Enter on a terminal, else a line on stdin)",
    )
    command = click.option(
        "--media-command",
        metavar="CMD",
        help="with --one-drive, run 'CMD VOLUME...' to load one of the wanted discs instead of asking; it exits 0 once "
        "the disc is in BUNDLE (implies --one-drive)",
    )

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        """Add both options, in the order help lists them."""
        return one(command(f))

    return apply


def _check_volume(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--volume``'s value read once, at the edge: a number, vol-NN, or nothing (the volume in BUNDLE)."""
    if value is not None:
        volume_number(value)
    return value


def volume_option() -> Decorator:
    """``--volume [N]``: check one volume of a split bundle (alone: the one in BUNDLE)."""
    return click.option(
        "--volume",
        metavar="[N]",
        is_flag=False,
        flag_value="",
        default=None,
        callback=_check_volume,
        help="check one volume of a split bundle, N (3 or vol-03), or alone the disc in BUNDLE, against its signed "
        "listing; says which volumes are still unchecked",
    )


def trust_options(owner: str) -> Decorator:
    """``--trust``, ``--threshold`` and ``--from``, as sign, verify and install take them."""
    trust = trust_option(required=True, help="trusted public key (.pub) or a directory of them; repeatable")

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        """Add the three options, in the order help lists them."""
        return trust(threshold_option(owner)(from_option()(f)))

    return apply


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record ``--quiet`` (the group's or the command's) in the run's Invocation."""
    if value:
        ctx.ensure_object(render.Invocation).quiet = True
    return value


def quiet_option() -> Decorator:
    """``-q/--quiet`` on a subcommand, the same as on the group: no progress output (``--progress none``)."""
    return click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="no progress output (--progress none)"
    )


def progress_options() -> Decorator:
    """``-q/--quiet`` and ``--progress``, as every command that reports progress takes them."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        """Add both options, in the order help lists them."""
        return quiet_option()(progress_option()(f))

    return apply


def trusted_keys(paths: Sequence[Path]) -> tuple[PublicKey, ...]:
    """The keys that ``--trust`` names (files or directories of .pub files)."""
    return tuple(keys.load_trusted(list(paths)))


def passphrase(env_name: str | None) -> bytes | None:
    """The passphrase in the environment variable ``env_name`` (None without one); unset or empty is an error."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise UsageError(f"environment variable {env_name} is not set", hint="export the passphrase in that variable first")
    if not value:
        raise UsageError(f"environment variable {env_name} is empty")
    return value.encode()


def key_passphrase(key_path: Path, env_name: str | None) -> bytes | None:
    """The passphrase for a private key: from $VAR, else asked on a terminal when the key is encrypted."""
    warning = keys.weak_key_warning(key_path)
    if warning:
        render.echo(warning, err=True)
    if env_name:
        return passphrase(env_name)
    if keys.is_encrypted(key_path) and sys.stdin.isatty():
        return _ask_passphrase(key_path)
    return None


PASSPHRASE_ATTEMPTS = 3  # at a prompt, as sudo and ssh allow


def _ask_passphrase(key_path: Path) -> bytes:
    """A key file's passphrase asked on the terminal, each answer checked against the key: three attempts."""
    attempt = 1
    while True:
        given = str(click.prompt(f"passphrase for {printable(str(key_path))}", hide_input=True, err=True)).encode()
        try:
            keys.load_private(key_path, given)
        except keys.WrongPassphrase:
            if attempt == PASSPHRASE_ATTEMPTS:
                raise
            left = PASSPHRASE_ATTEMPTS - attempt
            render.echo(f"wrong passphrase, try again ({left} attempt{'s' if left > 1 else ''} left)", err=True)
            attempt += 1
            continue
        return given


def token_pin(env_name: str | None) -> Callable[[str], str]:
    """A token's user PIN, read when the token asks for a login: from $VAR, else asked on a terminal."""

    def pin(token: str) -> str:
        """The PIN for the token labelled ``token``."""
        if env_name:
            value = os.environ.get(env_name)
            if not value:
                raise UsageError(
                    f"environment variable {env_name} is {'empty' if value == '' else 'not set'}",
                    hint="export the token's PIN in that variable first",
                )
            return value
        if sys.stdin.isatty():
            return str(click.prompt(f"PIN for token {printable(token)}", hide_input=True, err=True))
        raise UsageError(
            f"token {token!r} needs its user PIN", hint="give it with --pin-env VAR (or at the prompt on a terminal)"
        )

    return pin


def signing_key(text: str, passphrase_env: str | None, pkcs11_module: str | None, pin_env: str | None) -> keys.SigningKey:
    """What ``--key`` names, with what unlocks it: a key file's passphrase, or a token's module and PIN."""
    if not keys.is_token_key(text):
        if pin_env:
            raise UsageError("--pin-env is for a key on a token", hint="a key file takes --passphrase-env VAR")
        return keys.SigningKey(text, passphrase=key_passphrase(Path(text), passphrase_env), pkcs11_module=pkcs11_module)
    if passphrase_env:
        raise UsageError("--passphrase-env is for a key file", hint="a key on a token takes its PIN from --pin-env VAR")
    return keys.SigningKey(text, pkcs11_module=pkcs11_module, pin=token_pin(pin_env))


def new_key_passphrase(env_name: str | None, no_passphrase: bool) -> bytes | None:
    """The passphrase for a new key: from $VAR, none with --no-passphrase, else asked twice on a terminal."""
    if env_name and no_passphrase:
        raise UsageError("--passphrase-env and --no-passphrase exclude each other")
    if env_name:
        return passphrase(env_name)
    if no_passphrase:
        return None
    if sys.stdin.isatty():
        return _ask_new_passphrase()
    raise UsageError(
        "no passphrase for the new private key",
        hint="give one with --passphrase-env VAR (or at the prompt on a terminal); --no-passphrase writes it unencrypted",
    )


def _ask_new_passphrase() -> bytes:
    """A new key's passphrase asked twice on the terminal; answers that differ are asked again (three attempts)."""
    for _ in range(PASSPHRASE_ATTEMPTS):
        first = str(click.prompt("passphrase for the new key", hide_input=True, err=True))
        again = str(click.prompt("the same passphrase again", hide_input=True, err=True))
        if first == again:
            return first.encode()
        render.echo("the two passphrases differ, try again", err=True)
    raise UsageError(
        f"the passphrases differed {PASSPHRASE_ATTEMPTS} times: no key was written",
        hint="run the same keygen again, or give the passphrase with --passphrase-env VAR",
    )
