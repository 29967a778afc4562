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


class Error(Exception):
    """Base of every error airgap reports to the user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """One line, plus a hint line when there is one."""
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text

    def kind(self) -> str:
        return self.exit_code.name.lower()


class UsageError(Error):
    exit_code = ExitCode.USAGE


class FormatError(Error):
    exit_code = ExitCode.FORMAT


class IntegrityError(Error):
    exit_code = ExitCode.INTEGRITY


class TrustError(Error):
    exit_code = ExitCode.TRUST


class EnvironmentProblem(Error):
    exit_code = ExitCode.ENVIRONMENT


class DockerError(EnvironmentProblem):
    """The Docker engine is unreachable or refused a request."""


class DiskSpaceError(EnvironmentProblem):
    """Not enough free space where airgap or the engine must write."""


class ConflictError(Error):
    exit_code = ExitCode.CONFLICT
