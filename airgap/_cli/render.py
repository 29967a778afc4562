"""Everything the command line prints: each command's result as text or JSON, and every failure as one
escaped line plus a hint, with its exit code.  :func:`exit_code` is the one place errors meet exit codes.

Names from bundles, sources and registries never reach the terminal raw: text goes through
:func:`echo` (escaped) and JSON through :func:`emit_json` (undecodable names escaped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import json_safe, printable, printable_lines
from airgap.errors import Error, ExitCode

if TYPE_CHECKING:
    from airgap.diff import BundleDiff
    from airgap.inspect import Inspection
    from airgap.install import InstallResult
    from airgap.pack import PackResult
    from airgap.publish import TransferResult
    from airgap.sign import SignResult
    from airgap.verify import PartsFailed, VerifyReport


def echo(line: str, err: bool = False) -> None:
    """One line of output, escaped: names from bundles and sources never reach the terminal raw."""
    click.echo(printable(line), err=err)


def emit_json(data: Any) -> None:
    """``data`` as indented JSON with sorted keys on stdout."""
    click.echo(json.dumps(json_safe(data), indent=2, sort_keys=True))


def keygen_result(key_path: Path, pub_path: Path, fingerprint: str, as_json: bool) -> None:
    """Where the new key pair was written, and its fingerprint."""
    if as_json:
        emit_json({"private_key": str(key_path), "public_key": str(pub_path), "fingerprint": fingerprint})
        return
    echo(f"private key  {key_path}  (keep it offline)")
    echo(f"public key   {pub_path}  (give it to whoever verifies or installs)")
    echo(f"fingerprint  {fingerprint}")


def pack_result(result: PackResult, as_json: bool) -> None:
    """Each packed image, then the bundle's size, time and signer."""
    if as_json:
        emit_json(result.to_dict())
        return
    m = result.manifest
    for image in m.images:
        echo(f"packed {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}")
    echo(
        f"bundle {result.out_dir}: {len(m.parts)} parts, {human_bytes(m.total_part_bytes)} from {human_bytes(result.input_bytes)}"
        f" in {result.seconds:.1f}s; signed by {result.signer}"
    )


def sign_result(result: SignResult, as_json: bool) -> None:
    """The new signature's fingerprint and how many the bundle now has."""
    if as_json:
        emit_json(result.to_dict())
        return
    echo(f"signed {result.bundle} as {result.fingerprint}; {len(result.signers)} signature(s) now")


def verify_result(report: VerifyReport, as_json: bool) -> None:
    """The full report as JSON, or one OK line naming the signers and what was checked."""
    if as_json:
        emit_json(report.to_dict())
        return
    parts = sum(1 for p in report.parts if p.kind == "part")
    files = f" and {len(report.parts) - parts} files" if len(report.parts) > parts else ""
    echo(f"OK: signature by {', '.join(report.trust.valid)}; {parts} parts{files} verified in {report.seconds:.1f}s")


def verify_failure(failed: PartsFailed, as_json: bool) -> None:
    """What verify found bad: the full report as JSON, or one BAD line per part or file on stderr."""
    if as_json and failed.report is not None:
        emit_json(failed.report.to_dict())
        return
    for part in failed.bad:
        echo(f"BAD  {part.kind} {part.path}: {part.problem}", err=True)


def inspect_result(result: Inspection, as_json: bool) -> None:
    """The manifest and signers as JSON, or the inspection's table."""
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(printable_lines(result.render()))


def install_result(result: InstallResult, as_json: bool) -> None:
    """One line per image: what was done with it and where it went."""
    if as_json:
        emit_json(result.to_dict())
        return
    for image in result.images:
        where = f"  -> {image.location}" if image.location else ""
        digest = f"  manifest {image.manifest_digest}" if image.manifest_digest else ""
        echo(f"{image.action}: {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}{where}{digest}")


def publish_result(result: TransferResult, as_json: bool) -> None:
    """The artifact's reference and digest, and how much was uploaded."""
    if as_json:
        emit_json(result.to_dict())
        return
    echo(
        f"published {result.bundle} as {result.reference}  {result.manifest_digest}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} sent of {human_bytes(result.bytes_total)}"
    )


def pull_result(result: TransferResult, as_json: bool) -> None:
    """What was downloaded where, and the verify command to run next."""
    if as_json:
        emit_json(result.to_dict())
        return
    echo(
        f"pulled {result.reference} into {result.bundle}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} downloaded of {human_bytes(result.bytes_total)}; now run 'airgap verify {result.bundle}'"
    )


def diff_result(result: BundleDiff, as_json: bool) -> None:
    """The differences as JSON, or the diff's table."""
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(printable_lines(result.render()))


# -- failures ------------------------------------------------------------------------------------

_HANDLED = (Error, click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, BrokenPipeError)


def exit_code(e: BaseException) -> int:
    """The documented exit code (README "Exit codes") for a failure: each error kind carries its own."""
    if isinstance(e, Error):
        return int(e.exit_code)
    if isinstance(e, click.exceptions.Exit):
        return int(e.exit_code)  # --help, --version
    if isinstance(e, click.ClickException):
        return int(ExitCode.USAGE)
    if isinstance(e, (click.Abort, KeyboardInterrupt)):
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INTERNAL)  # a closed pipe, or a bug


def is_bug(e: BaseException) -> bool:
    """Whether ``e`` is none of the failures airgap expects (AIRGAP_DEBUG=1 shows its traceback)."""
    return not isinstance(e, _HANDLED)


def failure(e: BaseException) -> int:
    """Show a failure on stderr (one line and a hint for our errors) and return its exit code."""
    if isinstance(e, Error):
        echo(f"error: {e.message}", err=True)  # escaped: names in a message never reach the terminal raw
        echo(f"hint: {e.hint or e.default_hint}", err=True)
    elif isinstance(e, click.exceptions.Exit | BrokenPipeError):
        pass
    elif isinstance(e, click.ClickException):
        e.show()
    elif isinstance(e, click.Abort):
        click.echo("error: aborted", err=True)
    elif isinstance(e, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
    else:
        echo(f"error: internal error: {type(e).__name__}: {e}", err=True)
        click.echo("hint: this is a bug in airgap; rerun with AIRGAP_DEBUG=1 for a traceback and report it", err=True)
    return exit_code(e)
