"""Benchmark sizes: which plan, how many repetitions and which sweep points each part uses."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.pdcr_speed import SpeedSettings
from benchmarks.plans import FULL, SMALL, TINY, BenchPlan
from benchmarks.step_time import StepSettings


@dataclass(frozen=True)
class Profile:
    pdcr_plan: BenchPlan
    speed: SpeedSettings
    step_plan: BenchPlan
    step: StepSettings
    scaling_plan: BenchPlan
    spacings: tuple[int, ...]
    sides: tuple[int, ...]
    classes: tuple[int, ...]
    scaling_reps: int


def profile(size: str, device: str) -> Profile:
    """``tiny``: smoke test (< 1 min on 2 CPU cores). ``small`` (CPU default): PDCR at the issue's 2 x 128^3,
    steps on a CPU-sized 3d_fullres-like plan. ``full`` (CUDA default): everything at nnU-Net's default 3D plan."""
    gpu = device == "cuda"
    if size == "tiny":
        return Profile(TINY, SpeedSettings(3, 1, 0), TINY, StepSettings(1, 2, 1, 2), TINY,
                       (16, 8, 4), (16, 32), (2, 4, 8), 1)
    if size == "small":
        return Profile(FULL, SpeedSettings(10, 3, 1) if gpu else SpeedSettings(3, 2, 0),
                       SMALL, StepSettings(3, 10, 1, 1) if gpu else StepSettings(1, 3, 1, 2), FULL,
                       (64, 32, 16, 8) if gpu else (64, 32, 16), (32, 64, 96, 128),
                       (2, 4, 8, 16) if gpu else (2, 4, 8), 5 if gpu else 2)
    if size == "full":
        return Profile(FULL, SpeedSettings(20, 5, 2) if gpu else SpeedSettings(3, 2, 0),
                       FULL, StepSettings(5, 20, 1, 1) if gpu else StepSettings(1, 3, 1, 1), FULL,
                       (64, 32, 16, 8), (32, 64, 96, 128, 160, 192), (2, 4, 8, 16, 32), 10 if gpu else 2)
    raise ValueError(f"unknown size {size!r}: tiny, small or full")
