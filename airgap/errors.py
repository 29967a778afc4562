"""One error hierarchy for airgap.

Every failure the user can cause or meet is an :class:`Error` subclass.  Each subclass carries an
exit code; the CLI maps errors to exit codes in one place (``airgap._cli``) and prints one line plus a
hint.  Outside exceptions are converted where they enter, with ``raise ... from e``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README "Exit codes")."""

    OK = 0
    INTERNAL = 1  # a bug: an error airgap did not expect
    USAGE = 2  # bad arguments or options
    FORMAT = 3  # input is not a valid bundle, manifest, key or image archive
    INTEGRITY = 4  # a part or blob is missing, truncated or does not match its digest
    TRUST = 5  # signature missing, invalid, or from no trusted key
    ENVIRONMENT = 6  # Docker unreachable or failing, not enough disk space, I/O errors
    CONFLICT = 7  # refused to overwrite output or move an existing tag
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as shells report it
    TERMINATED = 143  # SIGTERM: 128 + 15


class Error(Exception):
    """Base of every error airgap reports to the user."""

    exit_code: ExitCode = ExitCode.INTERNAL
    default_hint = "this is a bug in airgap; rerun with AIRGAP_DEBUG=1 and report what it prints"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        path: str | None = None,
        volume: str | None = None,
        digest: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = path  # the bundle file, part or source at fault, when there is one
        self.volume = volume  # the medium (vol-NN) it travels on, in a bundle split over media
        self.digest = digest  # the blob or layer at fault

    def with_hint(self, extra: str) -> Error:
        """The same error with ``extra`` added to its hint (a caller that knows what to do next)."""
        self.hint = f"{self.hint}; {extra}" if self.hint else extra
        return self

    def fields(self) -> dict[str, str]:
        """The structured facts of this error, for JSON output and receipts."""
        return {k: v for k, v in (("path", self.path), ("volume", self.volume), ("digest", self.digest)) if v}

    def diagnostics(self) -> str:
        """One line, plus a hint line (the CLI shows each escaped, whatever a file name or a source put in them)."""
        return f"error: {self.message}\nhint: {self.hint or self.default_hint}"

    def kind(self) -> str:
        """The error's kind as receipts name it: its exit code's name, in lower case ("usage", "integrity"...)."""
        return self.exit_code.name.lower()


class InternalError(Error):
    """A condition airgap's own logic should make impossible."""


class UsageError(Error):
    """Bad arguments or options (exit code 2)."""

    exit_code = ExitCode.USAGE
    default_hint = "see 'airgap COMMAND --help'"


class FormatError(Error):
    """Input that is not a valid bundle, manifest, key or image archive (exit code 3)."""

    exit_code = ExitCode.FORMAT
    default_hint = "the file is not what airgap expects: export the image or pack the bundle again"


class IntegrityError(Error):
    """A part or blob missing, truncated or not matching its digest (exit code 4)."""

    exit_code = ExitCode.INTEGRITY
    default_hint = "copy the bundle again from the original medium, then run 'airgap verify'"


class TrustError(Error):
    """A signature missing, invalid or from no trusted key; an expired or rolled-back bundle (exit code 5)."""

    exit_code = ExitCode.TRUST
    default_hint = "check that --trust names the signer's public key; never install a bundle that fails this"


class EnvironmentProblem(Error):
    """Docker, a registry, the disk or the file system failing around airgap (exit code 6)."""

    exit_code = ExitCode.ENVIRONMENT
    default_hint = "check the Docker engine (DOCKER_HOST), free disk space and permissions"


class DockerError(EnvironmentProblem):
    """The Docker engine is unreachable or refused a request."""


class DiskSpaceError(EnvironmentProblem):
    """Not enough free space where airgap or the engine must write."""


class ConflictError(Error):
    """Refused to overwrite output or move an existing tag (exit code 7)."""

    exit_code = ExitCode.CONFLICT
    default_hint = "pack takes --overwrite, install takes --replace, when that is what you mean"


class RegistryError(EnvironmentProblem):
    """An OCI registry is unreachable, refused our credentials, or answered outside the protocol."""

    default_hint = "check the registry address, that it answers (curl http(s)://HOST/v2/), and your credentials"
