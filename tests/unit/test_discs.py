"""One drive, many discs: a split bundle installed, verified and signed with its discs inserted one after
another, in any order, nothing copied first; each disc known by its signed listing, a disc of another bundle or
a changed one refused naming it; one disc checked alone (``verify --volume``), and which are still unchecked.
Against the fake engine; the real engine (a long pause mid-upload), the terminal prompt and the tamper table:
``integration/test_discs.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airgap._internal.format.discs import in_disc_order
from airgap._internal.format.reader import load_bundle
from airgap.discs import DiscRequest
from airgap.errors import FormatError, IntegrityError, UsageError
from airgap.install import InstallOptions, InstallResult, install
from airgap.sign import SignOptions, sign
from airgap.trust.keys import PublicKey, load_public
from airgap.verify import VerifyOptions, verify
from tests.helpers.bundles import pack_split
from tests.helpers.cli import Cli
from tests.helpers.discs import Drive, ScriptedChanger, held_volume, swap_script
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.json_contract import check_progress, run_json
from tests.helpers.keys import KeyPair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Samples

TAG = "airgap-test/agent:1.0"


@pytest.fixture
def split(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    """The sample packed into vol-NN folders of 3 MiB (1 MiB parts): its model layer spans two volumes."""
    out = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, out, "1MiB", "3MiB")
    assert r.code == 0, r.err
    return out


def volumes_of(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir())


def trusted(keypair: KeyPair) -> tuple[PublicKey, ...]:
    return (load_public(keypair[1]),)


def install_from(drive: Drive, changer: ScriptedChanger, keypair: KeyPair, engine: FakeEngine) -> InstallResult:
    return install(InstallOptions(drive.media, trusted(keypair), changer=changer), connect=connect_to(engine))


# -- install -------------------------------------------------------------------------------------------


def test_install_from_one_drive_asks_for_each_disc_once(split: Path, keypair: KeyPair, samples: Samples, tmp_path: Path) -> None:
    names = volumes_of(split)
    assert len(names) >= 3
    drive = Drive(split, tmp_path / "cdrom")
    changer = ScriptedChanger(drive)
    engine = FakeEngine(tmp_path)
    result = install_from(drive, changer, keypair, engine)
    assert engine.tags[TAG] == samples["docker"].image_id and result.images[0].action == "loaded"
    assert drive.inserted == names  # asked in the bundle's order, each disc once
    first = changer.requests[0]
    assert first.wanted == ("vol-01",) and first.bundle == "" and "manifest" in first.holds["vol-01"]
    later = changer.requests[1]
    assert later.bundle.endswith(f"sequence {load_bundle(split).manifest.sequence}")
    assert later.holds[later.wanted[0]].startswith("part")  # "parts 3-4 of 7, 2.0 MiB"
    assert engine.load_calls == 1


def test_install_starts_with_whatever_disc_is_in_the_drive(
    cli: Cli, split: Path, keypair: KeyPair, samples: Samples, tmp_path: Path
) -> None:
    """Once the first disc was read on this host (verify --volume as it arrived), an install can start with any
    disc: it reads that one on, then comes back for the discs before it."""
    names = volumes_of(split)
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    assert cli("verify", str(drive.media), "--volume", "--trust", str(keypair[1])).code == 0
    drive.insert(names[-1])
    changer = ScriptedChanger(drive)
    engine = FakeEngine(tmp_path)
    install_from(drive, changer, keypair, engine)
    assert engine.tags[TAG] == samples["docker"].image_id
    read = drive.inserted[1:]
    assert read[0] == names[-1] and set(read) == set(names) and len(read) <= len(names) + 1
    assert changer.requests[0].wanted != ("vol-01",) or read[1] == "vol-01"


def test_a_disc_not_asked_for_is_asked_again_and_the_install_goes_on(
    split: Path, keypair: KeyPair, samples: Samples, tmp_path: Path
) -> None:
    names = volumes_of(split)
    drive = Drive(split, tmp_path / "cdrom")
    wrong = [names[-1]]

    def choose(request: DiscRequest) -> str:
        return wrong.pop() if request.wanted == ("vol-02",) and wrong else request.wanted[0]

    changer = ScriptedChanger(drive, choose)
    engine = FakeEngine(tmp_path)
    install_from(drive, changer, keypair, engine)
    assert engine.tags[TAG] == samples["docker"].image_id
    again = [r for r in changer.requests if r.wanted == ("vol-02",)]
    assert len(again) == 2 and again[1].attempt == 2 and not again[1].refused
    assert again[1].found.startswith(f"the drive holds {names[-1]}; the next part to read (parts/")
    assert again[1].found.endswith(" is on vol-02")


def test_a_layer_continuing_on_the_next_disc_asks_for_it_by_name(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    m = load_bundle(split).manifest
    spanning = [d for d in {p.blob for p in m.parts} if len({m.volume_of(p.path) for p in m.parts_of(d)}) > 1]
    assert spanning, "the sample's model layer should span two volumes"
    drive = Drive(split, tmp_path / "cdrom")
    changer = ScriptedChanger(drive)
    install_from(drive, changer, keypair, FakeEngine(tmp_path))
    continued = [r for r in changer.requests if len(r.wanted) == 1 and r.found.startswith("the drive holds")]
    assert continued and " is on " in continued[0].found  # "the drive holds vol-01; the next part to read (...) is on vol-02"


def other_bundle(cli: Cli, samples: Samples, keypair: KeyPair, tmp_path: Path) -> Path:
    """The same image split the same way, as sequence 7: its discs carry the same labels and part names."""
    other = tmp_path / "other"
    archive = f"docker-archive:{samples['docker'].path}"
    r = cli("pack", archive, "-o", str(other), "--key", str(keypair[0]), "--part-size", "1MiB", "--media-dir-size", "3MiB",
            "--sequence", "7")  # fmt: skip
    assert r.code == 0, r.err
    return other


def test_disc_of_another_bundle_refused_naming_it(
    cli: Cli, split: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    foreign = [other_bundle(cli, samples, keypair, tmp_path) / "vol-02"]
    drive = Drive(split, tmp_path / "cdrom")

    def choose(request: DiscRequest) -> str | Path | None:
        return foreign.pop() if request.wanted[0] == "vol-02" and foreign else request.wanted[0]

    changer = ScriptedChanger(drive, choose)
    engine = FakeEngine(tmp_path)
    install_from(drive, changer, keypair, engine)
    refused = [r for r in changer.requests if r.refused]
    assert len(refused) == 1 and refused[0].wanted == ("vol-02",)
    label = f"{load_bundle(split).manifest.name} sequence {load_bundle(split).manifest.sequence}"
    assert f"cdrom/volume-02.txt is not the signed listing of vol-02 of {label}" in refused[0].found
    assert 'it says "airgap bundle agent, sequence 7: volume vol-02' in refused[0].found
    assert "other:vol-02" in drive.inserted and engine.tags[TAG]


def test_disc_of_another_bundle_stops_the_install_when_no_other_comes(
    cli: Cli, split: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    foreign = other_bundle(cli, samples, keypair, tmp_path) / "vol-02"
    drive = Drive(split, tmp_path / "cdrom")

    def choose(request: DiscRequest) -> str | Path | None:
        if request.refused:
            return None  # nobody comes with the right disc
        return foreign if request.wanted[0] == "vol-02" else request.wanted[0]

    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=r"volume-02\.txt is not the signed listing of vol-02.*sequence 7") as caught:
        install_from(drive, ScriptedChanger(drive, choose), keypair, engine)
    assert caught.value.volume == "vol-02"
    assert TAG not in engine.tags  # cut off before the upload's end: nothing registered


def test_changed_listing_refused(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    with open(split / "vol-02" / "volume-02.txt", "a") as fh:
        fh.write("  parts/evil.zst  1 bytes\n")
    drive = Drive(split, tmp_path / "cdrom")
    changer = ScriptedChanger(drive, choose=lambda r: None if r.refused else r.wanted[0])
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=r"cdrom/volume-02\.txt is not the signed listing of vol-02"):
        install_from(drive, changer, keypair, engine)
    assert TAG not in engine.tags


def test_disc_missing_a_part_stops_the_install_before_its_end(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    names = volumes_of(split)
    victim = next((split / names[-1] / "parts").iterdir())
    victim.unlink()
    drive = Drive(split, tmp_path / "cdrom")
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=rf"part parts/{victim.name} is missing \(on {names[-1]}\)") as caught:
        install_from(drive, ScriptedChanger(drive), keypair, engine)
    assert f"disc labelled {names[-1]} lacks it" in (caught.value.hint or "")
    assert TAG not in engine.tags


def test_unlisted_file_on_a_disc_refused(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    (split / "vol-02" / "autorun.sh").write_text("#!/bin/sh\n")
    drive = Drive(split, tmp_path / "cdrom")
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=r"cdrom/autorun\.sh in the bundle is not part of the signed bundle"):
        install_from(drive, ScriptedChanger(drive), keypair, engine)
    assert TAG not in engine.tags


def test_first_disc_carrying_another_manifest_refused(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    """The manifest in use came from this host's copy; the first disc then brings another, signed or not."""
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    assert cli("verify", str(drive.media), "--volume", "--trust", str(keypair[1])).code == 0
    drive.eject()
    manifest = split / "vol-01" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"sequence": ', '"sequence": 1', 1))
    drive.insert("vol-02")
    changer = ScriptedChanger(drive, choose=lambda r: None if r.refused else r.wanted[0])
    with pytest.raises(IntegrityError, match=r"carries another manifest\.json than the signed one in use"):
        install_from(drive, changer, keypair, FakeEngine(tmp_path))


