"""The benchmark runs (at a tiny size) so that it cannot rot; CI asserts on its output, never on times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.docker


def test_bench_runs_and_reports_every_figure(docker_host: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench", "--size", "24MiB", "--rounds", "1", "--work", str(tmp_path / "w"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    figures = json.loads(out.read_text())
    steps = {
        "save_null",
        "airgap_pack",
        "manual_pack",
        "sha256sum_parts",
        "airgap_verify",
        "docker_load",
        "airgap_install",
        "airgap_install_pull",
        "manual_install",
    }
    assert set(figures["median_seconds"]) == steps
    assert set(figures["peak_rss_kib"]) == {"airgap_pack", "airgap_verify", "airgap_install", "airgap_install_pull"}
    assert all(v > 0 for v in figures["ratios"].values())
    assert 0.9 < figures["ratios"]["bundle_bytes / zstd3_bytes"] < 1.1
    assert "pack / save_null" in proc.stdout
