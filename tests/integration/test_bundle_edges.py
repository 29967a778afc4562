"""What is read before any signature check is bounded: an oversized manifest is refused by its size, the peak
memory of the process that refuses it measured with /usr/bin/time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MiB = 1 << 20


def _pack(cli, sample, out: Path, key: Path, *extra: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(key), *extra)
    assert r.code == 0, r.err


def _peak_rss_mib(args: list[str], tmp: Path) -> tuple[int, str, float]:
    """Run airgap in a child process under /usr/bin/time; its exit code, stderr and peak memory (MiB)."""
    report = tmp / "time.txt"
    done = subprocess.run(
        ["/usr/bin/time", "-o", str(report), "-f", "%M", sys.executable, "-m", "airgap", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return done.returncode, done.stderr, int(report.read_text().split()[-1]) / 1024


@pytest.mark.parametrize("command", ["inspect", "diff"])
def test_oversized_unsigned_manifest_refused_before_parsing(cli, samples, keypair, tmp_path: Path, command: str) -> None:  # type: ignore[no-untyped-def]
    """A 60 MiB manifest of tiny JSON objects would cost gigabytes to parse: refused by its size, unread."""
    out = tmp_path / "b"
    _pack(cli, samples["docker"], out, keypair[0])
    with open(out / "manifest.json", "wb") as fh:
        fh.write(b'{"schema_version": 1, "x": [{}')
        for _ in range(20):  # 60 MiB: under the old 64 MiB cap, about 1.7 GB once parsed
            fh.write(b",{}" * MiB)
        fh.write(b"]}")
    args = [command, str(out)] + ([str(out)] if command == "diff" else [])
    code, err, peak = _peak_rss_mib(args, tmp_path)
    assert code == 3, err
    assert "manifest.json is" in err and "larger than the 16.0 MiB airgap accepts" in err
    assert peak < 150, f"{peak:.0f} MiB"
