"""The airgap command line: parse, build options, call the core, render.  No business logic here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from airgap import __version__
from airgap._cli.reporters import for_terminal
from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import json_safe, printable, printable_lines
from airgap.errors import Error, ExitCode, UsageError
from airgap.progress import Reporter
from airgap.trust import keys

_PART_SIZE_HELP = "largest part file, e.g. 4GiB, 700MB, or a medium: fat32 (4GiB-1), dvd, dvd-dl, bd25, bd50"


def _passphrase(env_name: str | None) -> bytes | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise UsageError(f"environment variable {env_name} is not set", hint="export the passphrase in that variable first")
    if not value:
        raise UsageError(f"environment variable {env_name} is empty")
    return value.encode()


def _key_passphrase(key_path: Path, env_name: str | None) -> bytes | None:
    """The passphrase for a private key: from $VAR, else asked on a terminal when the key is encrypted."""
    warning = keys.weak_key_warning(key_path)
    if warning:
        _echo(warning, err=True)
    if env_name:
        return _passphrase(env_name)
    if keys.is_encrypted(key_path) and sys.stdin.isatty():
        return str(click.prompt(f"passphrase for {key_path}", hide_input=True, err=True)).encode()
    return None


def _reporter(ctx: click.Context) -> Reporter:
    return for_terminal(bool(ctx.find_root().obj.get("quiet")))  # type: ignore[return-value]


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(dict)
        ctx.find_root().ensure_object(dict)["quiet"] = True
    return value


_quiet_option = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="no progress output")


def _echo(line: str, err: bool = False) -> None:
    """One line of output, escaped: names from bundles and sources never reach the terminal raw."""
    click.echo(printable(line), err=err)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(json_safe(data), indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="airgap")
@click.option("-q", "--quiet", is_flag=True, help="no progress output")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Move container images into air-gapped networks as signed, chunked zstd bundles."""
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="writes OUT.key and OUT.pub")
@click.option("--passphrase-env", metavar="VAR", help="encrypt the private key with the passphrase in $VAR")
@click.option("--no-passphrase", is_flag=True, help="write the private key unencrypted (not recommended)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def keygen(out: Path, passphrase_env: str | None, no_passphrase: bool, as_json: bool) -> None:
    """Create an Ed25519 signing key pair (private key file mode 0600, encrypted unless --no-passphrase)."""
    if passphrase_env and no_passphrase:
        raise UsageError("--passphrase-env and --no-passphrase exclude each other")
    if passphrase_env:
        passphrase: bytes | None = _passphrase(passphrase_env)
    elif no_passphrase:
        passphrase = None
    elif sys.stdin.isatty():
        passphrase = str(click.prompt("passphrase for the new key", hide_input=True, confirmation_prompt=True, err=True)).encode()
    else:
        raise UsageError(
            "no passphrase for the new private key",
            hint="give one with --passphrase-env VAR (or at the prompt on a terminal); --no-passphrase writes it unencrypted",
        )
    key_path, pub_path, fp = keys.generate(out, passphrase)
    if as_json:
        _emit_json({"private_key": str(key_path), "public_key": str(pub_path), "fingerprint": fp})
    else:
        _echo(f"private key  {key_path}  (keep it offline)")
        _echo(f"public key   {pub_path}  (give it to whoever verifies or installs)")
        _echo(f"fingerprint  {fp}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="bundle directory to write")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path), help="signing key (PREFIX.key)")
@click.option("--passphrase-env", metavar="VAR", help="the key's passphrase is in $VAR")
@click.option("--part-size", default="1GiB", show_default=True, help=_PART_SIZE_HELP)
@click.option(
    "--media-dir-size",
    metavar="SIZE",
    help="split the bundle into vol-NN folders, one per medium of this size (e.g. dvd, bd25, 32GB), each with a listing",
)
@click.option("--level", default=3, show_default=True, type=int, help="zstd level, 1-19 (up to 22 with more memory)")
@click.option(
    "--long", "long_distance", is_flag=True, help="zstd long-distance matching (128 MiB window; install needs that much memory)"
)
@click.option("--name", help="bundle name (default: the first image's repository)")
@click.option("--sequence", type=click.IntRange(min=0), help="bundle sequence number (default: creation time in seconds)")
@click.option("--expires", help="bundle expires: 30d, 12h, 90m after creation, or a UTC time 2027-01-31T00:00:00Z")
@click.option(
    "--platform",
    help="registry and OCI sources: os/arch[/variant], comma-separated, or 'all' (registry default: this host's)",
)
@click.option("--plain-http", is_flag=True, help="talk plain HTTP to registry sources (loopback registries always do)")
@click.option(
    "--with-installer",
    is_flag=True,
    help="also add airgap and its dependencies as wheels (installer/wheels) for an offline 'pip install'",
)
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False),
    help="with --with-installer: take the wheels from this directory instead of downloading them with pip",
)
@click.option(
    "--since",
    type=click.Path(path_type=Path, exists=True),
    help="a delta: leave out the layers an older bundle already has (its directory or manifest.json)",
)
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(path_type=Path),
    help="with --since: a key (.pub or a directory of them) that may have signed the older bundle, besides --key",
)
@click.option("--overwrite", is_flag=True, help="replace the contents of a non-empty output directory")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_quiet_option
@click.pass_context
def pack(
    ctx: click.Context,
    images: tuple[str, ...],
    out_dir: Path,
    key_path: Path,
    passphrase_env: str | None,
    part_size: str,
    media_dir_size: str | None,
    level: int,
    long_distance: bool,
    name: str | None,
    sequence: int | None,
    expires: str | None,
    platform: str | None,
    plain_http: bool,
    with_installer: bool,
    wheelhouse: Path | None,
    since: Path | None,
    trust: tuple[Path, ...],
    overwrite: bool,
    as_json: bool,
) -> None:
    """Pack IMAGES into a signed bundle.

    Each IMAGE is a name in the Docker engine (DOCKER_HOST), docker-archive:PATH, oci-archive:PATH[:REPO],
    or an image in a registry, oci://HOST[:PORT]/REPO:TAG (no Docker engine needed).
    """
    from airgap import pack as core
    from airgap.model.units import parse_media_size

    options = core.PackOptions(
        sources=tuple(core.parse_source(s) for s in images),
        out_dir=out_dir,
        key_path=key_path,
        passphrase=_key_passphrase(key_path, passphrase_env),
        part_size=parse_media_size(part_size),
        media_dir_size=parse_media_size(media_dir_size) if media_dir_size else None,
        level=level,
        long_distance=long_distance,
        overwrite=overwrite,
        name=name,
        sequence=sequence,
        expires=expires,
        platform=platform,
        plain_http=plain_http,
        with_installer=with_installer or wheelhouse is not None,
        wheelhouse=wheelhouse,
        since=since,
        trusted=tuple(keys.load_trusted(list(trust))) if trust else (),
    )
    result = core.pack(options, _reporter(ctx))
    if as_json:
        _emit_json(result.to_dict())
        return
    m = result.manifest
    for image in m.images:
        _echo(f"packed {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}")
    _echo(
        f"bundle {out_dir}: {len(m.parts)} parts, {human_bytes(m.total_part_bytes)} from {human_bytes(result.input_bytes)}"
        f" in {result.seconds:.1f}s; signed by {result.signer}"
    )


