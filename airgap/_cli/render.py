"""Everything the command line prints: each command's result as text or JSON, and every failure as one
escaped line plus a hint, with its exit code.  :func:`exit_code` is the one place errors meet exit codes.

Every command returns an :class:`Output` (its JSON fields and its text lines) and prints nothing itself;
``main`` hands it to :func:`success`, and any failure to :func:`failure`.  With ``--json`` stdout then holds
exactly one JSON object whatever happened: ``{"schema_version": 1, "ok": true, "command": ..., fields...}``
or ``{"schema_version": 1, "ok": false, "command": ..., "error": {"kind", "exit_code", "message", "hint",
...}}`` (manifests/cli-*.schema.json).  Progress, notes and the error's text lines go to stderr.

Names from bundles, sources and registries never reach the terminal raw: text goes through
:func:`echo` (escaped) and JSON through :func:`emit_json` (undecodable names escaped).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from airgap._cli.reporters import PROGRESS_MODES, Tracker
from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import json_safe, printable
from airgap.errors import Error, ExitCode, UsageError

if TYPE_CHECKING:
    from airgap.diff import BundleDiff
    from airgap.inspect import Inspection
    from airgap.install import InstallResult
    from airgap.pack import PackResult
    from airgap.publish import TransferResult
    from airgap.sign import SignResult
    from airgap.trust.policy import TrustResult
    from airgap.trust.rollback import InstalledBundle
    from airgap.verify import PartsFailed, VerifyReport

SCHEMA_VERSION = 1  # of the JSON objects on stdout and the progress events (manifests/cli-*.schema.json)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: the same clean-up runs (staged
    parts kept, uploads cut off), and the run ends with exit code 143 instead of 130."""


@dataclass
class Invocation:
    """What this run of airgap was asked for, filled in as click parses its arguments: the command, whether
    ``--json`` was given, how progress shows; and, once the command runs, its options and how far it got.

    :meth:`from_argv` fills it from the raw arguments first, so that a run click refuses (an unknown
    option, a bad value) is still reported as the JSON object it asked for."""

    command: str | None = None
    as_json: bool = False
    quiet: bool = False
    progress: str | None = None  # one of PROGRESS_MODES when given; else -q, a terminal or not decide
    params: dict[str, Any] = field(default_factory=dict)  # the command's parsed options
    tracker: Tracker | None = None  # the command's progress, as far as it got
    terminated: bool = False  # a SIGTERM arrived

    @classmethod
    def from_argv(cls, argv: Sequence[str], commands: Collection[str], takes_value: Collection[str]) -> Invocation:
        """A first reading of ``argv``: the command (the first word that names one, skipping the group's
        options and their values, ``takes_value``) and whether ``--json`` is among the arguments (before a ``--``)."""
        inv = cls()
        words = iter(argv)
        for word in words:
            if word == "--":
                break
            if word in takes_value:
                next(words, None)
            elif not word.startswith("-"):
                inv.command = word if word in commands else None
                break
        inv.as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        return inv

    def progress_mode(self) -> str:
        """How progress shows: ``--progress`` when given, else none with ``-q``, else auto (bars on a terminal)."""
        if self.progress in PROGRESS_MODES:
            return self.progress
        return "none" if self.quiet else "auto"


@dataclass(frozen=True)
class Output:
    """A command's result: its JSON fields (the envelope is added by :func:`success`) and its text lines."""

    data: Mapping[str, object]
    lines: Sequence[str]


def echo(line: str, err: bool = False) -> None:
    """One line of output, escaped: names from bundles and sources never reach the terminal raw."""
    click.echo(printable(line), err=err)


def emit_json(data: Any) -> None:
    """``data`` as indented JSON with sorted keys on stdout."""
    click.echo(json.dumps(json_safe(data), indent=2, sort_keys=True))


def envelope(command: str | None, ok: bool) -> dict[str, object]:
    """The fields every JSON object on stdout starts with."""
    return {"schema_version": SCHEMA_VERSION, "ok": ok, "command": command}


def success(rv: object, inv: Invocation) -> int:
    """Print what a command returned (its :class:`Output`; ``--help`` and ``--version`` return an exit code
    having printed their text) and return the exit code."""
    if isinstance(rv, int):
        return rv
    if isinstance(rv, Output):
        if inv.as_json:
            emit_json({**rv.data, **envelope(inv.command, True)})
        else:
            for line in rv.lines:
                echo(line)
    return int(ExitCode.OK)


