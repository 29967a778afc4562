"""The --json contract: with --json every outcome of every command is exactly one JSON object on stdout that
matches its schema in manifests/ (cli-COMMAND.schema.json on success, cli-error.schema.json on failure; a
failed verify's report matches both), click's own usage errors, Ctrl-C (130) and SIGTERM (143) included.
``--progress json`` writes events on stderr that match cli-progress.schema.json.

:func:`check_output` and :func:`check_progress` (tests/helpers/json_contract.py) are the validators; the CLI runner
checks every --json output any test makes with them."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from airgap._cli import render
from airgap._cli.reporters import JsonLinesReporter
from airgap.errors import ExitCode
from tests.helpers.cli import Cli
from tests.helpers.json_contract import _schemas, _validate, check_output, check_progress, failed, run_json
from tests.helpers.keys import KeyPair
from tests.helpers.memregistry import HOST, MemoryRegistry
from tests.helpers.paths import ROOT
from tests.helpers.samples import Sample, Samples, sample_image

cli_main = importlib.import_module("airgap._cli.main")  # the module (airgap._cli.main is also its main function)
SCHEMAS = ROOT / "manifests"


def _pack(cli: Cli, sample: Sample, out: Path, key: Path, *extra: str) -> dict[str, Any]:
    r, obj = run_json(cli, "pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(key), *extra)
    assert r.code == 0, r.err
    return obj


@pytest.fixture
def packed(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    _pack(cli, samples["docker"], out, keypair[0], "--part-size", "1MiB")
    return out


def _fingerprint(pub: Path) -> str:
    from airgap.trust.keys import load_public

    return load_public(pub).fingerprint


# -- the schemas themselves ------------------------------------------------------------------------------
def test_schemas_are_draft_2020_12_and_named_by_their_id() -> None:
    for name, schema in _schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith("/" + name)


def test_every_command_has_an_output_schema_and_the_error_schema_knows_it() -> None:
    commands = set(cli_main.cli.commands)
    assert {f"cli-{c}.schema.json" for c in commands} <= set(_schemas())
    assert set(_schemas()["cli-error.schema.json"]["properties"]["command"]["enum"]) == commands | {None}


def test_error_schema_lists_every_exit_code_and_kind() -> None:
    error = _schemas()["cli-common.schema.json"]["$defs"]["error"]["properties"]
    assert set(error["exit_code"]["enum"]) == {int(c) for c in ExitCode if c != ExitCode.OK}
    assert set(error["kind"]["enum"]) == {c.name.lower() for c in ExitCode if c != ExitCode.OK}


def test_a_mismatching_object_is_caught() -> None:
    """The validator is not a rubber stamp: a renamed field, a wrong exit code, two objects all fail."""
    error: dict[str, object] = {"kind": "trust", "exit_code": 5, "message": "m", "hint": "h"}
    good: dict[str, object] = {"schema_version": 1, "ok": False, "command": "verify", "error": error}
    check_output(json.dumps(good))
    for bad in (
        {**good, "error": {**error, "exit_code": 4}},  # kind and code disagree
        {**good, "schema_version": 2},
        {**good, "error": {**error, "detail": "x"}},  # a field nobody documented
        {**good, "ok": True},  # a success lacking every field of verify's report
    ):
        with pytest.raises(AssertionError):
            check_output(json.dumps(bad))
    with pytest.raises(json.JSONDecodeError):
        check_output(json.dumps(good) + "\n" + json.dumps(good))


# -- every command: a success and failures ------------------------------------------------------------------
def test_keygen(cli: Cli, tmp_path: Path) -> None:
    _, obj = run_json(cli, "keygen", "--out", str(tmp_path / "k"), "--no-passphrase")
    assert obj["fingerprint"] == _fingerprint(tmp_path / "k.pub")
    error = failed(cli, ExitCode.CONFLICT, "keygen", "--out", str(tmp_path / "k"), "--no-passphrase")
    assert "already exists" in error["message"]
    failed(cli, ExitCode.USAGE, "keygen", "--out", str(tmp_path / "k2"), "--no-passphrase", "--passphrase-env", "X")


def test_pack(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    obj = _pack(cli, samples["docker"], tmp_path / "b", keypair[0])
    assert obj["signer"] == _fingerprint(keypair[1]) and obj["signers"] == [obj["signer"]]
    error = failed(
        cli,
        ExitCode.USAGE,
        "pack",
        f"docker-archive:{tmp_path / 'nothing.tar'}",
        "-o",
        str(tmp_path / "c"),
        "--key",
        str(keypair[0]),
    )
    assert "nothing.tar" in error["message"]
    src = f"docker-archive:{samples['docker'].path}"
    failed(cli, ExitCode.CONFLICT, "pack", src, "-o", str(tmp_path / "b"), "--key", str(keypair[0]))


def test_sign(cli: Cli, packed: Path, keypair: KeyPair, other_keypair: KeyPair) -> None:
    error = failed(cli, ExitCode.TRUST, "sign", str(packed), "--key", str(other_keypair[0]), "--trust", str(other_keypair[1]))
    assert "no signature from a trusted key" in error["message"]
    _, obj = run_json(cli, "sign", str(packed), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    mine, theirs = _fingerprint(keypair[1]), _fingerprint(other_keypair[1])
    assert obj["signer"] == obj["fingerprint"] == theirs  # "fingerprint": the older name, kept
    assert obj["signers"] == sorted([mine, theirs]) and obj["signatures"]["valid"] == [mine]


def test_verify_pass_reports_signers_and_every_part(cli: Cli, packed: Path, keypair: KeyPair) -> None:
    _, obj = run_json(cli, "verify", str(packed), "--trust", str(keypair[1]))
    assert obj["signatures"]["valid"] == obj["signers"] == [_fingerprint(keypair[1])]
    assert obj["parts_checked"] == len(json.loads((packed / "manifest.json").read_text())["parts"]) > 1


def test_verify_with_a_wrong_key_prints_the_error_object(cli: Cli, packed: Path, other_keypair: KeyPair) -> None:
    error = failed(cli, ExitCode.TRUST, "verify", str(packed), "--trust", str(other_keypair[1]))
    assert "no signature from a trusted key" in error["message"] and error["hint"]


def test_verify_of_an_expired_bundle_prints_the_error_object(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")  # created 2001-09-09
    _pack(cli, samples["docker"], tmp_path / "b", keypair[0], "--expires", "30d")
    error = failed(cli, ExitCode.TRUST, "verify", str(tmp_path / "b"), "--trust", str(keypair[1]))
    assert "expired at 2001-10-09T01:46:40Z" in error["message"] and "--allow-expired" in error["hint"]
    _, obj = run_json(cli, "verify", str(tmp_path / "b"), "--trust", str(keypair[1]), "--allow-expired")
    assert obj["signatures"]["expired"] is True


def test_verify_of_a_tampered_manifest_prints_the_error_object(cli: Cli, packed: Path, keypair: KeyPair) -> None:
    manifest = packed / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"name": "agent"', b'"name": "agenT"'))
    error = failed(cli, ExitCode.TRUST, "verify", str(packed), "--trust", str(keypair[1]))
    assert "does not match manifest.json" in error["message"]


def test_verify_of_a_missing_bundle_prints_the_error_object(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    error = failed(cli, ExitCode.USAGE, "verify", str(tmp_path / "nowhere"), "--trust", str(keypair[1]))
    assert "nowhere" in error["message"]
    (tmp_path / "empty").mkdir()
    error = failed(cli, ExitCode.FORMAT, "verify", str(tmp_path / "empty"), "--trust", str(keypair[1]))
    assert "manifest.json" in error["message"]


def test_verify_of_a_damaged_part_prints_the_report_with_the_error(cli: Cli, packed: Path, keypair: KeyPair) -> None:
    part = json.loads((packed / "manifest.json").read_text())["parts"][0]["path"]
    data = bytearray((packed / part).read_bytes())
    data[-1] ^= 1
    (packed / part).write_bytes(data)
    r, obj = run_json(cli, "verify", str(packed), "--trust", str(keypair[1]))
    assert r.code == ExitCode.INTEGRITY and f"error: part {part} does not match" in r.err
    assert obj["error"]["parts"] == [{"path": part, "kind": "part", "problem": obj["parts"][0]["problem"], "missing": False}]
    assert obj["parts_bad"] == 1 and obj["checks"][0]["check"] == "manifest"  # the whole report, as before
    (packed / part).unlink()
    _, obj = run_json(cli, "verify", str(packed), "--trust", str(keypair[1]))
    assert obj["error"]["parts"][0]["missing"] is True and "is missing" in obj["error"]["message"]


def test_inspect(cli: Cli, packed: Path, keypair: KeyPair, tmp_path: Path) -> None:
    _, obj = run_json(cli, "inspect", str(packed))
    assert obj["signers"] == [_fingerprint(keypair[1])] and obj["manifest"]["schema_version"] == 1
    (tmp_path / "not-a-bundle").mkdir()
    (tmp_path / "not-a-bundle" / "manifest.json").write_text("{")
    failed(cli, ExitCode.FORMAT, "inspect", str(tmp_path / "not-a-bundle"))


def test_install_to_an_archive(cli: Cli, packed: Path, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path) -> None:
    target = f"docker-archive:{tmp_path / 'out.tar'}"
    failed(cli, ExitCode.TRUST, "install", str(packed), "--trust", str(other_keypair[1]), "--to", target)
    _, obj = run_json(cli, "install", str(packed), "--trust", str(keypair[1]), "--to", target)
    assert [i["action"] for i in obj["images"]] == ["written"] and obj["signers"] == [_fingerprint(keypair[1])]
    error = failed(cli, ExitCode.CONFLICT, "install", str(packed), "--trust", str(keypair[1]), "--to", target)
    assert "already exists" in error["message"] and "--replace" in error["hint"]


@pytest.fixture
def memregistry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MemoryRegistry:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("AIRGAP_REGISTRY_USER", raising=False)
    registry = MemoryRegistry()
    registry.install(monkeypatch)
    return registry


def test_publish_and_pull(
    cli: Cli, memregistry: MemoryRegistry, samples: Samples, packed: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    ref = f"oci://{HOST}/bundles/agent:1"
    _, published = run_json(cli, "publish", str(packed), ref)
    assert published["bytes_transferred"] == published["bytes_total"] > 0
    _pack(cli, samples["docker2"], tmp_path / "other", keypair[0])
    error = failed(cli, ExitCode.CONFLICT, "publish", str(tmp_path / "other"), ref)
    assert "--replace" in error["hint"]
    _, pulled = run_json(cli, "pull", ref, "-o", str(tmp_path / "pulled"))
    assert pulled["manifest_digest"] == published["manifest_digest"]
    failed(cli, ExitCode.CONFLICT, "pull", ref, "-o", str(tmp_path / "pulled"))
    failed(cli, ExitCode.USAGE, "pull", "http://not-oci/x:1", "-o", str(tmp_path / "p2"))


def test_diff(cli: Cli, samples: Samples, packed: Path, keypair: KeyPair, tmp_path: Path) -> None:
    _pack(cli, samples["docker2"], tmp_path / "two", keypair[0])
    _, obj = run_json(cli, "diff", str(packed), str(tmp_path / "two"))
    assert {i["status"] for i in obj["images"]} == {"added", "removed"}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("[]")
    failed(cli, ExitCode.FORMAT, "diff", str(packed), str(tmp_path / "junk"))


# -- usage errors from click itself -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "option", "words", "hint"),
    [
        (["verify", "b", "--trust", "k.pub", "--bogus"], "--bogus", "No such option", "see 'airgap verify --help'"),
        (["verify", "b", "--trust", "k.pub", "--threshold", "0"], "--threshold", "0 is not in the range", "see 'airgap verify"),
        (["verify", "b"], "--trust", "Missing option", "see 'airgap verify --help'"),
        (["install"], "BUNDLE", "Missing argument", "see 'airgap install --help'"),
        (["verify", "b", "--trust", "k.pub", "--progress", "loud"], "--progress", "loud", "see 'airgap verify --help'"),
        (["frobnicate"], None, "No such command", "see 'airgap --help'"),
        (["pack", "img", "-o", "b", "--key", "k", "--part-size", "lots"], None, "lots", ""),  # our size type's own error
    ],
)
def test_click_usage_errors_are_json_too(cli: Cli, args: list[str], option: str | None, words: str, hint: str) -> None:
    error = failed(cli, ExitCode.USAGE, *args)
    assert words in error["message"] and error.get("option") == option
    assert error["hint"].startswith(hint) and "COMMAND" not in error["hint"]


def test_json_given_to_the_group_is_still_answered_in_json(cli: Cli) -> None:
    r = cli("--json", "verify", "b")
    obj = check_output(r.out)
    assert r.code == 2 and obj["command"] == "verify" and "--json" in obj["error"]["message"]


def test_without_json_stdout_stays_empty_on_failure(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    for args in (["verify", str(tmp_path), "--trust", str(keypair[1])], ["verify", "--bogus"], ["frobnicate"]):
        r = cli(*args)
        assert r.code in (2, 3) and r.out == "" and r.err


def test_help_stays_text_under_json(cli: Cli) -> None:
    r = cli("verify", "--json", "--help")
    assert r.code == 0 and r.out.startswith("Usage: airgap verify")


def test_internal_error_is_an_error_object(cli: Cli, monkeypatch: pytest.MonkeyPatch, packed: Path) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("surprise")

    monkeypatch.delenv("AIRGAP_DEBUG", raising=False)
    monkeypatch.setattr(importlib.import_module("airgap.inspect"), "inspect", boom)  # the command imports it when it runs
    error = failed(cli, ExitCode.INTERNAL, "inspect", str(packed))
    assert error["message"] == "internal error: RuntimeError: surprise" and "AIRGAP_DEBUG=1" in error["hint"]


# -- interruptions, in process -------------------------------------------------------------------------
@pytest.mark.parametrize(("raised", "code", "name"), [(KeyboardInterrupt, 130, "SIGINT"), (render.Terminated, 143, "SIGTERM")])
def test_interrupted_verify_says_how_far_it_got_and_how_to_go_on(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, packed: Path, keypair: KeyPair, raised: type[BaseException], code: int, name: str
) -> None:
    def interrupted(options: Any, reporter: Any) -> Any:
        reporter.start("verify", 100)
        reporter.advance(40)
        raise raised

    monkeypatch.setattr(importlib.import_module("airgap.verify"), "verify", interrupted)
    r, obj = run_json(cli, "verify", str(packed), "--trust", str(keypair[1]))
    assert r.code == code
    error = obj["error"]
    assert error["signal"] == name and error["progress"] == {"phase": "verify", "done": 40, "total": 100, "phases_finished": 0}
    assert "during 'verify' after 40 B of 100 B (40%)" in error["message"]
    assert "run the same verify again" in error["hint"]
    assert f"error: {error['message']}\nhint: {error['hint']}" in r.err


def test_sigterm_handler_is_restored_after_main(packed: Path, keypair: KeyPair) -> None:
    before = signal.getsignal(signal.SIGTERM)
    cli_main.main(["-q", "verify", str(packed), "--trust", str(keypair[1])])
    assert signal.getsignal(signal.SIGTERM) is before


# -- progress events -------------------------------------------------------------------------------------
def test_progress_json_events_on_stderr(cli: Cli, packed: Path, keypair: KeyPair) -> None:
    """--progress json beats the runner's --quiet; stdout keeps the one result object."""
    r, obj = run_json(cli, "verify", str(packed), "--trust", str(keypair[1]), "--progress", "json")
    assert all(line.startswith("{") for line in r.err.splitlines()), r.err
    events = check_progress(r.err)
    assert [e["event"] for e in events if e["event"] != "advance"][-2:] == ["start", "finish"]
    assert any(e["message"].startswith("signatures OK") for e in events if e["event"] == "note")
    start, finish = (e for e in events if e["event"] in ("start", "finish"))
    assert start["phase"] == finish["phase"] == "verify" and finish["done"] == finish["total"] == start["total"] > 0
    assert obj["ok"] is True


