"""The --json contract's validators: every object airgap prints with --json, and every --progress json
event, checked against manifests/cli-*.schema.json (draft 2020-12; they refer to one another and to
bundle-v1.schema.json by $id)."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any

import jsonschema
from referencing import Registry, Resource

from airgap.errors import ExitCode
from tests.helpers.paths import ROOT

if TYPE_CHECKING:  # tests.helpers.cli validates with this module
    from tests.helpers.cli import Cli, CliResult

SCHEMAS = ROOT / "manifests"
ENVELOPE = {"schema_version", "ok", "command", "error"}


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    """Every schema in manifests/, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))}


@cache
def _registry() -> Registry[Any]:
    """The schemas by their $id, so that cli-*.schema.json can refer to cli-common and bundle-v1."""
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in _schemas().values())


def _validate(obj: object, schema_name: str) -> None:
    """``obj`` matches ``schema_name``, or the test fails naming every mismatch."""
    validator = jsonschema.Draft202012Validator(_schemas()[schema_name], registry=_registry())
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(obj)]
    assert not problems, f"{schema_name}:\n" + "\n".join(problems)


def check_output(stdout: str) -> dict[str, Any]:
    """``stdout`` is exactly one JSON object that matches its command's schema (success) or the error
    schema (failure; and its command's schema too when it carries more than the error, as verify's report)."""
    obj = json.loads(stdout)  # one object: anything after it is "Extra data"
    assert isinstance(obj, dict), stdout
    if obj.get("ok") is True:
        _validate(obj, f"cli-{obj['command']}.schema.json")
    else:
        _validate(obj, "cli-error.schema.json")
        if set(obj) - ENVELOPE:
            _validate(obj, f"cli-{obj['command']}.schema.json")
    return obj


def check_progress(stderr: str) -> list[dict[str, Any]]:
    """The ``--progress json`` events in ``stderr`` (lines that are JSON objects), each matching its schema."""
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    for event in events:
        _validate(event, "cli-progress.schema.json")
    return events


def run_json(cli: Cli, *args: str) -> tuple[CliResult, dict[str, Any]]:
    """``airgap ARGS --json``: its result and the checked object, whose ok and exit code agree with the run's."""
    r = cli(*args, "--json")
    obj = check_output(r.out)
    assert obj["ok"] is (r.code == 0), r.err
    if r.code:
        assert obj["error"]["exit_code"] == r.code and ("error: " in r.err or "Error: " in r.err), r.err
    return r, obj


def failed(cli: Cli, code: ExitCode, *args: str) -> dict[str, Any]:
    """``airgap ARGS --json`` fails with ``code``; its error object."""
    r, obj = run_json(cli, *args)
    assert r.code == code, (r.code, r.err)
    assert obj["error"]["kind"] == code.name.lower()
    error: dict[str, Any] = obj["error"]
    return error


# -- shared set-up --------------------------------------------------------------------------------------
