"""One drive, many discs, against the real engine and a real terminal: the engine waits through a long pause
mid-upload while a disc is fetched; the tamper table holds for a bundle read disc by disc (install and
verify, each row with its exit code, the file or disc at fault named, the engine unchanged); a person at a
terminal (tmux) sees each prompt and the disc is noticed once it is in.  The rest, against the fake engine:
``unit/test_discs.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from airgap._internal.format.reader import load_bundle
from tests.helpers.bundles import pack_split
from tests.helpers.discs import Drive, swap_script
from tests.helpers.engine import IN_CI, evict_images_sharing_layers, remove
from tests.helpers.json_contract import check_progress
from tests.helpers.paths import ROOT

TAG = "airgap-test/agent:1.0"


@pytest.fixture
def split(cli, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, out, "1MiB", "3MiB")
    assert r.code == 0, r.err
    return out


def engine_state(client: docker.DockerClient) -> set[tuple[str, tuple[str, ...]]]:
    return {(i.id, tuple(sorted(i.tags))) for i in client.images.list(all=True)}


def env_for(tmp_path: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "AIRGAP_STATE": str(tmp_path / "airgap-state" / "installed.json"), **more}


# -- the engine waits for the next disc ----------------------------------------------------------------


@pytest.mark.docker
def test_engine_waits_through_a_long_pause_mid_upload(docker_client, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The upload is open (the engine is unpacking it) when the second disc is asked for; 65 s pass before it
    comes; the engine keeps the connection and loads the image, bit-exact."""
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    root = Path(docker_client.info()["DockerRootDir"])
    drive = Drive(split, tmp_path / "cdrom")
    cmd = [
        sys.executable,
        "-m",
        "airgap",
        "--progress",
        "json",
        "install",
        str(drive.media),
        "--one-drive",
        "--trust",
        str(keypair[1]),
    ]
    started = time.monotonic()
    uploading = paused = False
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env_for(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        try:
            for line in proc.stderr:
                if not line.startswith("{"):
                    continue
                (event,) = check_progress(line)
                if event["event"] == "start" and event["phase"] == "install":
                    uploading = True
                if event["event"] != "insert":
                    continue
                volume = event["volumes"][0]
                if volume == "vol-02":
                    assert uploading, "the second disc was asked for before the upload began"
                    assert list((root / "tmp").glob("docker-import-*")), "the engine is not receiving an upload"
                    time.sleep(65)
                    paused = True
                drive.insert(volume)
                proc.stdin.write("\n")
                proc.stdin.flush()
            proc.stdin.close()
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert paused and time.monotonic() - started >= 65
    assert proc.returncode == 0
    assert docker_client.images.get(TAG).id == samples["docker"].image_id
    remove(docker_client, TAG, samples["docker"].image_id)


@pytest.mark.docker
def test_ctrl_c_while_the_upload_waits_for_a_disc_loads_nothing(
    docker_client, split: Path, samples, keypair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The prompt waits in the thread that feeds the upload; Ctrl-C there ends the wait at once, the upload is cut
    off, and the engine keeps nothing."""
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    before = engine_state(docker_client)
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    cmd = [sys.executable, "-m", "airgap", "install", str(drive.media), "--one-drive", "--trust", str(keypair[1])]
    with subprocess.Popen(cmd, cwd=ROOT, env=env_for(tmp_path), stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdin is not None
        for line in proc.stderr:
            if line.startswith("insert vol-02"):
                break
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
        proc.stdin.close()
    assert time.monotonic() - asked < 10, rest
    assert proc.returncode == 130, rest
    assert "error: interrupted (SIGINT, Ctrl-C) during 'install'" in rest and "Traceback" not in rest
    assert engine_state(docker_client) == before


@pytest.mark.docker
def test_install_one_drive_through_a_media_command(docker_client, cli, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    names = sorted(p.name for p in split.iterdir())
    media, log = tmp_path / "cdrom", tmp_path / "requests.log"
    media.mkdir()
    command = swap_script(tmp_path, split, media, log)
    r = cli("install", str(media), "--media-command", command, "--trust", str(keypair[1]), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["images"][0]["image_id"] == samples["docker"].image_id
    assert [line.split()[0] for line in log.read_text().splitlines()] == names  # each disc once, in the bundle's order
    remove(docker_client, TAG, samples["docker"].image_id)


# -- the tamper table, read disc by disc ---------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    split: Path
    tmp: Path
    other: Callable[[str], Path]  # another split bundle, packed on demand: "same" (the image, as sequence 7), "docker2"


def _parts_on(split: Path, volume: str) -> list[str]:
    m = load_bundle(split).manifest
    paths = {p for v in m.volumes if v.name == volume for p in v.paths}
    return [p.path for p in m.parts if p.path in paths]


def _truncated_part(c: Ctx) -> str:
    victim = c.split / "vol-03" / _parts_on(c.split, "vol-03")[0]
    victim.write_bytes(victim.read_bytes()[:100])
    return victim.name


def _part_of_another_bundle(c: Ctx) -> str:
    """Another image's part, cut to the size of ours, under our part's name."""
    mine = c.split / "vol-02" / _parts_on(c.split, "vol-02")[-1]
    theirs = max((c.other("docker2") / "vol-02" / "parts").iterdir(), key=lambda p: p.stat().st_size).read_bytes()
    mine.write_bytes(theirs[: mine.stat().st_size].ljust(mine.stat().st_size, b"\0"))
    return mine.name


def _unlisted_file(c: Ctx) -> str:
    (c.split / "vol-02" / "autorun.sh").write_text("#!/bin/sh\necho surprise\n")
    return "autorun.sh"


def _symlinked_part(c: Ctx) -> str:
    victim = c.split / "vol-02" / _parts_on(c.split, "vol-02")[0]
    shutil.move(victim, c.tmp / "outside.zst")
    victim.symlink_to(c.tmp / "outside.zst")
    return victim.name


def _fifo_part(c: Ctx) -> str:
    victim = c.split / "vol-03" / _parts_on(c.split, "vol-03")[0]
    victim.unlink()
    os.mkfifo(victim)
    return victim.name


def _changed_listing(c: Ctx) -> str:
    with open(c.split / "vol-02" / "volume-02.txt", "a") as fh:
        fh.write("  parts/evil.zst  1 bytes\n")
    return "volume-02.txt"


def _disc_of_another_bundle(c: Ctx) -> str:
    shutil.rmtree(c.split / "vol-02")
    shutil.copytree(c.other("same") / "vol-02", c.split / "vol-02")
    return "volume-02.txt"


def _listing_copied_to_another_disc(c: Ctx) -> str:
    shutil.copy(c.split / "vol-03" / "volume-03.txt", c.split / "vol-02" / "volume-03.txt")
    return "vol-03"


def _second_copy_of_a_part_on_the_first_disc(c: Ctx) -> str:
    name = _parts_on(c.split, "vol-02")[0]
    (c.split / "vol-01" / "parts").mkdir(exist_ok=True)
    (c.split / "vol-01" / name).write_bytes(os.urandom(4096))
    return Path(name).name


def _edited_manifest(c: Ctx) -> str:
    path = c.split / "vol-01" / "manifest.json"
    path.write_text(path.read_text().replace('"sequence": ', '"sequence": 9', 1))
    return "manifest.json"


def _signature_removed(c: Ctx) -> str:
    for sig in (c.split / "vol-01" / "signatures").iterdir():
        sig.unlink()
    return "signature"


@dataclass(frozen=True)
class Attack:
    name: str
    tamper: Callable[[Ctx], str]
    code: int


ATTACKS = [
    Attack("truncated_part_on_a_later_disc", _truncated_part, 4),
    Attack("part_of_another_bundle_under_its_name", _part_of_another_bundle, 4),
    Attack("unlisted_file_on_a_disc", _unlisted_file, 4),
    Attack("symlinked_part_on_a_disc", _symlinked_part, 4),
    Attack("fifo_as_part_on_a_disc", _fifo_part, 4),
    Attack("changed_listing", _changed_listing, 4),
    Attack("disc_of_another_bundle", _disc_of_another_bundle, 4),
    Attack("listing_copied_onto_another_disc", _listing_copied_to_another_disc, 4),
    Attack("second_copy_of_a_part_on_the_first_disc", _second_copy_of_a_part_on_the_first_disc, 4),
    Attack("edited_manifest_on_the_first_disc", _edited_manifest, 5),
    Attack("signature_removed", _signature_removed, 5),
]
RUNNERS = ("install", "verify")


@pytest.mark.docker
@pytest.mark.parametrize(
    ("attack", "runner"), [(a, r) for a in ATTACKS for r in RUNNERS], ids=[f"{a.name}-{r}" for a in ATTACKS for r in RUNNERS]
)
def test_attack_on_discs_refused(  # type: ignore[no-untyped-def]
    attack: Attack, runner: str, cli, docker_client, split: Path, samples, keypair, tmp_path: Path
) -> None:
    def other(kind: str) -> Path:
        out = tmp_path / f"other-{kind}"
        if not out.exists():
            archive = f"docker-archive:{samples['docker' if kind == 'same' else kind].path}"
            r = cli("pack", archive, "-o", str(out), "--key", str(keypair[0]), "--part-size", "1MiB",
                    "--media-dir-size", "3MiB", "--sequence", "7")  # fmt: skip
            assert r.code == 0, r.err
        return out

    culprit = attack.tamper(Ctx(split, tmp_path, other))
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    before = engine_state(docker_client)
    media, log = tmp_path / "cdrom", tmp_path / "requests.log"
    media.mkdir()
    command = swap_script(tmp_path, split, media, log)
    started = time.monotonic()
    r = cli(runner, str(media), "--media-command", command, "--trust", str(keypair[1]))
    assert time.monotonic() - started < 120, f"{runner} took too long"
    assert r.code == attack.code, f"{runner}: exit {r.code}, expected {attack.code}\n{r.err}"
    assert culprit in r.err, f"{runner}: {culprit!r} not named\n{r.err}"
    assert "Traceback" not in r.err and "error: " in r.err, r.err
    assert engine_state(docker_client) == before


# -- a person at a terminal ----------------------------------------------------------------------------


def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    return path


@pytest.mark.tools
def test_terminal_prompt_as_a_person_sees_it(split: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Enter answers the first prompt; the second disc is noticed without it, once it is in the drive."""
    names = sorted(p.name for p in split.iterdir())
    drive = Drive(split, tmp_path / "cdrom")
    session = f"airgap-discs-{os.getpid()}"
    state = tmp_path / "airgap-state" / "installed.json"
    shell = (
        f"cd {ROOT} && AIRGAP_STATE={state} {sys.executable} -m airgap verify {drive.media} --one-drive "
        f"--trust {keypair[1]}; echo EXIT=$?; sleep 60"
    )
    tmux_cmd = [tmux(), "-L", session]
    subprocess.run([*tmux_cmd, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", shell], check=True)

    def screen() -> str:
        return subprocess.run([*tmux_cmd, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True).stdout

    def wait_for(text: str, times: int = 1) -> str:
        deadline = time.monotonic() + 60
        while (shown := screen()).count(text) < times:
            assert time.monotonic() < deadline, f"{text!r} never shown:\n{shown}"
            time.sleep(0.2)
        return shown

    try:
        wait_for(f"insert vol-01 (the manifest and the signatures) into {drive.media}, then press Enter")
        drive.insert("vol-01")
        subprocess.run([*tmux_cmd, "send-keys", "-t", session, "Enter"], check=True)
        shown = wait_for(f"insert any of {', '.join(names[1:])} (the volumes still to read, in any order) into {drive.media}")
        for i, volume in enumerate(names[1:], start=2):
            wait_for("then press Enter", times=i)
            drive.insert(volume)  # no Enter: the disc is noticed once it is there
        assert f"insert {names[-1]} (part" in screen()  # the last one asked for alone, with what it holds
        shown = wait_for("EXIT=")
        assert "EXIT=0" in shown, shown
        assert "OK: signature by" in shown and "volumes passed on this host: " + ", ".join(names) in shown
        assert "Traceback" not in shown
    finally:
        subprocess.run([*tmux_cmd, "kill-server"], check=False)


# -- a signature cannot go onto a burned disc ----------------------------------------------------------


def test_sign_on_a_read_only_first_volume_says_where_the_signature_goes(
    cli, split: Path, keypair, other_keypair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting a read-only file system needs root")
        pytest.skip("mounting a read-only file system needs root")
    disc = tmp_path / "disc"
    disc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disc)], check=True)
    try:
        shutil.copytree(split / "vol-01", disc / "vol-01")
        subprocess.run(["mount", "-o", "remount,ro", str(disc)], check=True)
        froms = [a for v in sorted(split.iterdir())[1:] for a in ("--from", str(v))]
        r = cli("sign", str(disc / "vol-01"), "--key", str(other_keypair[0]), "--trust", str(keypair[1]), *froms)
        assert r.code == 6, r.err
        assert "signatures" in r.err and "sign the bundle's folders before they are burned" in r.err
    finally:
        subprocess.run(["umount", str(disc)], check=True)
