from __future__ import annotations

import pytest

from airgap import errors
from airgap.errors import Error, ExitCode

KINDS = [
    errors.InternalError,
    errors.UsageError,
    errors.FormatError,
    errors.IntegrityError,
    errors.TrustError,
    errors.EnvironmentProblem,
    errors.ConflictError,
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_error_prints_one_line_and_a_hint(kind: type[Error]) -> None:
    lines = kind("part parts/x.zst is missing").diagnostics().splitlines()
    assert lines[0] == "error: part parts/x.zst is missing"
    assert len(lines) == 2 and lines[1].startswith("hint: ") and len(lines[1]) > 10


def test_each_kind_has_its_own_exit_code() -> None:
    codes = [k.exit_code for k in KINDS]
    assert len(set(codes)) == len(codes)
    assert ExitCode.OK not in codes
    assert errors.DockerError.exit_code == errors.DiskSpaceError.exit_code == ExitCode.ENVIRONMENT


def test_unexpected_exception_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    from airgap._cli import main

    def boom(path: object) -> None:
        raise RuntimeError("surprise")

    monkeypatch.delenv("AIRGAP_DEBUG", raising=False)
    monkeypatch.setattr(importlib.import_module("airgap.inspect"), "load_bundle", boom)
    assert main(["inspect", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: surprise" in err and "Traceback" not in err
