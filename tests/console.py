"""Running console scripts from the tests (through ``nnunet_csse.tools.commands``), in fresh nnU-Net folders."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from nnunet_csse.environment import trainers_path
from nnunet_csse.tools.commands import run_logged

ROOT = Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)
PLANS = "nnUNetPlansCSSE_cpu_tiny"


def run(cmd: list[str], env: dict) -> SimpleNamespace:
    """Run a console script of this environment; ``.stdout`` is its output (stderr included), also appended to
    ``console.log`` next to the nnU-Net folders. A failure (or 900 s) raises ``CommandFailed`` with its last lines."""
    return SimpleNamespace(stdout=run_logged(cmd, env, Path(env["nnUNet_results"]).parent / "console.log",
                                             timeout=900))


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