def test_progress_events_are_throttled() -> None:
    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> int:
            lines.extend(x for x in s.splitlines() if x)
            return len(s)

        def flush(self) -> None:
            pass

    reporter = JsonLinesReporter(Sink(), "pack", interval=0.25)  # type: ignore[arg-type]
    reporter.start("pack", 0)
    started = time.monotonic()
    while time.monotonic() - started < 0.6:
        reporter.advance(1)
    reporter.finish()
    events = [json.loads(line) for line in lines]
    for event in events:
        _validate(event, "cli-progress.schema.json")
    advances = [e for e in events if e["event"] == "advance"]
    assert 1 <= len(advances) <= 3  # 4 a second at most, however often the core reports
    assert events[0] == {**events[0], "event": "start", "total": None} and events[-1]["event"] == "finish"
    assert events[-1]["done"] >= advances[-1]["done"] > 0


def test_quiet_and_progress_none_print_no_events(cli: Cli, packed: Path, keypair: KeyPair) -> None:
    r = cli("verify", str(packed), "--trust", str(keypair[1]), "--progress", "none")
    assert r.code == 0 and r.err == ""


# -- SIGINT and SIGTERM against a real process: a pack fed slowly through a FIFO ---------------------------
@pytest.fixture(scope="module")
def slow_sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    d = tmp_path_factory.mktemp("slow")
    return sample_image.build(d / "slow.tar", tag="airgap-test/slow:1", model_size=24 << 20, app_size=1 << 20, seed="slow")