def test_one_drive_refuses_from_and_via_registry(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    drive = Drive(split, tmp_path / "cdrom")
    changer = ScriptedChanger(drive)
    with pytest.raises(UsageError, match="reads every volume from BUNDLE"):
        install(
            InstallOptions(drive.media, trusted(keypair), changer=changer, search=(split,)),
            connect=connect_to(FakeEngine(tmp_path)),
        )
    with pytest.raises(UsageError, match="needs --via load"):
        install(
            InstallOptions(drive.media, trusted(keypair), changer=changer, via="registry"),
            connect=connect_to(FakeEngine(tmp_path)),
        )
    assert not changer.requests


def test_in_disc_order_keeps_the_order_without_a_drive(split: Path) -> None:
    items = [("a", "x"), ("b", "y")]
    assert list(in_disc_order(items, {}, lambda i: i[1])) == items


# -- verify --------------------------------------------------------------------------------------------


def test_verify_volume_says_which_volumes_are_still_unchecked(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    names = volumes_of(split)
    _, report = run_json(cli, "verify", str(split), "--volume", "2", "--trust", str(keypair[1]))
    vols = report["volumes"]
    assert vols["this_run"] == ["vol-02"] and vols["passed"] == ["vol-02"]
    assert vols["unchecked"] == [n for n in names if n != "vol-02"]
    assert {p["path"] for p in report["parts"]} == {p for p in _paths_on(split, "vol-02") if p.startswith("parts/")}
    # the last disc, burned and mounted alone: known by its listing, checked against the manifest kept here
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert(names[-1])
    r, report = run_json(cli, "verify", str(drive.media), "--volume", "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert report["volumes"]["this_run"] == [names[-1]]
    assert report["volumes"]["passed"] == ["vol-02", names[-1]]
    assert report["volumes"]["checks"][names[-1]]["where"] == str(drive.media)
    r = cli("verify", str(drive.media), "--volume", "--trust", str(keypair[1]))
    assert "still unchecked: " + ", ".join(n for n in names if n not in ("vol-02", names[-1])) in r.out
    drive.eject()
    _, report = run_json(cli, "verify", str(split), "--trust", str(keypair[1]))
    assert report["volumes"]["unchecked"] == [] and report["volumes"]["passed"] == names


def _paths_on(split: Path, volume: str) -> set[str]:
    m = load_bundle(split).manifest
    return {p for v in m.volumes if v.name == volume for p in v.paths}


def test_verify_volume_of_a_bad_disc_records_it_failed(cli: Cli, split: Path, keypair: KeyPair) -> None:
    part = next((split / "vol-02" / "parts").iterdir())
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    r, report = run_json(cli, "verify", str(split), "--volume", "vol-02", "--trust", str(keypair[1]))
    assert r.code == 4 and f"parts/{part.name}" in r.err
    assert report["volumes"]["failed"] == ["vol-02"]


def test_verify_a_later_disc_alone_needs_the_first_read_once(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-02")
    r = cli("verify", str(drive.media), "--volume", "--trust", str(keypair[1]))
    assert r.code == 3, r.err
    assert "volume-02.txt" in r.err and "of a bundle not read on this host yet" in r.err
    assert "insert the first volume (vol-01" in r.err


def test_verify_volume_needs_a_split_bundle_and_a_volume_it_has(cli: Cli, bundle: Path, split: Path, keypair: KeyPair) -> None:
    r = cli("verify", str(bundle), "--volume", "1", "--trust", str(keypair[1]))
    assert r.code == 2 and "not split into volumes" in r.err
    r = cli("verify", str(split), "--volume", "42", "--trust", str(keypair[1]))
    assert r.code == 2 and "has no volume 42" in r.err
    r = cli("verify", str(split), "--volume", "--trust", str(keypair[1]))
    assert r.code == 2 and "name the one to check" in r.err
    r = cli("verify", str(split), "--volume", "x3", "--trust", str(keypair[1]))
    assert r.code == 2 and "names no volume" in r.err


def test_verify_one_drive_with_a_media_command(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    names = volumes_of(split)
    media, log = tmp_path / "cdrom", tmp_path / "requests.log"
    media.mkdir()
    command = swap_script(tmp_path, split, media, log)
    r, report = run_json(cli, "verify", str(media), "--one-drive", "--media-command", command, "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert report["volumes"]["this_run"] == names and report["volumes"]["unchecked"] == []
    assert log.read_text().split("\n")[0] == "vol-01"
    assert len(log.read_text().splitlines()) == len(names)


def test_media_command_that_fails_is_named(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    (tmp_path / "cdrom").mkdir()
    r = cli("verify", str(tmp_path / "cdrom"), "--media-command", "false", "--trust", str(keypair[1]))
    assert r.code == 6 and "--media-command false failed (exit 1) when asked for vol-01" in r.err


# -- sign ----------------------------------------------------------------------------------------------


def test_sign_reuses_the_parts_verify_checked(cli: Cli, split: Path, keypair: KeyPair, other_keypair: KeyPair) -> None:
    parts = len(load_bundle(split).manifest.parts)
    assert cli("verify", str(split), "--trust", str(keypair[1])).code == 0
    _, signed = run_json(cli, "sign", str(split), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    assert (signed["parts_cached"], signed["parts_hashed"]) == (parts, 0)
    victim = next((split / "vol-02" / "parts").iterdir())
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))  # touched since: hashed again
    _, signed = run_json(cli, "sign", str(split), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    assert (signed["parts_cached"], signed["parts_hashed"]) == (parts - 1, 1)


def test_sign_hashes_a_part_changed_since_verify(cli: Cli, split: Path, keypair: KeyPair, other_keypair: KeyPair) -> None:
    assert cli("verify", str(split), "--trust", str(keypair[1])).code == 0
    victim = next((split / "vol-03" / "parts").iterdir())
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    r = cli("sign", str(split), "--key", str(other_keypair[0]), "--trust", str(keypair[1]))
    assert r.code == 4 and victim.name in r.err
    assert not (split / "vol-01" / "signatures" / f"{load_public(other_keypair[1]).fingerprint}.sig").exists()


def test_sign_from_one_drive_writes_beside_the_manifest(
    split: Path, keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path
) -> None:
    drive = Drive(split, tmp_path / "cdrom")
    changer = ScriptedChanger(drive)
    result = sign(SignOptions(drive.media, other_keypair[0], trusted(keypair), changer=changer))
    drive.eject()
    assert (split / "vol-01" / "signatures" / f"{result.fingerprint}.sig").exists()
    both = (load_public(keypair[1]), load_public(other_keypair[1]))
    assert verify(VerifyOptions(split, both, threshold=2)).ok
    assert drive.inserted[-1] == "vol-01"  # asked for again at the end, to write the signature


# -- the prompt: a line on stdin answers it ------------------------------------------------------------


def test_prompts_answered_by_lines_on_stdin_with_json_events(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    names = volumes_of(split)
    sequence = load_bundle(split).manifest.sequence
    drive = Drive(split, tmp_path / "cdrom")
    env = {**os.environ, "AIRGAP_STATE": str(tmp_path / "state" / "installed.json")}
    cmd = [
        sys.executable,
        "-m",
        "airgap",
        "--progress",
        "json",
        "verify",
        str(drive.media),
        "--one-drive",
        "--trust",
        str(keypair[1]),
    ]
    events = []
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        for line in proc.stderr:
            if not line.startswith("{"):
                continue
            event = check_progress(line)[0]
            events.append(event)
            if event["event"] == "insert":
                drive.insert(event["volumes"][0])
                proc.stdin.write("\n")
                proc.stdin.flush()
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    asked = [e for e in events if e["event"] == "insert"]
    assert [e["volumes"][0] for e in asked] == names
    assert asked[0]["message"] == f"insert vol-01 (the manifest and the signatures) into {drive.media}, then send a line on stdin"
    assert asked[1]["bundle"] == f"agent sequence {sequence}"
    assert asked[1]["volumes"] == names[1:] and asked[1]["holds"]["vol-02"].startswith("part")
    assert asked[-1]["seen"] == names[:-1] and asked[-1]["total_volumes"] == len(names)


def test_stdin_at_its_end_names_the_disc_that_did_not_come(split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    rest = ", ".join(volumes_of(split)[1:])
    sequence = load_bundle(split).manifest.sequence
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    env = {**os.environ, "AIRGAP_STATE": str(tmp_path / "state" / "installed.json")}
    cmd = [sys.executable, "-m", "airgap", "verify", str(drive.media), "--one-drive", "--trust", str(keypair[1])]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 4, done.stderr
    asked = f"insert any of {rest} (the volumes still to read, in any order) into {drive.media}, then send a line on stdin"
    assert asked in done.stderr
    assert f"error: {rest} of agent sequence {sequence} are not in" in done.stderr
    assert f"are not in {drive.media} (it holds vol-01)" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_disc_at_all_is_a_format_error(keypair: KeyPair, tmp_path: Path) -> None:
    empty = tmp_path / "cdrom"
    empty.mkdir()
    with pytest.raises(FormatError, match="holds no bundle manifest") as caught:
        verify(
            VerifyOptions(
                empty, (load_public(keypair[1]),), changer=ScriptedChanger(Drive(tmp_path / "shelf", empty), lambda r: None)
            )
        )
    assert "insert the first volume (vol-01" in (caught.value.hint or "")


def test_a_folder_holding_every_volume_needs_no_disc_asked(cli: Cli, split: Path, keypair: KeyPair, tmp_path: Path) -> None:
    """The packing side's bundle folder (vol-NN folders below it), given as the drive: every volume is at hand."""
    assert held_volume(split / "vol-01") == "vol-01"
    changer = ScriptedChanger(Drive(tmp_path / "shelf", tmp_path / "unused"), lambda r: None)
    report = verify(VerifyOptions(split, trusted(keypair), changer=changer))
    assert report.ok and not changer.requests
    shutil.rmtree(tmp_path / "unused")
    assert json.loads(json.dumps(report.to_dict()))["volumes"]["unchecked"] == []


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_while_waiting_for_a_disc(
    split: Path, keypair: KeyPair, tmp_path: Path, signal_number: signal.Signals, code: int
) -> None:
    """Ctrl-C or SIGTERM at a prompt ends the wait at once, with the usual line saying nothing was changed."""
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    env = {**os.environ, "AIRGAP_STATE": str(tmp_path / "state" / "installed.json")}
    cmd = [sys.executable, "-m", "airgap", "verify", str(drive.media), "--one-drive", "--trust", str(keypair[1])]
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdin is not None
        for line in proc.stderr:
            if line.startswith("insert "):
                break
        asked = time.monotonic()
        proc.send_signal(signal_number)
        rest = proc.stderr.read()
        proc.wait(timeout=30)
        proc.stdin.close()
    assert time.monotonic() - asked < 5
    assert proc.returncode == code, rest
    assert "error: interrupted" in rest or "error: terminated" in rest
    assert "Traceback" not in rest