# -- each command's result -------------------------------------------------------------------------
# One vocabulary for signatures: ``signer`` is the key that signed in this run (pack, sign), ``signers``
# every signature the bundle carries (by fingerprint, trusted or not), ``signatures`` the trust check:
# ``valid`` (trusted keys whose signature verified, counted against ``threshold``), ``invalid``, ``unknown``.


def _signers(trust: TrustResult) -> list[str]:
    """Every signature the bundle carries, by fingerprint: the trusted ones and those from unknown keys."""
    return sorted({*trust.valid, *trust.invalid, *trust.unknown})


def keygen_result(key: Path | str, pub_path: Path, fingerprint: str) -> Output:
    """Where the new key pair was written (a key file, or the pkcs11: URI of a key on a token), and its fingerprint."""
    on_token = isinstance(key, str)
    return Output(
        {"private_key": str(key), "public_key": str(pub_path), "fingerprint": fingerprint},
        [
            f"private key  {key}  " + ("(on the token; it never leaves it)" if on_token else "(keep it offline)"),
            f"public key   {pub_path}  (give it to whoever verifies or installs)",
            f"fingerprint  {fingerprint}",
        ],
    )


def pack_result(result: PackResult) -> Output:
    """Each packed image, then the bundle's size, time and signer."""
    m = result.manifest
    lines = [f"packed {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}" for image in m.images]
    lines.append(
        f"bundle {result.out_dir}: {len(m.parts)} parts, {human_bytes(m.total_part_bytes)} from {human_bytes(result.input_bytes)}"
        f" in {result.seconds:.1f}s; signed by {result.signer}"
    )
    return Output({**result.to_dict(), "signers": [result.signer]}, lines)


def sign_result(result: SignResult) -> Output:
    """The new signature's fingerprint and how many the bundle now has."""
    # "fingerprint" is the older name of "signer", kept for scripts that read it
    data = {**result.to_dict(), "signer": result.fingerprint}
    known = f" ({result.parts_cached} part(s) known from 'airgap verify' on this host)" if result.parts_cached else ""
    return Output(data, [f"signed {result.bundle} as {result.fingerprint}; {len(result.signers)} signature(s) now{known}"])


def verify_data(report: VerifyReport) -> dict[str, object]:
    """The full report, as ``verify --json`` prints it whether the bundle passed or not."""
    return {**report.to_dict(), "signers": _signers(report.trust)}


def verify_result(report: VerifyReport) -> Output:
    """The full report as JSON, or one OK line naming the signers and what was checked."""
    parts = sum(1 for p in report.parts if p.kind == "part")
    files = f" and {len(report.parts) - parts} files" if len(report.parts) > parts else ""
    line = f"OK: signature by {', '.join(report.trust.valid)}; {parts} parts{files} verified in {report.seconds:.1f}s"
    if report.volumes is not None and set(report.volumes.this_run) != set(report.volumes.names):
        line += f" ({', '.join(report.volumes.this_run)})"
    return Output(verify_data(report), [line, *([report.volumes.line()] if report.volumes is not None else [])])


def verify_failure(failed: PartsFailed, inv: Invocation) -> None:
    """What verify found bad, one BAD line per part or file on stderr (with --json the report is part of the
    error object :func:`failure` prints)."""
    if inv.as_json and failed.report is not None:
        return
    for part in failed.bad:
        echo(f"BAD  {part.kind} {part.path}: {part.problem}", err=True)


def inspect_result(result: Inspection) -> Output:
    """The manifest and signers as JSON, or the inspection's table."""
    return Output(result.to_dict(), result.render().split("\n"))


def install_result(result: InstallResult, ids_only: bool = False) -> Output:
    """One line per image: what was done with it and where it went; with ``ids_only`` (``-q`` with stdout not a
    terminal, as ``docker load -q``) the image IDs alone, one per line, for ``$(airgap install -q ...)``."""
    if ids_only:
        return Output({**result.to_dict(), "signers": _signers(result.trust)}, [i.image_id for i in result.images])
    lines = []
    for image in result.images:
        where = f"  -> {image.location}" if image.location else ""
        digest = f"  manifest {image.manifest_digest}" if image.manifest_digest else ""
        lines.append(
            f"{image.action}: {', '.join(image.ref_names) or '(untagged)'}  {image.image_id}  {image.platform}{where}{digest}"
        )
    return Output({**result.to_dict(), "signers": _signers(result.trust)}, lines)