def _trust_options(f: Any) -> Any:
    f = click.option(
        "--from",
        "search",
        multiple=True,
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        help="another directory holding parts (a mounted volume of a split bundle); repeatable",
    )(f)
    f = click.option(
        "--threshold",
        default=1,
        show_default=True,
        type=click.IntRange(min=1),
        help="valid signatures from distinct trusted keys required",
    )(f)
    return click.option(
        "--trust",
        "trust",
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="trusted public key (.pub) or a directory of them; repeatable",
    )(f)


@cli.command(name="sign")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path), help="signing key (PREFIX.key)")
@click.option("--passphrase-env", metavar="VAR", help="the key's passphrase is in $VAR")
@_trust_options
@click.option("--allow-expired", is_flag=True, help="sign a bundle past its expiry date")
@click.option("--jobs", default=os.cpu_count() or 1, show_default=True, type=click.IntRange(min=1), help="parts hashed at once")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_quiet_option
@click.pass_context
def sign_command(
    ctx: click.Context,
    bundle: Path,
    key_path: Path,
    passphrase_env: str | None,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    allow_expired: bool,
    jobs: int,
    as_json: bool,
) -> None:
    """Add a signature to an existing bundle: its signatures are checked against --trust and every part is
    hashed first, so a signer never vouches for a bundle changed since it was signed."""
    from airgap import sign as core

    options = core.SignOptions(
        bundle,
        key_path,
        tuple(keys.load_trusted(list(trust))),
        threshold,
        _key_passphrase(key_path, passphrase_env),
        jobs,
        allow_expired,
        search,
    )
    result = core.sign(options, _reporter(ctx))
    if as_json:
        _emit_json(result.to_dict())
        return
    _echo(f"signed {bundle} as {result.fingerprint}; {len(result.signers)} signature(s) now")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@_trust_options
