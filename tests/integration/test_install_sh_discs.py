"""installer/install.sh with one drive (``--one-drive``, ``--media-command``): the discs of a split bundle go in
one after another, vol-01 first, then in any order, against the real engine under dash (and once under bash).
A disc is a vol-NN folder moved into the drive's directory (the one in it going back onto the shelf), by a
POSIX sh ``--media-command`` or by the test answering the prompts on stdin.  The bundle is split into five
discs so that after vol-01 there is a choice: vol-02 starts the model layer (which runs on to vol-05), vol-05
holds every other layer whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.helpers.bundles import pack_split
from tests.helpers.discs import Drive
from tests.helpers.engine import evict_images_sharing_layers, remove
from tests.helpers.tools import dash

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TAG = "airgap-test/agent:1.0"

# CMD VOLUME...: insert one of the volumes asked for (the last with PICK=last), logging each request as a line;
# the disc asked for as DISC_SLOW waits DISC_DELAY seconds first (a person slow to find it)
CHANGER = r"""#!/bin/sh
shelf=$1 media=$2 log=$3
shift 3
printf '%s\n' "$*" >>"$log"
want=$1
if [ "${PICK:-first}" = last ]; then for v in "$@"; do want=$v; done; fi
if [ "$want" = "${DISC_SLOW:-}" ]; then sleep "$DISC_DELAY"; fi
for f in "$media"/volume-*.txt; do
  [ -e "$f" ] || continue
  n=${f##*/volume-}
  mv "$media" "$shelf/vol-${n%.txt}" && mkdir "$media"
  break
done
rmdir "$media" && mv "$shelf/$want" "$media"
"""


@pytest.fixture
def split(cli, samples, keypair, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "split"
    r = pack_split(cli, samples["docker"], keypair, out, "1MiB", "2MiB")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["vol-01", "vol-02", "vol-03", "vol-04", "vol-05"]
    return out


@pytest.fixture
def engine(docker_client: docker.DockerClient, samples):  # type: ignore[no-untyped-def]
    """An engine without the sample's layers (a part read is a part the engine needed), cleaned up after."""
    evict_images_sharing_layers(docker_client, samples["docker"].layers)
    yield docker_client
    remove(docker_client, TAG, samples["docker"].image_id)


def engine_state(client: docker.DockerClient) -> set[tuple[str, tuple[str, ...]]]:
    return {(i.id, tuple(sorted(i.tags))) for i in client.images.list(all=True)}


def changer(tmp_path: Path, shelf: Path, media: Path) -> tuple[str, Path]:
    """A --media-command value and the file it logs each request to."""
    script, log = tmp_path / "changer.sh", tmp_path / "requests.log"
    script.write_text(CHANGER)
    return f"{dash()} {script} {shelf} {media} {log}", log


def env_for(tmp_path: Path, **more: str) -> dict[str, str]:
    temp = tmp_path / "tmpdir"
    temp.mkdir(exist_ok=True)
    return {**os.environ, "AIRGAP_STATE": str(tmp_path / "state" / "installed.json"), "TMPDIR": str(temp), **more}


def install_sh(split: Path, tmp_path: Path) -> Path:
    """The bundle's own install.sh, as a person copies it off vol-01 (the drive may hold another disc)."""
    script = tmp_path / "install.sh"
    if not script.exists():
        shutil.copy(split / "vol-01" / "installer" / "install.sh", script)
    return script


def run(shell: str, script: Path, *args: str, env: dict[str, str], stdin: int | None = subprocess.DEVNULL):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [shell, str(script), *args], capture_output=True, text=True, env=env, stdin=stdin, timeout=300, check=False
    )


