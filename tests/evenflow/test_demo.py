"""``evenflow demo`` runs on its embedded default and shows the scale-up answer."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.peers import free_port


def test_demo_runs_scales_up_and_spreads_evenly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evenflow", "demo", "--duration", "8", "--admin", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "scale-up to 5 pods" in out
    final = re.search(r"spread at the end: (.*)", out)
    assert final is not None, out
    counts = [int(n) for n in re.findall(r"pod-\d=(\d+)", final.group(1))]
    assert len(counts) == 5
    assert min(counts) > 0, f"new pods got nothing: {counts}"
    assert max(counts) - min(counts) <= 2, counts
