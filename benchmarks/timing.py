"""Wall-clock timing with device synchronization."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_once_with_cpu(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``. With one torch thread on CPU the CPU time is
    the step's own compute, which other load on a shared machine hardly changes; the wall time is not."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_repeated(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """``warmup`` untimed calls, then ``reps`` timed calls; returns the per-call seconds."""
    for _ in range(warmup):
        fn()
    return [time_once(fn, device) for _ in range(reps)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
