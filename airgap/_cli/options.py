"""Options and parameter types shared by the commands, each declared once.

A default that the core also declares (an ``Options`` dataclass field, a function parameter) is read from the
core with :func:`core_default`, never written here a second time.  Sizes are parsed by one parameter type
before any work starts; passphrases are read from the environment or a terminal prompt.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from airgap._cli import render
from airgap.errors import UsageError
from airgap.model.units import parse_media_size, parse_size
from airgap.trust import keys
from airgap.trust.keys import PublicKey

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def core_default(owner: Callable[..., object], name: str, kind: type[T]) -> T:
    """The default the core declares for ``name``: a field of an options dataclass or a function's parameter."""
    default = inspect.signature(owner).parameters[name].default
    if not isinstance(default, kind):
        raise TypeError(f"{owner.__qualname__}.{name} declares no {kind.__name__} default")
    return default


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


def part_size_option(default: int) -> Decorator:
    """``--part-size``, read with the medium-aware size type; ``default`` comes from the core."""
    return click.option("--part-size", type=MEDIA_SIZE, default=size_text(default), show_default=True, help=PART_SIZE_HELP)


def chunk_size_option(default: int, help: str) -> Decorator:
    """``--chunk-size``: the largest single upload request; ``default`` comes from the core."""
    return click.option("--chunk-size", type=SIZE, default=size_text(default), show_default=True, help=help)


def key_option() -> Decorator:
    """``--key``: the private signing key."""
    return click.option("--key", "key_path", required=True, type=click.Path(path_type=Path), help="signing key (PREFIX.key)")


def passphrase_env_option(help: str = "the key's passphrase is in $VAR") -> Decorator:
    """``--passphrase-env VAR``: the name of the variable holding a key's passphrase."""
    return click.option("--passphrase-env", metavar="VAR", help=help)


def out_option() -> Decorator:
    """``-o/--out``: the bundle directory a command writes."""
    return click.option(
        "-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="bundle directory to write"
    )


def json_option(help: str = "print the result as JSON") -> Decorator:
    """``--json``: machine-readable output instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def plain_http_option(help: str) -> Decorator:
    """``--plain-http``: talk to a registry without TLS."""
    return click.option("--plain-http", is_flag=True, help=help)


def platform_option(help: str) -> Decorator:
    """``--platform``: os/arch[/variant] (checked by the core, which owns the platform grammar)."""
    return click.option("--platform", help=help)


def trust_option(required: bool, help: str) -> Decorator:
    """``--trust``: a public key file or a directory of them, repeatable."""
    return click.option("--trust", "trust", multiple=True, required=required, type=click.Path(path_type=Path), help=help)


def threshold_option(owner: Callable[..., object]) -> Decorator:
    """``--threshold``: at least 1, rejected by click before any work; the default is ``owner``'s."""
    return click.option(
        "--threshold",
        default=core_default(owner, "threshold", int),
        show_default=True,
        type=click.IntRange(min=1),
        help="valid signatures from distinct trusted keys required",
    )


def jobs_option(owner: Callable[..., object]) -> Decorator:
    """``--jobs``: parts hashed at once, at least 1; the default (the CPU count) is ``owner``'s."""
    return click.option(
        "--jobs",
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


def trust_options(owner: Callable[..., object]) -> Decorator:
    """``--trust``, ``--threshold`` and ``--from``, as sign, verify and install take them."""
    trust = trust_option(required=True, help="trusted public key (.pub) or a directory of them; repeatable")

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        """Add the three options, in the order help lists them."""
        return trust(threshold_option(owner)(from_option()(f)))

    return apply


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record a subcommand's ``--quiet`` where the group's is kept."""
    if value:
        ctx.ensure_object(dict)
        ctx.find_root().ensure_object(dict)["quiet"] = True
    return value


def quiet_option() -> Decorator:
    """``-q/--quiet`` on a subcommand, the same as on the group: no progress output."""
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="no progress output")


def is_quiet(ctx: click.Context) -> bool:
    """Whether ``--quiet`` was given, to the group or to the command."""
    obj = ctx.find_root().obj
    return bool(obj.get("quiet")) if isinstance(obj, dict) else False


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
        return str(click.prompt(f"passphrase for {key_path}", hide_input=True, err=True)).encode()
    return None


def new_key_passphrase(env_name: str | None, no_passphrase: bool) -> bytes | None:
    """The passphrase for a new key: from $VAR, none with --no-passphrase, else asked twice on a terminal."""
    if env_name and no_passphrase:
        raise UsageError("--passphrase-env and --no-passphrase exclude each other")
    if env_name:
        return passphrase(env_name)
    if no_passphrase:
        return None
    if sys.stdin.isatty():
        return str(click.prompt("passphrase for the new key", hide_input=True, confirmation_prompt=True, err=True)).encode()
    raise UsageError(
        "no passphrase for the new private key",
        hint="give one with --passphrase-env VAR (or at the prompt on a terminal); --no-passphrase writes it unencrypted",
    )
