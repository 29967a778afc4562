"""Everyday habits: ``airgap list`` (what this host installed), shell completion, examples in every
``--help``, man pages built from the commands; and every path a user names for airgap to write checked before
any work starts (a missing directory is a usage error, an unwritable one an environment problem, never an
internal error after the work is done)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import click
import pytest

from airgap._cli import manpage
from airgap._cli.examples import EXAMPLES
from airgap._cli.main import ALIASES, main
from airgap._cli.main import cli as group
from airgap.errors import EnvironmentProblem, ExitCode
from airgap.install import InstallOptions, install
from airgap.trust import rollback
from airgap.trust.keys import load_public
from airgap.trust.policy import TrustResult
from airgap.trust.rollback import InstallState, RecordedImage, StateNotRecorded
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.json_contract import check_output, failed, run_json
from tests.helpers.keys import KeyPair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Samples

UNWRITABLE = Path("/sys")  # a directory no one may create files in, root included
FP = "7f" * 32


@pytest.fixture
def state_path() -> Path:
    return Path(os.environ["AIRGAP_STATE"])


def _install(bundle: Path, pub: Path, tmp_path: Path, **kw: object) -> FakeEngine:
    engine = FakeEngine(tmp_path)
    install(InstallOptions(bundle, (load_public(pub),), **kw), connect=connect_to(engine))  # type: ignore[arg-type]
    return engine


# -- airgap list ----------------------------------------------------------------------------------------


def test_list_before_any_install_says_so(cli: Cli, state_path: Path) -> None:
    r = cli("list")
    assert r.code == 0 and r.out.strip() == f"no bundle installed yet (install state {state_path})"
    _, obj = run_json(cli, "list")
    assert obj["bundles"] == [] and obj["state"] == str(state_path)
    assert not state_path.parent.exists()  # listing creates nothing


def test_list_shows_bundle_sequence_signers_images_and_when(
    cli: Cli, bundle: Path, keypair: KeyPair, samples: Samples, tmp_path: Path
) -> None:
    _install(bundle, keypair[1], tmp_path)
    _, obj = run_json(cli, "list")
    (entry,) = obj["bundles"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (entry["name"], entry["sequence"]) == ("agent", manifest["sequence"])
    assert entry["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    fingerprint = load_public(keypair[1]).fingerprint
    assert entry["signers"] == [fingerprint] and entry["signatures"]["valid"] == [fingerprint]
    assert entry["images"] == [
        {"image_id": samples["docker"].image_id, "ref_names": ["airgap-test/agent:1.0"], "platform": "linux/amd64"}
    ]
    text = cli("installed").out  # the alias
    assert f"agent  sequence {manifest['sequence']}  installed {entry['installed']}" in text
    assert f"signed by {fingerprint[:16]}" in text and f"airgap-test/agent:1.0  {samples['docker'].image_id}" in text


def test_list_alias_reports_itself_as_list_in_json(cli: Cli) -> None:
    _, obj = run_json(cli, "installed")
    assert obj["command"] == "list"
    assert ALIASES == {"installed": "list"}


def test_old_state_file_lists_without_signers_and_images(cli: Cli, state_path: Path) -> None:
    """The layout install.sh (and airgap before details were kept) writes: still read, details null."""
    state_path.parent.mkdir(mode=0o700)
    state_path.write_text(
        '{\n  "bundles": {\n    "agent": {\n      "installed": "2026-01-01T00:00:00Z",\n'
        f'      "manifest_sha256": "{"a" * 64}",\n      "sequence": 5\n    }}\n  }}\n}}\n'
    )
    state_path.chmod(0o600)
    _, obj = run_json(cli, "list")
    assert obj["bundles"] == [
        {
            "name": "agent",
            "sequence": 5,
            "manifest_sha256": "a" * 64,
            "installed": "2026-01-01T00:00:00Z",
            "signers": None,
            "signatures": None,
            "images": None,
        }
    ]
    assert "signers and images not recorded (installed by install.sh" in cli("list").out


def test_state_layout_install_sh_reads_is_unchanged_by_details(state_path: Path) -> None:
    """install.sh in bundles already carried to their hosts parses the state line by line: its layout must
    stay exactly three keys per bundle, whatever else is remembered."""
    state = InstallState(state_path)
    trust = TrustResult((FP,), (), ("ab" * 32,), 1)
    state.record(
        "agent",
        7,
        "b" * 64,
        "2026-02-02T00:00:00Z",
        signatures=trust,
        images=[RecordedImage("sha256:" + "c" * 64, ("a:1",), "linux/amd64")],
    )
    assert state_path.read_text() == (
        '{\n  "bundles": {\n    "agent": {\n      "installed": "2026-02-02T00:00:00Z",\n'
        f'      "manifest_sha256": "{"b" * 64}",\n      "sequence": 7\n    }}\n  }}\n}}\n'
    )
    (entry,) = state.entries()
    assert entry.details is not None and entry.details.signers == sorted([FP, "ab" * 32])
    assert rollback.details_path(state_path).stat().st_mode & 0o777 == 0o600


def test_details_of_replaced_bundles_are_dropped(state_path: Path) -> None:
    state = InstallState(state_path)
    trust = TrustResult((FP,), (), (), 1)
    state.record("agent", 1, "1" * 64, "2026-01-01T00:00:00Z", signatures=trust)
    state.record("agent", 2, "2" * 64, "2026-01-02T00:00:00Z", signatures=trust)
    installs = json.loads(rollback.details_path(state_path).read_text())["installs"]
    assert set(installs) == {"2" * 64}


def test_forced_downgrade_keeps_the_mark_and_its_details(state_path: Path) -> None:
    state = InstallState(state_path)
    trust = TrustResult((FP,), (), (), 1)
    state.record("agent", 9, "9" * 64, "2026-01-09T00:00:00Z", signatures=trust)
    state.record("agent", 3, "3" * 64, "2026-01-10T00:00:00Z", signatures=trust)
    (entry,) = state.entries()
    assert (entry.sequence, entry.manifest_sha256) == (9, "9" * 64) and entry.details is not None


def test_unreadable_details_file_named_with_the_way_out(cli: Cli, state_path: Path) -> None:
    InstallState(state_path).record("agent", 1, "1" * 64, "2026-01-01T00:00:00Z", signatures=TrustResult((FP,), (), (), 1))
    details = rollback.details_path(state_path)
    details.write_text('{"installs": []}')
    error = failed(cli, ExitCode.FORMAT, "list")
    assert str(details) in error["message"] and "move it away" in error["hint"] and "rollback marks" in error["hint"]


def test_list_refuses_a_state_others_could_change(cli: Cli, state_path: Path) -> None:
    state_path.parent.mkdir(mode=0o700)
    state_path.parent.chmod(0o777)
    error = failed(cli, ExitCode.ENVIRONMENT, "list")
    assert "writable by group or others" in error["message"]


# -- shell completion ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(cli: Cli, shell: str) -> None:
    r = cli("completion", shell)
    assert r.code == 0 and "_AIRGAP_COMPLETE" in r.out and f"{shell}_complete" in r.out
    _, obj = run_json(cli, "completion", shell)
    assert obj["shell"] == shell and obj["script"].strip() == r.out.strip()


def _complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], words: str) -> list[str]:
    """What bash completion offers for the command line WORDS (the cursor after the last word)."""
    monkeypatch.setenv("_AIRGAP_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(shlex.split(words)) - (0 if words.endswith(" ") else 1)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 0
    return [line.split(",", 1)[1] for line in capsys.readouterr().out.splitlines()]


def test_completion_offers_commands_and_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"verify", "install", "list", "completion"} <= set(_complete(monkeypatch, capsys, "airgap "))
    assert _complete(monkeypatch, capsys, "airgap ver") == ["verify"]
    assert {"--allow-expired", "--allow-unexpected", "--allow-downgrade"} <= set(
        _complete(monkeypatch, capsys, "airgap install --allow")
    )
    assert _complete(monkeypatch, capsys, "airgap completion ") == ["bash", "zsh", "fish"]


def test_unknown_shell_is_a_usage_error(cli: Cli) -> None:
    r = cli("completion", "tcsh")
    assert r.code == 2 and "tcsh" in r.err


# -- examples in --help, man pages ---------------------------------------------------------------------------


def _invocations(line: str) -> list[list[str]]:
    """The airgap command lines in an example (inside $(...), before a redirection)."""
    found = []
    for chunk in line.replace("$(", "\n").split("\n"):
        if chunk.startswith("airgap "):
            found.append(shlex.split(chunk.split(")")[0].split(" > ")[0])[1:])
    return found


def test_every_command_help_ends_with_examples(cli: Cli) -> None:
    for name in [*group.commands, None]:
        r = cli(*([name] if name else []), "--help")
        assert r.code == 0, name
        examples = EXAMPLES[name or "airgap"]
        assert "Examples:" in r.out, name
        for comment, line in examples:
            assert f"# {comment}" in r.out and line in r.out, (name, line)
    assert set(EXAMPLES) == {"airgap", *group.commands}


def test_every_example_parses_with_its_commands_options() -> None:
    """An example naming an option that no longer exists, or missing a required one, fails here."""
    checked = 0
    for examples in EXAMPLES.values():
        for _, line in examples:
            for args in _invocations(line):
                name, rest = args[0], args[1:]
                command = group.commands[name]
                ctx = click.Context(command, info_name=name, obj=None)
                parser = command.make_parser(ctx)
                opts, extra, _ = parser.parse_args(rest)  # NoSuchOption, BadOptionUsage
                assert extra == [], f"{line}: {extra} left over"
                for param in command.params:
                    assert not param.required or param.name in opts, f"{line}: {param.name} is required"
                checked += 1
    assert checked >= 25


def test_man_pages_cover_every_command(tmp_path: Path) -> None:
    written = manpage.write(tmp_path / "man")
    names = {p.name for p in written}
    assert names == {"airgap.1", *(f"airgap-{c}.1" for c in group.commands)}
    overview = (tmp_path / "man" / "airgap.1").read_text()
    for command in group.commands:
        assert f"\\fB{command}\\fR" in overview and f"airgap\\-{command}" in overview
        page = (tmp_path / "man" / f"airgap-{command}.1").read_text()
        assert page.startswith(f".TH AIRGAP\\-{command.upper()} 1") and ".SH EXAMPLES" in page
    for code in ExitCode:
        assert f"\\fB{int(code)}\\fR" in overview
    install_page = (tmp_path / "man" / "airgap-install.1").read_text()
    assert "\\-\\-allow\\-downgrade" in install_page and "registry://registry.site:5000/mirror" in install_page


def test_no_text_line_of_a_man_page_reads_as_a_roff_request(tmp_path: Path) -> None:
    for page in manpage.pages().values():
        for line in page.splitlines():
            if line.startswith((".", "'")):
                assert line.split()[0] in {".TH", ".SH", ".PP", ".TP", ".nf", ".fi", ".RS", ".RE"}, line


def test_committed_man_pages_are_current() -> None:
    """docs/man is what 'make man' writes from the commands as they are now."""
    committed = {p.name: p.read_text() for p in (ROOT / "docs" / "man").glob("*.1")}
    assert committed == manpage.pages(), "docs/man is out of date: run 'make man'"


# -- paths a user names for airgap to write: checked before any work --------------------------------------


def test_keygen_into_a_missing_directory_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    error = failed(cli, ExitCode.USAGE, "keygen", "--out", str(tmp_path / "nodir" / "k"), "--no-passphrase")
    assert f"directory {tmp_path / 'nodir'} does not exist" in error["message"] and "mkdir -p" in error["hint"]
    assert not (tmp_path / "nodir").exists()


def test_keygen_where_nothing_can_be_written_is_an_environment_problem(cli: Cli) -> None:
    error = failed(cli, ExitCode.ENVIRONMENT, "keygen", "--out", str(UNWRITABLE / "k"), "--no-passphrase")
    assert f"cannot write in {UNWRITABLE}" in error["message"] and "bug" not in error["hint"]


def test_verify_receipt_into_a_missing_directory_refused_before_verifying(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    error = failed(
        cli, ExitCode.USAGE, "verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(tmp_path / "nodir" / "r.json")
    )
    assert "--receipt" in error["message"] and "does not exist" in error["message"]


def test_verify_receipt_that_is_a_directory_refused(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    error = failed(cli, ExitCode.USAGE, "verify", str(bundle), "--trust", str(keypair[1]), "--receipt", str(tmp_path))
    assert "is a directory" in error["message"]


def test_pack_output_below_a_file_refused_before_any_export(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    args = ("pack", f"docker-archive:{samples['docker'].path}", "-o", str(blocker / "sub" / "bundle"), "--key", str(keypair[0]))
    error = failed(cli, ExitCode.USAGE, *args)
    assert f"{blocker} is not a directory" in error["message"]


def test_pack_where_nothing_can_be_written_refused_before_any_export(cli: Cli, samples: Samples, keypair: KeyPair) -> None:
    args = ("pack", f"docker-archive:{samples['docker'].path}", "-o", str(UNWRITABLE / "airgap-b"), "--key", str(keypair[0]))
    error = failed(cli, ExitCode.ENVIRONMENT, *args)
    assert "-o" in error["message"] or "--out" in error["message"]


def test_pack_makes_missing_output_directories_as_before(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "bundle"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0]))
    assert r.code == 0 and (out / "manifest.json").is_file(), r.err


def test_pull_where_nothing_can_be_written_refused_before_connecting(cli: Cli) -> None:
    error = failed(cli, ExitCode.ENVIRONMENT, "pull", "oci://127.0.0.1:9/none/b:1", "-o", str(UNWRITABLE / "airgap-b"))
    assert "cannot write in" in error["message"]


def test_unwritable_state_fails_before_anything_is_installed(
    bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRGAP_STATE", str(UNWRITABLE / "installed.json"))
    engine = FakeEngine(tmp_path)
    with pytest.raises(EnvironmentProblem) as caught:
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(engine))
    assert engine.load_calls == 0 and not engine.tags
    assert f"cannot write the install state in {UNWRITABLE}" in caught.value.message
    assert "nothing was installed" in (caught.value.hint or "")


def test_state_missing_below_an_unwritable_directory_fails_before_install(bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    options = InstallOptions(bundle, (load_public(keypair[1]),), state=UNWRITABLE / "airgap" / "installed.json")
    with pytest.raises(EnvironmentProblem):
        install(options, connect=connect_to(engine))
    assert engine.load_calls == 0


def test_state_write_failing_after_the_install_says_the_images_are_installed(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rollback, "atomic_write", disk_full)
    engine = FakeEngine(tmp_path)
    with pytest.raises(StateNotRecorded) as caught:
        install(InstallOptions(bundle, (load_public(keypair[1]),)), connect=connect_to(engine))
    e = caught.value
    assert engine.tags["airgap-test/agent:1.0"]  # installed
    assert e.exit_code == ExitCode.ENVIRONMENT
    assert e.message.startswith("the images are installed, but the install state") and "No space left" in e.message
    assert "run the same install again" in (e.hint or "")


def test_internal_errors_left_for_named_paths_none(cli: Cli, tmp_path: Path) -> None:
    """Each path option that names a place to write, pointed at a missing directory: exit 2, never 1."""
    missing = tmp_path / "nodir"
    cases = [
        ("keygen", "--out", str(missing / "k"), "--no-passphrase"),
        ("verify", str(tmp_path), "--trust", str(tmp_path), "--receipt", str(missing / "r.json")),
        ("pull", "oci://127.0.0.1:9/none/b:1", "-o", str(tmp_path / "file" / "b")),
    ]
    (tmp_path / "file").write_text("x")
    for args in cases:
        r = cli(*args, "--json")
        obj = check_output(r.out)
        assert r.code == ExitCode.USAGE and obj["error"]["kind"] == "usage", (args, r.err)
