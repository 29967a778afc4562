"""airgap run in-process, as a user runs it: arguments in; exit code, stdout and stderr out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pytest

from airgap._cli import main
from tests.helpers.json_contract import check_output


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


class Cli(Protocol):
    """The ``cli`` fixture: ``cli("verify", path, "--trust", pub)``."""

    def __call__(self, *args: str) -> CliResult: ...


def in_process(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``airgap --quiet ARGS`` through ``main``, capturing what it prints.  With --json, what it printed
    must be the one object its schema in manifests/ describes, ok exactly when the exit code is 0."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(["--quiet", *args])
        captured = capsys.readouterr()
        if "--json" in args and "--help" not in args:
            assert check_output(captured.out)["ok"] is (code == 0), captured.err
        return CliResult(code, captured.out, captured.err)

    return run
