"""The demo at a reduced budget: it runs end to end, prints finite Dice for both trainers, and resumes."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def demo(workdir, *extra: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-csse")
    cmd = [exe, "demo", "--workdir", str(workdir), "--epochs", "1", "--iterations", "3", "--cases", "5",
           "--test-cases", "2", "--size", "48", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_runs_reports_and_resumes(tmp_path, monkeypatch):
    # the demo never uses the user's nnU-Net folders, even when they are set
    user = tmp_path / "user_nnunet"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (user / name).mkdir(parents=True)
        monkeypatch.setenv(name, str(user / name))
    workdir = tmp_path / "demo"
    out = demo(workdir)
    for stage in ("[dataset]", "[plan]", "[train]", "[predict]", "[evaluate]"):
        assert stage in out
    rows = dict(re.findall(r"^(structure_\d|mean \(fg\))\s+(.+)$", out, re.M))
    assert set(rows) == {"structure_1", "structure_2", "structure_3", "mean (fg)"}
    for values in rows.values():
        numbers = [float(v) for v in values.split()]
        assert len(numbers) == 2 and all(math.isfinite(v) and 0 <= v <= 1 for v in numbers)
    assert (workdir / "demo_figure.png").stat().st_size > 10_000
    assert not any(p for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
                   for p in (user / name).iterdir())

    again = demo(workdir)  # every finished stage is reused
    assert again.count("reusing") >= 6 and "nnUNetv2_train" not in again
    assert re.search(r"^mean \(fg\)\s+(.+)$", again, re.M).group(1) == rows["mean (fg)"]
