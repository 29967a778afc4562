"""The airgap commands: each parses its options, builds the core's options object, calls one core function
and returns what :mod:`airgap._cli.render` makes of the result; :func:`main` prints it, or the failure, in
one place, so ``--json`` gives one JSON object for every outcome of every command.  No business logic here."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from click import shell_completion

from airgap._cli import discs, examples, render
from airgap._cli import options as opt
from airgap._cli.reporters import Tracker, choose
from airgap._version import __version__
from airgap.errors import UsageError
from airgap.model.manifest import SBOM_MODES
from airgap.progress import Reporter
from airgap.trust import keys
from airgap.trust.rollback import InstallState
from airgap.trust.rollback import default_path as default_state_path

# Each command imports its core module when it runs (and click reads the core's defaults when it needs
# them, see options.CoreDefault): starting airgap, or running one command, never loads the others.


def _reporter(ctx: click.Context) -> Reporter:
    """Progress for this run as --progress or -q asks (bars on a terminal, lines elsewhere, JSON events),
    tracked, so that an interruption can say how far the command got."""
    inv = ctx.ensure_object(render.Invocation)
    inv.tracker = Tracker(choose(inv.progress_mode(), inv.command))
    return inv.tracker


class Command(click.Command):
    """Every airgap command: records itself and its options in the run's Invocation before it runs; its
    help ends with its examples (:mod:`airgap._cli.examples`)."""

    def __init__(self, name: str | None, **attrs: Any) -> None:
        if attrs.get("epilog") is None and name is not None:
            attrs["epilog"] = examples.epilog(name)
        super().__init__(name, **attrs)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; its callback returns a render.Output, which main prints."""
        inv = ctx.ensure_object(render.Invocation)
        inv.command = self.name
        inv.params = dict(ctx.params)
        return super().invoke(ctx)


ALIASES = {"installed": "list"}  # another name a command answers to (not listed in --help)


