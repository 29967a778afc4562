"""Rough edges a new user met, each named after the fault: wrong or generic hints, options checked only after the
work (or after the signature), output paths that end in a Docker hint, progress past its total or in the wrong
units, keygen's doubled suffix, one passphrase attempt, ``-q`` that left ``$(airgap install ...)`` empty, and a
verified-parts cache nobody could place or turn off."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from airgap import pack as pack_module
from airgap._cli.main import main
from airgap._cli.reporters import JsonLinesReporter, PlainReporter, Progress, TqdmReporter
from airgap._internal.format.writer import BundleWriter
from airgap.errors import EnvironmentProblem, ExitCode, UsageError
from tests.helpers.cli import Cli
from tests.helpers.json_contract import failed
from tests.helpers.keys import PASS, KeyPair, encrypted_key
from tests.helpers.samples import Samples

UNWRITABLE = Path("/sys")  # a directory no one may create files in, root included
MiB = 1 << 20


def _pack(samples: Samples, keypair: KeyPair, out: Path, *extra: str, image: str = "docker") -> tuple[str, ...]:
    return ("pack", f"docker-archive:{samples[image].path}", "-o", str(out), "--key", str(keypair[0]), *extra)


# -- output paths: named, with the fix for the file system, never the Docker engine's hint ----------------


@pytest.mark.parametrize("named", ["k.key", "k.pub"])
def test_keygen_out_naming_the_key_file_writes_no_double_suffix(cli: Cli, tmp_path: Path, named: str) -> None:
    r = cli("keygen", "--out", str(tmp_path / named), "--no-passphrase")
    assert r.code == 0, r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.pub"]
    assert f"private key  {tmp_path / 'k.key'}" in r.out


def test_state_directory_that_cannot_be_made_gets_no_docker_hint(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unwritable AIRGAP_STATE whose directory is missing: named as the install state, before any image loads."""
    monkeypatch.setenv("AIRGAP_STATE", str(UNWRITABLE / "airgap" / "installed.json"))
    out = tmp_path / "out.tar"
    error = failed(cli, ExitCode.ENVIRONMENT, "install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{out}")
    assert error["message"].startswith(f"cannot write the install state directory {UNWRITABLE / 'airgap'}")
    assert error["hint"].startswith("nothing was installed; ") and "--state" in error["hint"]
    assert "Docker" not in error["hint"] and not out.exists()


