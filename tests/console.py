"""Running nnU-Net's console scripts from the tests, in fresh nnU-Net folders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from nnunet_csse.environment import trainers_path

ROOT = Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)
PLANS = "nnUNetPlansCSSE_cpu_tiny"


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    exe = os.path.join(BIN, cmd[0])
    proc = subprocess.run([exe if os.path.exists(exe) else cmd[0], *cmd[1:]], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def logged_pdcr(log: str, term: str) -> list[float]:
    """The per-epoch values of one PDCR term in an nnU-Net training log (``...: pdcr_encoder 4.1234``)."""
    return [float(v) for v in re.findall(rf": pdcr_{term} (-?\d+\.\d+|nan|-?inf)", log)]


def nnunet_env(root) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        env[name] = str(root / name)
    # one worker everywhere: these machines have 2 cores, and nnU-Net spawns a fresh interpreter per worker
    env.update(nnUNet_extTrainer=trainers_path(), nnUNet_compile="false", nnUNet_def_n_proc="1")
    return env