class Group(click.Group):
    """The airgap group: its commands are :class:`Command`; a command's alias (:data:`ALIASES`) runs it."""

    command_class = Command

    def __init__(self, name: str | None = None, **attrs: Any) -> None:
        if attrs.get("epilog") is None:
            attrs["epilog"] = examples.epilog("airgap")
        super().__init__(name, **attrs)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command named ``cmd_name``, or the one it is an alias of."""
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="airgap")
@opt.progress_options()
def cli() -> None:
    """Move container images into air-gapped networks as signed, chunked zstd bundles."""


@cli.command(name="keygen")
@click.option("--out", "out", required=True, type=opt.OUTPUT_PREFIX, help="writes OUT.key and OUT.pub (with --pkcs11: OUT.pub)")
@opt.passphrase_env_option(help="encrypt the private key with the passphrase in $VAR")
@click.option("--no-passphrase", is_flag=True, help="write the private key unencrypted (not recommended)")
@click.option(
    "--pkcs11",
    "token_uri",
    metavar="URI",
    help="make the key pair on a PKCS#11 token instead, 'pkcs11:token=LABEL;object=NEW-LABEL'; writes only OUT.pub",
)
@opt.token_options()
@opt.json_option()
def keygen_command(
    out: Path,
    passphrase_env: str | None,
    no_passphrase: bool,
    token_uri: str | None,
    pkcs11_module: str | None,
    pin_env: str | None,
) -> render.Output:
    """Create an Ed25519 signing key pair (private key file mode 0600, encrypted unless --no-passphrase), or
    with --pkcs11 on a token, whose private key never leaves it."""
    if token_uri is None:
        if pkcs11_module or pin_env:
            raise UsageError("--pkcs11-module and --pin-env are for --pkcs11 URI", hint="a key file takes --passphrase-env VAR")
        key_path, pub_path, fingerprint = keys.generate(out, opt.new_key_passphrase(passphrase_env, no_passphrase))
        return render.keygen_result(key_path, pub_path, fingerprint)
    if passphrase_env or no_passphrase:
        raise UsageError(
            "--passphrase-env and --no-passphrase are for a key file", hint="a token's key is guarded by its PIN (--pin-env VAR)"
        )
    if not keys.is_token_key(token_uri):
        raise UsageError("--pkcs11 takes a pkcs11: URI", hint="e.g. --pkcs11 'pkcs11:token=LABEL;object=release-2027'")
    key = opt.signing_key(token_uri, None, pkcs11_module, pin_env)
    pub_path, fingerprint = keys.generate_on_token(out, key)
    return render.keygen_result(token_uri, pub_path, fingerprint)


@cli.command(name="pack")
@click.argument("images", nargs=-1, required=True)
@opt.out_option()
@opt.key_option()
@opt.passphrase_env_option()
@opt.token_options()
@opt.part_size_option("airgap.pack:PackOptions")
@click.option(
    "--media-dir-size",
    metavar="SIZE",
    type=opt.OPTIONAL_MEDIA_SIZE,
    help="split the bundle into vol-NN folders, one per medium of this size (e.g. dvd, bd25, 32GB), each with a listing",
)
@click.option(
    "--level",
    cls=opt.CoreOption,
    default=opt.core_default("airgap.pack:PackOptions", "level", int),
    show_default=True,
    type=int,
    help="zstd level, 1-19 (up to 22 with more memory)",
)
@click.option(
    "--long", "long_distance", is_flag=True, help="zstd long-distance matching (128 MiB window; install needs that much memory)"
)
@click.option("--name", help="bundle name (default: the first image's repository)")
@click.option("--sequence", type=click.IntRange(min=0), help="bundle sequence number (default: creation time in seconds)")
@click.option("--expires", help="bundle expires: 30d, 12h, 90m after creation, or a UTC time 2027-01-31T00:00:00Z")
@opt.platform_option(
    help="registry and OCI sources: os/arch[/variant], comma-separated, or 'all' (registry default: this host's)"
)
@opt.plain_http_option(help="talk plain HTTP to registry sources (loopback registries always do)")
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
@opt.trust_option(
    required=False, help="with --since: a key (.pub or a directory of them) that may have signed the older bundle, besides --key"
)
@click.option("--overwrite", is_flag=True, help="replace the contents of a non-empty output directory")
@click.option(
    "--sbom",
    type=click.Choice(SBOM_MODES),
    cls=opt.CoreOption,
    default=opt.core_default("airgap.pack:PackOptions", "sbom", str),
    show_default=True,
    help="a signed CycloneDX inventory of each image (packages, GGUF models); 'require': refuse an incomplete one",
)
@opt.json_option()
@opt.progress_options()
@click.pass_context
def pack_command(
    ctx: click.Context,
    images: tuple[str, ...],
    out_dir: Path,
    key_text: str,
    passphrase_env: str | None,
    pkcs11_module: str | None,
    pin_env: str | None,
    part_size: int,
    media_dir_size: int | None,
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
    sbom: str,
) -> render.Output:
    """Pack IMAGES into a signed bundle.

    Each IMAGE is a name in the Docker engine (DOCKER_HOST), docker-archive:PATH, oci-archive:PATH[:REPO],
    or an image in a registry, oci://HOST[:PORT]/REPO:TAG (no Docker engine needed).
    """
    from airgap.pack import PackOptions, pack, parse_source

    options = PackOptions(
        sources=tuple(parse_source(s) for s in images),
        out_dir=out_dir,
        key=opt.signing_key(key_text, passphrase_env, pkcs11_module, pin_env),
        part_size=part_size,
        media_dir_size=media_dir_size,
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
        trusted=opt.trusted_keys(trust) if trust else (),
        sbom=sbom,
    )
    return render.pack_result(pack(options, _reporter(ctx)))


@cli.command(name="sign")
@click.argument("bundle", type=click.Path(path_type=Path))
@opt.key_option()
@opt.passphrase_env_option()
@opt.token_options()
@opt.trust_options("airgap.sign:SignOptions")
@opt.one_drive_options()
@click.option("--allow-expired", is_flag=True, help="sign a bundle past its expiry date")
@opt.jobs_option("airgap.sign:SignOptions")
@opt.json_option()
@opt.progress_options()
@click.pass_context
def sign_command(
    ctx: click.Context,
    bundle: Path,
    key_text: str,
    passphrase_env: str | None,
    pkcs11_module: str | None,
    pin_env: str | None,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    one_drive: bool,
    media_command: str | None,
    allow_expired: bool,
    jobs: int,
) -> render.Output:
    """Add a signature to an existing bundle: its signatures are checked against --trust and every part is
    hashed first (or known from 'airgap verify' on this host), so a signer never vouches for a bundle changed
    since it was signed."""
    from airgap.sign import SignOptions, sign

    inv = ctx.ensure_object(render.Invocation)
    with discs.changer(one_drive, media_command, inv.command, inv.progress_mode() == "json") as changer:
        options = SignOptions(
            bundle=bundle,
            key=opt.signing_key(key_text, passphrase_env, pkcs11_module, pin_env),
            trusted=opt.trusted_keys(trust),
            threshold=threshold,
            jobs=jobs,
            allow_expired=allow_expired,
            search=search,
            changer=changer,
        )
        return render.sign_result(sign(options, _reporter(ctx)))


@cli.command(name="verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@opt.trust_options("airgap.verify:VerifyOptions")
@opt.volume_option()
@opt.one_drive_options()
@opt.jobs_option("airgap.verify:VerifyOptions")
@click.option("--allow-expired", is_flag=True, help="accept a bundle past its expiry date (reported as expired)")
@click.option("--allow-unexpected", is_flag=True, help="only warn about files the manifest does not list")
@click.option("--receipt", "receipt", type=opt.OUTPUT_FILE, help="write a JSON record of every check and its outcome")
@click.option(
    "--receipt-key", metavar="KEY", help="sign the receipt with this key, a key file or a pkcs11: URI (writes RECEIPT.sig)"
)
@opt.passphrase_env_option(help="the receipt key's passphrase is in $VAR")
@opt.token_options()
@click.option(
    "--state",
    "state",
    type=click.Path(path_type=Path, dir_okay=False),
    help="install state file beside which the parts verified here are recorded, for install and sign to skip "
    "hashing them again (default: $AIRGAP_STATE or ~/.local/state/airgap/installed.json)",
)
@click.option("--no-cache", is_flag=True, help="record no verified part on this host (install and sign then hash every part)")
@opt.json_option(help="print the full report as JSON")
@opt.progress_options()
@click.pass_context
def verify_command(
    ctx: click.Context,
    bundle: Path,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    volume: str | None,
    one_drive: bool,
    media_command: str | None,
    jobs: int,
    allow_expired: bool,
    allow_unexpected: bool,
    receipt: Path | None,
    receipt_key: str | None,
    passphrase_env: str | None,
    pkcs11_module: str | None,
    pin_env: str | None,
    state: Path | None,
    no_cache: bool,
) -> render.Output:
    """Check a bundle's signature and every part (or one volume's, as discs are burned or arrive), without
    installing anything."""
    from airgap import receipt as receipts
    from airgap.verify import PartsFailed, VerifyOptions, verify, verify_with_receipt

    if receipt_key is not None and receipt is None:
        raise UsageError("--receipt-key needs --receipt FILE")
    inv = ctx.ensure_object(render.Invocation)
    with discs.changer(one_drive, media_command, inv.command, inv.progress_mode() == "json") as changer:
        options = VerifyOptions(
            bundle=bundle,
            trusted=opt.trusted_keys(trust),
            threshold=threshold,
            jobs=jobs,
            allow_expired=allow_expired,
            allow_unexpected=allow_unexpected,
            search=search,
            volume=volume,
            changer=changer,
            state=state,
            cache=not no_cache,
        )
        if receipt is not None:
            receipts.start(receipt, bundle)  # before the key loads: a failed run never leaves an old "pass" behind
        key = opt.signing_key(receipt_key, passphrase_env, pkcs11_module, pin_env) if receipt_key else None
        # a key on a token stays logged in until the receipt is signed
        with keys.open_signer(key) if key is not None else nullcontext() as signer:
            try:
                if receipt is not None:
                    report = verify_with_receipt(options, receipt, signer, _reporter(ctx))
                else:
                    report = verify(options, _reporter(ctx))
            except PartsFailed as e:
                render.verify_failure(e, inv)
                raise
    return render.verify_result(report)


@cli.command(name="inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--sbom", is_flag=True, help="also show each image's inventory: packages and models, from its signed SBOM")
@opt.trust_option(required=False, help="check the signature with this key (.pub or a directory of them) first")
@opt.json_option(help="print the manifest and signers as JSON")
def inspect_command(bundle: Path, sbom: bool, trust: tuple[Path, ...]) -> render.Output:
    """Show what a bundle holds (reads the manifest only; with --sbom, the images' SBOMs too, checked against
    the manifest, and with --trust after the signature check)."""
    from airgap.inspect import inspect

    return render.inspect_result(inspect(bundle, sbom, opt.trusted_keys(trust) if trust else ()))


@cli.command(name="install")
@click.argument("bundle", type=click.Path(path_type=Path))
@opt.trust_options("airgap.install:InstallOptions")
@opt.one_drive_options()
@click.option(
    "--to",
    "target",
    type=opt.TARGET,
    metavar="TARGET",
    help="registry://HOST[:PORT][/PREFIX], containerd://[SOCKET][?namespace=NS], docker-archive:PATH or "
    "oci-archive:PATH (default: the Docker engine, or Podman's service, at DOCKER_HOST)",
)
@opt.plain_http_option(help="talk plain HTTP to a registry target (loopback registries always do)")
@opt.chunk_size_option("airgap.install:InstallOptions", "chunk_size", help="largest single upload request to a registry")
@click.option(
    "--keep-host",
    is_flag=True,
    help="registry target: push each image to PREFIX/<its registry host>/<repository> (names that differ only in "
    "their host stay apart)",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="a delta's base bundle: supplies the layers the delta leaves out, when the target lacks them",
)
@click.option(
    "--via",
    type=click.Choice(["load", "registry"]),
    cls=opt.CoreOption,
    default=opt.core_default("airgap.install:InstallOptions", "via", str),
    show_default=True,
    help="Docker engine: stream an image upload (load), or serve the bundle on 127.0.0.1 for the engine to pull",
)
@click.option("--replace", is_flag=True, help="move existing tags to the bundle's images (or overwrite the archive)")
@opt.platform_option(help="os/arch[/variant] to install (default: the engine's; other targets: every image)")
@click.option("--allow-expired", is_flag=True, help="install a bundle past its expiry date")
@click.option("--allow-unexpected", is_flag=True, help="ignore files in the bundle that the manifest does not list")
@click.option("--allow-downgrade", is_flag=True, help="install a bundle older than one of the same name installed before")
@click.option(
    "--state",
    "state",
    type=click.Path(path_type=Path),
    help="rollback state file (default: $AIRGAP_STATE or ~/.local/state/airgap/installed.json)",
)
@opt.json_option()
@opt.progress_options()
@click.pass_context
def install_command(
    ctx: click.Context,
    bundle: Path,
    trust: tuple[Path, ...],
    threshold: int,
    search: tuple[Path, ...],
    one_drive: bool,
    media_command: str | None,
    target: str | None,
    plain_http: bool,
    chunk_size: int,
    keep_host: bool,
    base: Path | None,
    via: str,
    replace: bool,
    platform: str | None,
    allow_expired: bool,
    allow_unexpected: bool,
    allow_downgrade: bool,
    state: Path | None,
) -> render.Output:
    """Verify a bundle and load its images into the Docker engine or Podman (DOCKER_HOST), or import them
    into containerd, push them into a registry, or write them as an image archive (--to)."""
    from airgap.install import InstallOptions, install

    inv = ctx.ensure_object(render.Invocation)
    with discs.changer(one_drive, media_command, inv.command, inv.progress_mode() == "json") as changer:
        options = InstallOptions(
            bundle=bundle,
            trusted=opt.trusted_keys(trust),
            threshold=threshold,
            replace=replace,
            platform=platform,
            allow_expired=allow_expired,
            allow_unexpected=allow_unexpected,
            allow_downgrade=allow_downgrade,
            state=state,
            target=target,
            plain_http=plain_http,
            chunk_size=chunk_size,
            keep_host=keep_host,
            via=via,
            search=search,
            base=base,
            changer=changer,
        )
        result = install(options, _reporter(ctx))
    return render.install_result(result, ids_only=inv.quiet and not sys.stdout.isatty())


@cli.command(name="publish")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="oci://HOST[:PORT]/REPO:TAG")
@opt.plain_http_option(help="talk plain HTTP (loopback registries always do)")
@opt.chunk_size_option("airgap.publish:publish", "chunk", help="largest single upload request")
@click.option("--replace", is_flag=True, help="move the tag if it names another artifact")
@opt.json_option()
@opt.progress_options()
@click.pass_context
def publish_command(
    ctx: click.Context, bundle: Path, target: str, plain_http: bool, chunk_size: int, replace: bool
) -> render.Output:
    """Upload a bundle to an OCI registry as an artifact (credentials: docker login, or $AIRGAP_REGISTRY_USER/_PASSWORD)."""
    from airgap.publish import publish

    return render.publish_result(publish(bundle, target, plain_http, replace, chunk_size, _reporter(ctx)))


@cli.command(name="pull")
@click.argument("source", metavar="oci://HOST[:PORT]/REPO:TAG")
@opt.out_option()
@opt.plain_http_option(help="talk plain HTTP (loopback registries always do)")
@click.option("--overwrite", is_flag=True, help="replace a bundle already in the output directory")
@opt.json_option()
@opt.progress_options()
@click.pass_context
def pull_command(ctx: click.Context, source: str, out_dir: Path, plain_http: bool, overwrite: bool) -> render.Output:
    """Download a published bundle; an interrupted pull resumes when run again.  Then run 'airgap verify'."""
    from airgap.publish import pull

    return render.pull_result(pull(source, out_dir, plain_http, overwrite, _reporter(ctx)))


@cli.command(name="diff")
@click.argument("a", type=click.Path(path_type=Path, exists=True))
@click.argument("b", type=click.Path(path_type=Path, exists=True))
@opt.json_option(help="print the differences as JSON")
def diff_command(a: Path, b: Path) -> render.Output:
    """Show which images, layers and bytes differ between bundles A and B (their directories or manifest.json)."""
    from airgap.diff import diff

    return render.diff_result(diff(a, b))


@cli.command(name="list")
@click.option(
    "--state",
    "state",
    type=click.Path(path_type=Path, dir_okay=False),
    help="rollback state file to read (default: $AIRGAP_STATE or ~/.local/state/airgap/installed.json)",
)
@opt.json_option(help="print the installed bundles as JSON")
def list_command(state: Path | None) -> render.Output:
    """Show what this host installed.

    Per bundle name, from the install state: the newest sequence installed (the rollback mark), its manifest
    sha256 and when, who signed it and which images it delivered.  Also run as 'airgap installed'."""
    path = state or default_state_path()
    return render.list_result(path, InstallState(path).entries())


COMPLETE_VAR = "_AIRGAP_COMPLETE"  # click's completion protocol: the shell runs airgap with it set


@cli.command(name="completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@opt.json_option(help="print the script inside a JSON object")
def completion_command(shell: str) -> render.Output:
    """Print the script that makes SHELL complete airgap's commands, options and paths."""
    complete = shell_completion.get_completion_class(shell)
    if complete is None:  # click knows every shell the Choice offers
        raise UsageError(f"no completion for {shell}")
    script = complete(cli, {}, "airgap", COMPLETE_VAR).source()
    return render.Output({"shell": shell, "script": script}, script.splitlines())