def publish_result(result: TransferResult) -> Output:
    """The artifact's reference and digest, and how much was uploaded."""
    line = (
        f"published {result.bundle} as {result.reference}  {result.manifest_digest}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} sent of {human_bytes(result.bytes_total)}"
    )
    return Output(result.to_dict(), [line])


def pull_result(result: TransferResult) -> Output:
    """What was downloaded where, and the verify command to run next."""
    line = (
        f"pulled {result.reference} into {result.bundle}: {result.files} files, "
        f"{human_bytes(result.bytes_sent)} downloaded of {human_bytes(result.bytes_total)}; now run 'airgap verify {result.bundle}'"
    )
    return Output(result.to_dict(), [line])


def diff_result(result: BundleDiff) -> Output:
    """The differences as JSON, or the diff's table."""
    return Output(result.to_dict(), result.render().split("\n"))


def list_result(state: Path, bundles: Sequence[InstalledBundle]) -> Output:
    """Per bundle name: the sequence installed, when, its manifest, who signed it and its images."""
    data = {"state": str(state), "bundles": [b.to_dict() for b in bundles]}
    if not bundles:
        return Output(data, [f"no bundle installed yet (install state {state})"])
    lines = []
    for b in bundles:
        lines.append(f"{b.name}  sequence {b.sequence}  installed {b.installed}  manifest {b.manifest_sha256[:16]}")
        if b.details is None:
            lines.append("  signers and images not recorded (installed by install.sh, or by an older airgap)")
            continue
        valid = b.details.signatures.get("valid")
        by = ", ".join(fp[:16] for fp in valid) if isinstance(valid, list) else ""
        others = len(b.details.signers) - (len(valid) if isinstance(valid, list) else 0)
        lines.append(f"  signed by {by or '(none recorded)'}" + (f"  (and {others} key(s) not trusted here)" if others else ""))
        lines += [f"  {', '.join(i.ref_names) or '(untagged)'}  {i.image_id}  {i.platform}" for i in b.details.images]
    return Output(data, lines)


# -- failures ------------------------------------------------------------------------------------

_HANDLED = (Error, click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, BrokenPipeError)


def _cause(e: BaseException) -> BaseException:
    """The failure itself: click turns Ctrl-C (and our SIGTERM) into an Abort raised from it."""
    if isinstance(e, click.Abort) and isinstance(e.__cause__, KeyboardInterrupt):
        return e.__cause__
    return e


def exit_code(e: BaseException) -> int:
    """The documented exit code (README "Exit codes") for a failure: each error kind carries its own."""
    e = _cause(e)
    if isinstance(e, Error):
        return int(e.exit_code)
    if isinstance(e, click.exceptions.Exit):
        return int(e.exit_code)  # --help, --version
    if isinstance(e, click.ClickException):
        return int(ExitCode.USAGE)
    if isinstance(e, Terminated):
        return int(ExitCode.TERMINATED)
    if isinstance(e, (click.Abort, KeyboardInterrupt)):
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INTERNAL)  # a closed pipe, or a bug


def is_bug(e: BaseException) -> bool:
    """Whether ``e`` is none of the failures airgap expects (AIRGAP_DEBUG=1 shows its traceback)."""
    return not isinstance(e, _HANDLED)


# What an interrupted command leaves behind, and how to go on: the second line of an interruption.
_RESUME = {
    "pack": "the parts staged so far are kept in {out}/.airgap-staging: run the same pack again to resume "
    "(staged parts are checked, not compressed again)",
    "install": "cut off before the upload ended, the target keeps nothing of it; parts hashed so far are remembered: "
    "run the same install again (images already loaded are reported as already present)",
    "verify": "nothing was changed (a --receipt stays 'incomplete'): run the same verify again",
    "sign": "no signature was added: run the same sign again",
    "publish": "blobs the registry received are kept: run the same publish again, it sends only what is missing",
    "pull": "the files downloaded so far are kept in {out}/.airgap-pull: run the same pull again to resume",
    "keygen": "run the same keygen again (a key file left half-written is refused: move it away first)",
}
_NOTHING_CHANGED = "nothing was changed: run the same command again"


def _usage_hint(hint: str, inv: Invocation) -> str:
    """A usage hint naming the command at hand instead of the placeholder COMMAND."""
    return hint.replace("airgap COMMAND", f"airgap {inv.command}" if inv.command else "airgap")