def test_install_sh_one_drive_takes_the_discs_in_reverse_order(engine, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Run from the first disc itself; offered a choice, the media command always inserts the last volume."""
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    command, log = changer(tmp_path, split, drive.media)
    env = env_for(tmp_path, PICK="last")
    done = run(dash(), drive.media / "installer" / "install.sh", "--trust", str(keypair[1]), "--media-command", command, env=env)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["vol-02 vol-05", "vol-02", "vol-03", "vol-04", "vol-05"]
    assert "vol-05 in " in done.stderr and done.stderr.index("vol-05 in ") < done.stderr.index("vol-02 in ")
    assert engine.images.get(TAG).id == samples["docker"].image_id
    assert f"loaded: {TAG}  {samples['docker'].image_id}" in done.stdout
    assert not list((tmp_path / "tmpdir").iterdir()), "the private copies were left behind"


def prompts(proc: subprocess.Popen[str], answer: Callable[[str], str | None]) -> list[str]:
    """Read stderr line by line; on each prompt call ``answer`` (it inserts a disc), then send a line on stdin, or
    close stdin when it returns None.  Returns every line."""
    assert proc.stdin is not None and proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("insert ") and not proc.stdin.closed:
            if answer(line) is None:
                proc.stdin.close()
            else:
                proc.stdin.write("\n")
                proc.stdin.flush()
    proc.wait(timeout=300)
    return lines


def test_install_sh_wrong_disc_is_named_and_asked_again(  # type: ignore[no-untyped-def]
    cli, engine, split: Path, samples, keypair, tmp_path: Path
) -> None:
    """Under bash: a disc of another bundle is refused, a disc not needed now is named, and each prompt comes back."""
    other = tmp_path / "other"
    r = cli("pack", f"docker-archive:{samples['docker'].path}", "-o", str(other), "--key", str(keypair[0]),
            "--part-size", "1MiB", "--media-dir-size", "2MiB", "--sequence", "7")  # fmt: skip
    assert r.code == 0, r.err
    script = install_sh(split, tmp_path)
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")
    wrong = {"insert any of vol-02, vol-05 ": False, "insert vol-03 (": False}

    def answer(line: str) -> str:
        for prompt, done in wrong.items():
            if line.startswith(prompt) and not done:
                wrong[prompt] = True
                if prompt.startswith("insert any"):
                    drive.insert("vol-02", other / "vol-02")  # another bundle's vol-02
                else:
                    drive.insert("vol-04")  # a disc of this bundle, not the one asked for
                return "wrong"
        volume = line.split()[3 if line.startswith("insert any of ") else 1].rstrip(",")
        drive.insert(volume)
        return volume

    cmd = ["bash", str(script), "--one-drive", "--trust", str(keypair[1]), str(drive.media)]
    with subprocess.Popen(
        cmd, env=env_for(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        lines = prompts(proc, answer)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert f"refused: {drive.media}/volume-02.txt is not the signed listing of vol-02 of agent sequence " in err
    assert '(it says "airgap bundle agent, sequence 7: volume vol-02 (2 of 5)"): the disc belongs to another bundle' in err
    assert "the drive holds vol-04; the next part to read (parts/" in err and ") is on vol-03" in err
    assert err.count("insert vol-03 (part") == 2, err
    assert engine.images.get(TAG).id == samples["docker"].image_id


def test_install_sh_a_disc_that_never_comes_stops_naming_it(engine, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """stdin ends while vol-03 is asked for, mid-layer: exit 4 naming vol-03; the engine keeps nothing."""
    before = engine_state(engine)
    script = install_sh(split, tmp_path)
    drive = Drive(split, tmp_path / "cdrom")
    drive.insert("vol-01")

    def answer(line: str) -> str | None:
        if line.startswith("insert vol-03 "):
            return None
        drive.insert("vol-02")
        return "vol-02"

    cmd = [dash(), str(script), "--one-drive", "--trust", str(keypair[1]), str(drive.media)]
    with subprocess.Popen(
        cmd, env=env_for(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        err = "".join(prompts(proc, answer))
    assert proc.returncode == 4, err
    assert "error: vol-03 of agent sequence " in err and f"is not in {drive.media} (it holds vol-02)" in err
    assert "the upload was cut off before its end, so the engine loaded nothing" in err
    assert "hint: insert the disc labelled so and run the same command again" in err
    assert engine_state(engine) == before


def test_install_sh_an_empty_drive_at_the_end_of_stdin_asks_for_vol_01(split: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    drive = Drive(split, tmp_path / "cdrom")
    done = run(
        dash(), install_sh(split, tmp_path), "--one-drive", "--trust", str(keypair[1]), str(drive.media), env=env_for(tmp_path)
    )
    assert done.returncode == 3, done.stderr
    assert f"insert vol-01 (the manifest and the signatures) into {drive.media}, then send a line on stdin" in done.stderr
    assert "holds no bundle manifest" in done.stderr


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_install_sh_tampered_part_on_the_second_disc_loads_nothing(engine, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = sorted((split / "vol-02" / "parts").iterdir())[-1]
    _flip(victim)  # its size is right: the disc passes, the part's sha256 does not
    before = engine_state(engine)
    drive = Drive(split, tmp_path / "cdrom")
    command, log = changer(tmp_path, split, drive.media)
    done = run(
        dash(),
        install_sh(split, tmp_path),
        "--trust",
        str(keypair[1]),
        "--media-command",
        command,
        str(drive.media),
        env=env_for(tmp_path),
    )
    assert done.returncode == 4, done.stderr
    assert f"parts/{victim.name} does not match its sha256 in the manifest" in done.stderr
    assert "the upload was cut off before its end, so the engine loaded nothing" in done.stderr
    assert log.read_text().splitlines()[:2] == ["vol-01", "vol-02 vol-05"]
    assert engine_state(engine) == before
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(TAG)


def _unlisted_file(split: Path, tmp: Path) -> str:
    (split / "vol-03" / "autorun.sh").write_text("#!/bin/sh\necho surprise\n")
    return "autorun.sh"


def _parts_folder_linked_outside_the_drive(split: Path, tmp: Path) -> str:
    """A disc whose parts/ is a link to a folder outside the drive holding the very same files."""
    shutil.move(split / "vol-03" / "parts", tmp / "elsewhere")
    (split / "vol-03" / "parts").symlink_to(tmp / "elsewhere")
    return "parts is a symbolic link"


def _changed_listing(split: Path, tmp: Path) -> str:
    with open(split / "vol-03" / "volume-03.txt", "a") as fh:
        fh.write("  ../../../etc/passwd  1 bytes\n")
    return "volume-03.txt is not the signed listing of vol-03"


def _fifo_as_part(split: Path, tmp: Path) -> str:
    """A FIFO where a part should be: refused without being opened (opening it would block)."""
    victim = next((split / "vol-04" / "parts").iterdir())
    victim.unlink()
    os.mkfifo(victim)
    return f"parts/{victim.name} is not a regular file"


@pytest.mark.parametrize("tamper", [_unlisted_file, _parts_folder_linked_outside_the_drive, _changed_listing, _fifo_as_part])
def test_install_sh_attack_on_a_later_disc_loads_nothing(  # type: ignore[no-untyped-def]
    engine, split: Path, samples, keypair, tmp_path: Path, tamper: Callable[[Path, Path], str]
) -> None:
    culprit = tamper(split, tmp_path)
    before = engine_state(engine)
    drive = Drive(split, tmp_path / "cdrom")
    command, _log = changer(tmp_path, split, drive.media)
    done = run(
        dash(),
        install_sh(split, tmp_path),
        "--trust",
        str(keypair[1]),
        "--media-command",
        command,
        str(drive.media),
        env=env_for(tmp_path),
    )
    assert done.returncode == 4, done.stderr
    assert culprit in done.stderr, done.stderr
    assert "error: " in done.stderr
    assert engine_state(engine) == before


def test_install_sh_engine_waits_while_a_disc_is_fetched(engine, split: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """vol-03 is asked for mid-layer, with the upload open (the engine is unpacking it); 20 s pass before it comes;
    docker load keeps reading from the pipe and loads the image, bit-exact, with nothing copied to disk meanwhile."""
    delay = 20
    root = Path(engine.info()["DockerRootDir"])
    drive = Drive(split, tmp_path / "cdrom")
    command, log = changer(tmp_path, split, drive.media)
    env = env_for(tmp_path, DISC_SLOW="vol-03", DISC_DELAY=str(delay))
    cmd = [dash(), str(install_sh(split, tmp_path)), "--trust", str(keypair[1]), "--media-command", command, str(drive.media)]
    started = time.monotonic()
    with subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        while "vol-03" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - started < 120
            time.sleep(0.2)
        time.sleep(2)
        assert list((root / "tmp").glob("docker-import-*")), "the engine is not receiving an upload"
        temp = sum(p.stat().st_size for p in (tmp_path / "tmpdir").rglob("*") if p.is_file())
        assert temp < (2 << 20), f"{temp} bytes in TMPDIR while waiting: more than one part"
        out, err = proc.communicate(timeout=300)
    assert time.monotonic() - started >= delay
    assert proc.returncode == 0, err
    assert engine.images.get(TAG).id == samples["docker"].image_id
    assert f"loaded: {TAG}  {samples['docker'].image_id}" in out