@contextmanager
def _terminate_like_interrupt(inv: render.Invocation) -> Iterator[None]:
    """For the block, SIGTERM unwinds the command as Ctrl-C does: the same clean-up, then exit code 143."""

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        """Raise in the main thread as Ctrl-C does; a second SIGTERM then ends the process at once."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        inv.terminated = True  # remembered: a prompt turns what it catches into a plain Abort
        raise render.Terminated

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a handler: a caller in another thread keeps its own
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _group_options_with_values() -> set[str]:
    """The group's options that take a value (``--progress MODE``), for reading argv before click does."""
    return {name for p in cli.params if isinstance(p, click.Option) and not p.is_flag for name in p.opts}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code.  The one place output is printed: the command's result, or its
    failure as one line plus a hint on stderr; with --json, one JSON object on stdout either way."""
    args = list(argv) if argv is not None else sys.argv[1:]
    inv = render.Invocation.from_argv(args, [*cli.commands, *ALIASES], _group_options_with_values())
    inv.command = ALIASES.get(inv.command, inv.command) if inv.command else None
    with _terminate_like_interrupt(inv):
        try:
            rv = cli.main(args=args, prog_name="airgap", standalone_mode=False, obj=inv)
            return render.success(rv, inv)
        except (Exception, KeyboardInterrupt) as e:
            if render.is_bug(e) and os.environ.get("AIRGAP_DEBUG"):
                raise
            return render.failure(e, inv)


def run() -> NoReturn:
    """The ``airgap`` console script: exit with :func:`main`'s code."""
    sys.exit(main())