def _feed(source: Path, fifo: Path, per_second: int, stop: threading.Event) -> threading.Thread:
    """Write ``source`` into ``fifo``, ``per_second`` MiB a second, until it ends or ``stop`` is set."""

    def run() -> None:
        try:
            with source.open("rb") as src, fifo.open("wb") as dst:
                while not stop.is_set() and (block := src.read(1 << 20)):
                    dst.write(block)
                    dst.flush()
                    time.sleep(1 / per_second)
        except BrokenPipeError:
            pass  # the reader went away: what an interrupted pack does

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _events(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{"):
            yield json.loads(line)


@pytest.mark.parametrize(("sig", "code", "kind"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_pack_reports_then_the_same_pack_resumes(
    slow_sample: Sample, keypair: KeyPair, tmp_path: Path, sig: signal.Signals, code: int, kind: str
) -> None:
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "airgap", "pack", f"docker-archive:{fifo}", "-o", str(out), "--key", str(keypair[0]),
           "--part-size", "1MiB", "--json", "--progress", "json"]  # fmt: skip
    stop = threading.Event()
    feeder = _feed(slow_sample.path, fifo, 8, stop)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for event in _events(proc):
            _validate(event, "cli-progress.schema.json")
            seen.append(event)
            if event["event"] == "advance" and event["done"] >= 4 << 20:
                break
        assert seen and seen[-1]["event"] == "advance", seen
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    feeder.join(timeout=10)
    assert proc.returncode == code, stderr
    error = check_output(stdout)["error"]
    assert error["kind"] == kind and error["signal"] == sig.name and error["progress"]["done"] >= 4 << 20
    assert f"error: {error['message']}\nhint: {error['hint']}" in stderr and "Traceback" not in stderr
    assert re.search(r"after \d+\.\d MiB", error["message"]), error["message"]
    assert f"kept in {out}/.airgap-staging: run the same pack again to resume" in error["hint"]
    assert not (out / "manifest.json").exists()
    # the same pack, fed at full speed, resumes from the parts the interrupted one staged
    feeder = _feed(slow_sample.path, fifo, 1000, threading.Event())
    done = subprocess.run([*cmd[:-2], "--progress", "none"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    feeder.join(timeout=10)
    assert done.returncode == 0, done.stderr
    assert check_output(done.stdout)["reused_parts"] >= 3


# inspect, made to wait after a SIGTERM to itself; at a prompt, what click.prompt does with Ctrl-C
_WAITING_INSPECT = """
import importlib, os, signal, sys, time
import click
m = importlib.import_module("airgap._cli.main")
def waiting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    try:
        time.sleep(5)
    except KeyboardInterrupt:
        if sys.argv[1] == "prompt":
            raise click.Abort from None
        raise
importlib.import_module("airgap.inspect").inspect = waiting  # the command imports it when it runs
raise SystemExit(m.main(["inspect", "x", "--json"]))
"""


@pytest.mark.parametrize("where", ["command", "prompt"])
def test_sigterm_while_a_command_runs_ends_it_with_143(where: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _WAITING_INSPECT, where], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert r.returncode == 143, r.stderr
    error = check_output(r.stdout)["error"]
    assert error["kind"] == "terminated" and error["signal"] == "SIGTERM"
    assert f"error: {error['message']}\nhint: nothing was changed: run the same command again" in r.stderr