def test_install_state_option_below_an_unwritable_directory_names_it(
    cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    state = UNWRITABLE / "airgap" / "s.json"
    args = (
        "install",
        str(bundle),
        "--trust",
        str(keypair[1]),
        "--state",
        str(state),
        "--to",
        f"docker-archive:{tmp_path / 'o.tar'}",
    )
    error = failed(cli, ExitCode.ENVIRONMENT, *args)
    assert "install state directory" in error["message"] and "Docker" not in error["hint"]


@pytest.mark.parametrize(
    ("target", "code", "words"),
    [
        ("docker-archive:{tmp}/nodir/x.tar", ExitCode.USAGE, "does not exist"),
        ("oci-archive:{tmp}/nodir/x.tar", ExitCode.USAGE, "does not exist"),
        ("docker-archive:{tmp}", ExitCode.USAGE, "is a directory"),
        ("docker-archive:/sys/x.tar", ExitCode.ENVIRONMENT, "cannot write in /sys"),
        ("registry://", ExitCode.USAGE, "is not a registry address"),
        ("registry://bad host/mirror", ExitCode.USAGE, "is not a registry address"),
        ("registry://registry.site:5000/Upper", ExitCode.USAGE, "is not a registry address"),
        ("containerd://relative.sock", ExitCode.USAGE, "absolute path"),
        ("docker-archive:", ExitCode.USAGE, "names no file"),
        ("ftp://host/x", ExitCode.USAGE, "cannot read install target"),
    ],
)
def test_install_target_checked_before_the_signature(
    cli: Cli, bundle: Path, other_keypair: KeyPair, tmp_path: Path, target: str, code: ExitCode, words: str
) -> None:
    """--to is read before the bundle is: with a key that did not sign it, the bad target is still what is
    reported (exit 2 or 6, never the trust failure 5), in the words of --to, never of oci://."""
    text = target.format(tmp=tmp_path)
    error = failed(cli, code, "install", str(bundle), "--trust", str(other_keypair[1]), "--to", text)
    assert words in error["message"], error
    assert "oci://" not in error["message"] + error["hint"] and "DOCKER_HOST" not in error["hint"]
    assert not (tmp_path / "nodir").exists()


def test_registry_target_hint_shows_the_registry_form(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    error = failed(cli, ExitCode.USAGE, "install", str(bundle), "--trust", str(keypair[1]), "--to", "registry://")
    assert "registry://HOST[:PORT][/PREFIX]" in error["hint"]


# -- hints that name the fix for what was found --------------------------------------------------------


def test_unlisted_file_hint_says_remove_it_not_copy_the_part(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    (bundle / "notes.txt").write_text("left by someone")
    error = failed(cli, ExitCode.INTEGRITY, "verify", str(bundle), "--trust", str(keypair[1]))
    assert "notes.txt" in error["message"] and "not part of the signed bundle" in error["message"]
    assert "--allow-unexpected" in error["hint"] and "remove" in error["hint"] and "part" not in error["hint"]


def test_damaged_part_and_unlisted_file_hint_names_both_fixes(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    (bundle / "notes.txt").write_text("left by someone")
    part = sorted((bundle / "parts").iterdir())[0]
    part.write_bytes(b"\0" * part.stat().st_size)
    error = failed(cli, ExitCode.INTEGRITY, "verify", str(bundle), "--trust", str(keypair[1]))
    assert "copy the named part(s) again" in error["hint"] and "--allow-unexpected" in error["hint"]


def test_usage_error_hint_names_the_command_not_a_placeholder(cli: Cli, bundle: Path, keypair: KeyPair) -> None:
    r = cli("verify", str(bundle), "--trust", str(keypair[1]), "--receipt-key", str(keypair[0]))
    assert r.code == ExitCode.USAGE
    assert "hint: see 'airgap verify --help'" in r.err and "COMMAND" not in r.err


# -- pack: every option's consistency checked before any export ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--media-dir-size", "1MB", "--part-size", "4MiB"), "does not fit on a medium"),
        (("--media-dir-size", "100KiB", "--part-size", "4KiB"), "does not fit on a medium"),
        (("--media-dir-size", "0"), "does not fit on a medium"),
        (("--wheelhouse", "{tmp}/nowheels"), "is not a directory"),
        (("--wheelhouse", "{tmp}"), "holds no airgap wheel"),
        (("--trust", "{pub}"), "--trust is for --since"),
    ],
)
def test_pack_options_that_disagree_refused_before_any_export(
    cli: Cli,
    samples: Samples,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    words: str,
) -> None:
    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("a source was opened")

    monkeypatch.setattr(pack_module, "open_sources", no_export)
    out = tmp_path / "b"
    args = [a.format(tmp=tmp_path, pub=keypair[1]) for a in extra]
    error = failed(cli, ExitCode.USAGE, *_pack(samples, keypair, out, *args))
    assert words in error["message"] and "resume" not in error["hint"]
    assert not out.exists()


def test_medium_too_small_for_the_manifest_refused_before_any_part_is_written(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    error = failed(cli, ExitCode.USAGE, *_pack(samples, keypair, out, "--media-dir-size", "1100KiB", "--part-size", "4KiB"))
    assert "leaves no room beside the manifest" in error["message"]
    assert not (out / ".airgap-staging").exists() or not any((out / ".airgap-staging").iterdir())


def test_late_usage_error_does_not_say_run_the_same_pack_again(
    cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object) -> None:
        raise UsageError("the volumes cannot be planned")

    monkeypatch.setattr(pack_module, "_split_into_volumes", refused)
    error = failed(
        cli, ExitCode.USAGE, *_pack(samples, keypair, tmp_path / "b", "--media-dir-size", "8MiB", "--part-size", "1MiB")
    )
    assert "run the same pack again" not in error["hint"]
    assert "a pack of the same sources, --part-size and key reuses them" in error["hint"]


# -- resume: only the same pack is called a resume --------------------------------------------------------


@pytest.fixture
def staged(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The output directory of a pack (1 MiB parts) that failed before committing: its staging is kept."""

    def unplugged(self: BundleWriter, digests: list[str]) -> None:
        raise EnvironmentProblem("the disk was unplugged")

    out = tmp_path / "b"
    with monkeypatch.context() as m:
        m.setattr(BundleWriter, "commit_parts", unplugged)
        assert cli(*_pack(samples, keypair, out, "--part-size", "1MiB")).code == ExitCode.ENVIRONMENT
    return out


@pytest.mark.parametrize("change", ["another image", "another --part-size"])
def test_staging_of_another_pack_is_not_called_a_resume(
    cli: Cli, samples: Samples, keypair: KeyPair, staged: Path, change: str
) -> None:
    if change == "another image":
        args = _pack(samples, keypair, staged, "--part-size", "1MiB", image="docker2")
    else:
        args = _pack(samples, keypair, staged, "--part-size", "2MiB")
    r = cli(*args, "--progress", "lines")
    assert r.code == 0, r.err
    assert "resuming" not in r.err and "staged by a pack of other sources, options or key: discarded" in r.err


def test_the_same_pack_again_is_called_a_resume(cli: Cli, samples: Samples, keypair: KeyPair, staged: Path) -> None:
    r = cli(*_pack(samples, keypair, staged, "--part-size", "1MiB"), "--progress", "lines")
    assert r.code == 0 and "resuming an interrupted pack" in r.err, r.err


# -- progress: exact totals, binary units, never past 100 % ----------------------------------------------


def _plain(total: int, moved: list[int]) -> list[str]:
    stream = io.StringIO()
    reporter = PlainReporter(stream, interval=0)
    reporter.start("pack", total)
    for n in moved:
        reporter.advance(n)
    reporter.finish()
    return stream.getvalue().splitlines()


def test_progress_line_never_shows_more_than_its_total() -> None:
    """An estimate below what was moved: no '116.4 MiB of 116.0 MiB'; the total follows what was moved."""
    lines = _plain(116 * MiB, [100 * MiB, 16 * MiB + 400 * 1024])
    for line in lines:
        done, of = line.split(": ", 1)[1].split(" (")[0].split(" of ")
        assert float(done.split()[0]) <= float(of.split()[0]), line
        assert "%)" in line and int(line.split(" (")[1].split("%")[0]) <= 100, line
    assert lines[-1].startswith("pack: 116.4 MiB of 116.4 MiB (100%)")


def test_progress_final_line_total_is_what_was_moved() -> None:
    """An estimate above what was moved (a pack's sources): the last line ends at 100 %, not 99 %."""
    last = _plain(4270080, [4239360])[-1]
    assert last.startswith("pack: 4.0 MiB of 4.0 MiB (100%)") and "done in" in last


def test_progress_json_finish_total_is_what_was_moved() -> None:
    stream = io.StringIO()
    reporter = JsonLinesReporter(stream, "pack", interval=0)
    reporter.start("pack", 1000)
    reporter.advance(1500)
    reporter.finish()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(e["done"] <= e["total"] for e in events if e["event"] in ("advance", "finish"))
    assert events[-1]["total"] == events[-1]["done"] == 1500


def test_interruption_line_never_shows_more_than_its_total() -> None:
    assert Progress("pack", 1500, 1000, 0).describe() == "during 'pack' after 1.5 KiB of 1.5 KiB (100%)"


def test_progress_bar_speaks_binary_units_and_stops_at_100_percent() -> None:
    """tqdm alone shows MiB as 'M' and rates as 'MB/s', and drops the bar once past an estimate."""
    stream = io.StringIO()
    reporter = TqdmReporter(stream)
    reporter.start("install", 3 * MiB)
    for _ in range(4):
        reporter.advance(MiB)
    reporter.finish()
    shown = stream.getvalue().replace("\r", "\n")
    assert "4.0 MiB of 4.0 MiB" in shown and "iB/s" in shown
    assert "MB/s" not in shown and "M/" not in shown
    percents = [int(line.split("%")[0].split()[-1]) for line in shown.splitlines() if "%|" in line]
    assert percents and max(percents) <= 100


# -- keys: prompts in one voice, three passphrase attempts ------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A terminal on stdin whose user answers each prompt from ``answers``; the prompts asked are recorded."""
    answers: list[str] = []
    asked: list[str] = []

    def prompt(text: str, **kwargs: object) -> str:
        asked.append(text)
        if not answers:
            raise click.Abort
        return answers.pop(0)

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(click, "prompt", prompt)
    yield answers
    assert asked and all(text[:1].islower() for text in asked), asked


def test_wrong_passphrase_at_the_prompt_is_asked_again(
    cli: Cli, terminal: list[str], bundle: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    key, _, fingerprint = encrypted_key(tmp_path)
    terminal += ["wrong", "also wrong", PASS.decode()]
    r = cli("sign", str(bundle), "--key", str(key), "--trust", str(keypair[1]))
    assert "wrong passphrase, try again (2 attempts left)" in r.err and "(1 attempt left)" in r.err
    assert r.code == 0, r.err
    assert (bundle / "signatures" / f"{fingerprint}.sig").is_file()


def test_three_wrong_passphrases_end_with_exit_3(cli: Cli, terminal: list[str], bundle: Path, tmp_path: Path) -> None:
    key, pub, _ = encrypted_key(tmp_path)
    terminal += ["a", "b", "c", PASS.decode()]
    r = cli("sign", str(bundle), "--key", str(key), "--trust", str(pub))
    assert r.code == ExitCode.FORMAT and "wrong passphrase" in r.err.splitlines()[-2]
    assert terminal == [PASS.decode()]  # a fourth answer was never asked for


def test_new_key_passphrases_that_differ_are_asked_again(cli: Cli, terminal: list[str], tmp_path: Path) -> None:
    terminal += ["one", "two", "same", "same"]
    r = cli("keygen", "--out", str(tmp_path / "k"))
    assert r.code == 0, r.err
    assert "the two passphrases differ, try again" in r.err and "Error:" not in r.err
    assert (tmp_path / "k.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


# -- -q: the IDs alone on stdout when it is not a terminal -------------------------------------------------


def test_quiet_install_prints_the_image_ids_alone_when_stdout_is_not_a_terminal(
    bundle: Path, keypair: KeyPair, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{tmp_path / 'x.tar'}"]
    assert main([*args, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{samples['docker'].image_id}\n" and captured.err == ""
    assert main([*args, "--replace", "--progress", "none"]) == 0  # without -q: the usual lines
    assert capsys.readouterr().out.startswith("written: airgap-test/agent:1.0  sha256:")


# -- verify's verified-parts cache: placed with --state, or not written ------------------------------------


def test_verify_cache_placed_with_state(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    default = Path(json.loads(json.dumps(str(tmp_path / "airgap-state")))) / "verified.jsonl"
    state = tmp_path / "elsewhere" / "installed.json"
    assert cli("verify", str(bundle), "--trust", str(keypair[1]), "--state", str(state)).code == 0
    assert (state.parent / "verified.jsonl").stat().st_size > 0 and not default.exists()


def test_verify_no_cache_writes_nothing_on_this_host(cli: Cli, bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    state = tmp_path / "elsewhere" / "installed.json"
    assert cli("verify", str(bundle), "--trust", str(keypair[1]), "--state", str(state), "--no-cache").code == 0
    assert not state.parent.exists() and not (tmp_path / "airgap-state").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("install", "BUNDLE", "--to", "registry://127.0.0.1:99999/mirror"),
        ("pack", "oci://127.0.0.1:70000/team/app:1", "-o", "OUT"),
        ("pack", "oci://[::1]:0/team/app:1", "-o", "OUT"),
    ],
)
def test_registry_port_out_of_range_is_refused_before_any_connection(
    cli: Cli, keypair: KeyPair, tmp_path: Path, args: tuple[str, ...]
) -> None:
    args = tuple(a.replace("BUNDLE", str(tmp_path)).replace("OUT", str(tmp_path / "out")) for a in args)
    extra = ("--trust", str(keypair[1])) if args[0] == "install" else ("--key", str(keypair[0]))
    r = cli(*args, *extra)
    assert r.code == ExitCode.USAGE, r.err
    assert "is not a TCP port" in r.err and "from 1 to 65535" in r.err
    assert not (tmp_path / "out").exists()


def test_file_system_error_while_writing_gets_a_file_system_hint_not_the_docker_one() -> None:
    import errno

    from airgap._internal.util.fsutil import io_error

    error = io_error(OSError(errno.EROFS, "Read-only file system"), "bundle /media/usb/b")
    assert error.exit_code == ExitCode.ENVIRONMENT
    assert "read-only" in (error.hint or "") and "Docker" not in (error.hint or "")