def _interruption(e: KeyboardInterrupt, inv: Invocation) -> tuple[str, str, dict[str, object]]:
    """The message, resume hint and structured fields of an interrupted or terminated run."""
    terminated = isinstance(e, Terminated)
    how = "terminated (SIGTERM)" if terminated else "interrupted (SIGINT, Ctrl-C)"
    fields: dict[str, object] = {"signal": signal.Signals.SIGTERM.name if terminated else signal.Signals.SIGINT.name}
    snapshot = inv.tracker.snapshot() if inv.tracker is not None else None
    where = ""
    if snapshot is not None:
        fields["progress"] = snapshot.to_dict()
        where = f" {snapshot.describe()}"
    out = inv.params.get("out_dir")
    hint = _RESUME.get(inv.command or "", _NOTHING_CHANGED).format(out=out if out is not None else "the output directory")
    return f"{how}{where}", hint, fields


def error_object(e: BaseException, inv: Invocation) -> dict[str, object]:
    """The ``error`` member of a failed run's JSON: kind, exit code, message, hint and the error's
    structured fields (path, volume, digest; the bad parts; the option at fault; how far an interrupted run got)."""
    e = _cause(e)
    code = exit_code(e)
    fields: dict[str, object] = {}
    if isinstance(e, Error):
        kind, message, hint = e.kind(), e.message, e.hint or e.default_hint
        if isinstance(e, UsageError):
            hint = _usage_hint(hint, inv)
        fields.update(e.fields())
        bad = getattr(e, "bad", None)  # PartsFailed: every part or file at fault
        if isinstance(bad, list):
            fields["parts"] = [_bad_part(p) for p in bad]
        if isinstance(getattr(e, "missing", None), bool):
            fields["missing"] = e.missing  # type: ignore[attr-defined]  # PartProblem
    elif isinstance(e, click.ClickException):
        kind, message = ExitCode.USAGE.name.lower(), e.format_message()
        ctx = getattr(e, "ctx", None)
        hint = f"see '{ctx.command_path} --help'" if ctx is not None else _usage_hint(UsageError.default_hint, inv)
        option = _option_of(e)
        if option:
            fields["option"] = option
    elif isinstance(e, KeyboardInterrupt):
        kind = ExitCode(code).name.lower()
        message, hint, extra = _interruption(e, inv)
        fields.update(extra)
    elif isinstance(e, click.Abort):
        kind, message, hint = ExitCode.INTERRUPTED.name.lower(), "aborted", _NOTHING_CHANGED
    else:
        kind, message = ExitCode.INTERNAL.name.lower(), f"internal error: {type(e).__name__}: {e}"
        hint = "this is a bug in airgap; rerun with AIRGAP_DEBUG=1 for a traceback and report it"
    return {**fields, "kind": kind, "exit_code": code, "message": message, "hint": hint}


def _bad_part(part: Any) -> dict[str, object]:
    """One part or file a PartsFailed names, as JSON."""
    d: dict[str, object] = {"path": part.path, "kind": part.kind, "problem": part.problem, "missing": part.missing}
    if part.volume:
        d["volume"] = part.volume
    return d


def _option_of(e: click.ClickException) -> str | None:
    """The option or argument a click usage error is about, when it says."""
    name = getattr(e, "option_name", None)  # NoSuchOption, BadOptionUsage
    if isinstance(name, str):
        return name
    param = getattr(e, "param", None)  # BadParameter, MissingParameter
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return None


def failure(e: BaseException, inv: Invocation) -> int:
    """Show a failure (one line and a hint on stderr; with --json also the error object on stdout) and
    return its exit code."""
    cause = _cause(e)
    if isinstance(cause, click.Abort) and inv.terminated:
        cause = Terminated()  # a SIGTERM that a prompt caught and turned into a plain Abort
    code = exit_code(cause)
    if isinstance(cause, (click.exceptions.Exit, BrokenPipeError)):
        return code  # --help and --version printed their text; a closed pipe has no reader left to tell
    error = error_object(cause, inv)
    if isinstance(cause, click.ClickException):
        cause.show()
    else:
        echo(f"error: {error['message']}", err=True)  # escaped: names in a message never reach the terminal raw
        echo(f"hint: {error['hint']}", err=True)
    if inv.as_json:
        partial = _partial_result(cause)
        emit_json({**partial, **envelope(inv.command, False), "error": error})
    return code


def _partial_result(e: BaseException) -> dict[str, object]:
    """What a failed command still has to report beside its error: verify's full report when parts failed."""
    report = getattr(e, "report", None)
    if isinstance(e, Error) and report is not None:
        return verify_data(report)
    return {}