@click.option("--jobs", default=os.cpu_count() or 1, show_default=True, type=click.IntRange(min=1), help="parts hashed at once")
@click.option("--allow-expired", is_flag=True, help="accept a bundle past its expiry date (reported as expired)")
@click.option("--allow-unexpected", is_flag=True, help="only warn about files the manifest does not list")
@click.option("--receipt", "receipt", type=click.Path(path_type=Path), help="write a JSON record of every check and its outcome")
@click.option("--receipt-key", type=click.Path(path_type=Path), help="sign the receipt with this key (writes RECEIPT.sig)")
@click.option("--passphrase-env", metavar="VAR", help="the receipt key's passphrase is in $VAR")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
@_quiet_option
@click.pass_context
def verify(
    ctx: click.Context,
    bundle: Path,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    jobs: int,
    allow_expired: bool,
    allow_unexpected: bool,
    receipt: Path | None,
    receipt_key: Path | None,
    passphrase_env: str | None,
    as_json: bool,
) -> None:
    """Check a bundle's signature and every part, without installing anything."""
    from airgap import verify as core

    if receipt_key is not None and receipt is None:
        raise UsageError("--receipt-key needs --receipt FILE")
    options = core.VerifyOptions(
        bundle, tuple(keys.load_trusted(list(trust))), threshold, jobs, allow_expired, allow_unexpected, search
    )
    if receipt is not None:
        from airgap import receipt as receipts

        receipts.start(receipt, bundle)  # before the key loads: a failed run never leaves an old "pass" behind
    signer = keys.load_private(receipt_key, _key_passphrase(receipt_key, passphrase_env)) if receipt_key else None
    try:
        if receipt is not None:
            report = core.verify_with_receipt(options, receipt, signer, _reporter(ctx))
        else:
            report = core.verify(options, _reporter(ctx))
    except core.PartsFailed as e:
        if as_json and e.report is not None:
            _emit_json(e.report.to_dict())
        else:
            for part in e.bad:
                _echo(f"BAD  {part.kind} {part.path}: {part.problem}", err=True)
        raise
    if as_json:
        _emit_json(report.to_dict())
        return
    parts = sum(1 for p in report.parts if p.kind == "part")
    files = f" and {len(report.parts) - parts} files" if len(report.parts) > parts else ""
    _echo(f"OK: signature by {', '.join(report.trust.valid)}; {parts} parts{files} verified in {report.seconds:.1f}s")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the manifest and signers as JSON")
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds (reads the manifest only)."""
    from airgap import inspect as core

    result = core.inspect(bundle)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(printable_lines(result.render()))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@_trust_options
@click.option(
    "--to",
    "target",
    metavar="TARGET",
    help="registry://HOST[:PORT][/PREFIX], docker-archive:PATH or oci-archive:PATH (default: the Docker engine)",
)
@click.option("--plain-http", is_flag=True, help="talk plain HTTP to a registry target (loopback registries always do)")
@click.option("--chunk-size", default="128MiB", show_default=True, help="largest single upload request to a registry")
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="a delta's base bundle: supplies the layers the delta leaves out, when the target lacks them",
)
@click.option(
    "--via",
    type=click.Choice(["load", "registry"]),
    default="load",
    show_default=True,
    help="Docker engine: stream an image upload (load), or serve the bundle on 127.0.0.1 for the engine to pull",
)
@click.option("--replace", is_flag=True, help="move existing tags to the bundle's images (or overwrite the archive)")
@click.option("--platform", help="os/arch[/variant] to install (default: the engine's; other targets: every image)")
@click.option("--allow-expired", is_flag=True, help="install a bundle past its expiry date")
@click.option("--allow-unexpected", is_flag=True, help="ignore files in the bundle that the manifest does not list")
@click.option("--allow-downgrade", is_flag=True, help="install a bundle older than one of the same name installed before")
@click.option(
    "--state",
    "state",
    type=click.Path(path_type=Path),
    help="rollback state file (default: $AIRGAP_STATE or ~/.local/state/airgap/installed.json)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_quiet_option
@click.pass_context
def install(
    ctx: click.Context,
    bundle: Path,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    target: str | None,
    plain_http: bool,
    chunk_size: str,
    base: Path | None,
    via: str,
    replace: bool,
    platform: str | None,
    allow_expired: bool,
    allow_unexpected: bool,
    allow_downgrade: bool,
    state: Path | None,
    as_json: bool,
) -> None:
    """Verify a bundle and load its images into the Docker engine (DOCKER_HOST), or push them into a
    registry, or write them as an image archive (--to)."""
    from airgap import install as core
    from airgap.model.units import parse_size

    options = core.InstallOptions(
        bundle,
        tuple(keys.load_trusted(list(trust))),
        threshold,
        replace,
        platform,
        allow_expired=allow_expired,
        allow_unexpected=allow_unexpected,
        allow_downgrade=allow_downgrade,
        state=state,
        target=target,
        plain_http=plain_http,
        chunk_size=parse_size(chunk_size),
        via=via,
        search=search,
        base=base,
    )
    result = core.install(options, _reporter(ctx))
    if as_json:
        _emit_json(result.to_dict())
        return
    for image in result.images:
        where = f"  -> {image.location}" if image.location else ""
        digest = f"  manifest {image.manifest_digest}" if image.manifest_digest else ""
        _echo(f"{image.action}: {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}{where}{digest}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="oci://HOST[:PORT]/REPO:TAG")
@click.option("--plain-http", is_flag=True, help="talk plain HTTP (loopback registries always do)")
@click.option("--chunk-size", default="128MiB", show_default=True, help="largest single upload request")
@click.option("--replace", is_flag=True, help="move the tag if it names another artifact")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_quiet_option
@click.pass_context
def publish(
    ctx: click.Context, bundle: Path, target: str, plain_http: bool, chunk_size: str, replace: bool, as_json: bool
) -> None:
    """Upload a bundle to an OCI registry as an artifact (credentials: docker login, or $AIRGAP_REGISTRY_USER/_PASSWORD)."""
    from airgap import publish as core
    from airgap.model.units import parse_size

    result = core.publish(bundle, target, plain_http, replace, parse_size(chunk_size), _reporter(ctx))
    if as_json:
        _emit_json(result.to_dict())
        return
    _echo(
        f"published {bundle} as {result.reference}  {result.manifest_digest}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} sent of {human_bytes(result.bytes_total)}"
    )


@cli.command()
@click.argument("source", metavar="oci://HOST[:PORT]/REPO:TAG")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="bundle directory to write")
@click.option("--plain-http", is_flag=True, help="talk plain HTTP (loopback registries always do)")
@click.option("--overwrite", is_flag=True, help="replace a bundle already in the output directory")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@_quiet_option
@click.pass_context
def pull(ctx: click.Context, source: str, out_dir: Path, plain_http: bool, overwrite: bool, as_json: bool) -> None:
    """Download a published bundle; an interrupted pull resumes when run again.  Then run 'airgap verify'."""
    from airgap import publish as core

    result = core.pull(source, out_dir, plain_http, overwrite, _reporter(ctx))
    if as_json:
        _emit_json(result.to_dict())
        return
    _echo(
        f"pulled {result.reference} into {out_dir}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} downloaded of {human_bytes(result.bytes_total)}; now run 'airgap verify {out_dir}'"
    )


@cli.command(name="diff")
@click.argument("a", type=click.Path(path_type=Path, exists=True))
@click.argument("b", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print the differences as JSON")
def diff_command(a: Path, b: Path, as_json: bool) -> None:
    """Show which images, layers and bytes differ between bundles A and B (their directories or manifest.json)."""
    from airgap import diff as core

    result = core.diff(a, b)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(printable_lines(result.render()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code.  Errors become one line plus a hint on stderr."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="airgap", standalone_mode=False)
    except Error as e:
        _echo(f"error: {e.message}", err=True)  # escaped: names in a message never reach the terminal raw
        _echo(f"hint: {e.hint or e.default_hint}", err=True)
        return int(e.exit_code)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return int(ExitCode.USAGE)
    except click.Abort:
        click.echo("error: aborted", err=True)
        return int(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.INTERNAL)
    except Exception as e:
        if os.environ.get("AIRGAP_DEBUG"):
            raise
        _echo(f"error: internal error: {type(e).__name__}: {e}", err=True)
        click.echo("hint: this is a bug in airgap; rerun with AIRGAP_DEBUG=1 for a traceback and report it", err=True)
        return int(ExitCode.INTERNAL)
    return rv if isinstance(rv, int) else int(ExitCode.OK)


def run() -> NoReturn:
    sys.exit(main())
