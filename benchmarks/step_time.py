"""Part B (issue "Performance"): nnU-Net's train_step of the CSSE trainers vs plain nnUNetTrainer.

All trainers are built from one plan (same arch kwargs) and fed the same synthetic batch. Steps are interleaved
(one step of each trainer per round) so drift in machine speed hits all of them alike; the figure per trainer is
the median over the timed rounds after warm-up, and ratios are taken against nnUNetTrainer.
"""

from __future__ import annotations

import math
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import memory
from benchmarks.plans import BenchPlan, synthetic_batch
from benchmarks.timing import median, time_once_with_cpu
from benchmarks.trainers import (
    BASELINE,
    HOW,
    deep_supervision_scales,
    make_trainer,
    parameter_count,
    prepare_nnunet_folders,
)

TARGET_TIME_RATIO = 1.10
TARGET_MEMORY_RATIO = 1.10


@dataclass(frozen=True)
class StepSettings:
    warmup: int
    steps: int
    memory_steps: int = 2
    memory_parallel: int = 1


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc)[-6:])}"[:4000]


def run(plan: BenchPlan, size: str, device: torch.device, trainers: list[str], settings: StepSettings,
        compile_network: bool = False, threads: int | None = None) -> dict:
    """Time ``train_step`` of every trainer and measure its step memory. Returns a JSON-able dict."""
    if BASELINE not in trainers:
        trainers = [BASELINE, *trainers]
    rows: dict[str, dict] = {name: {"trainer": name} for name in trainers}
    with tempfile.TemporaryDirectory(prefix="csse_bench_nnunet_") as workdir:
        prepare_nnunet_folders(Path(workdir))
        built = {}
        for name in trainers:
            try:
                built[name] = make_trainer(name, plan, device, compile_network)
                rows[name]["parameters"] = parameter_count(built[name])
            except Exception as exc:  # noqa: BLE001 - reported in the table, never hidden
                rows[name]["failure"] = "initialize: " + _failure(exc)
        if not built:
            return {"plan": plan.describe(), "rows": list(rows.values()), "how": HOW}
        first = next(iter(built.values()))
        batch = synthetic_batch(plan, deep_supervision_scales(first), pin=device.type == "cuda")
        times: dict[str, list[float]] = {name: [] for name in built}
        cpu_times: dict[str, list[float]] = {name: [] for name in built}
        losses: dict[str, list[float]] = {name: [] for name in built}
        interrupted = _time_steps(built, batch, device, settings, rows, times, cpu_times, losses)
        graph_breaks = _graph_breaks() if compile_network else {}
        if device.type == "cuda" and not interrupted:
            for name, trainer in built.items():
                try:
                    rows[name]["memory"] = memory.cuda_step_memory(trainer, batch, device)
                except Exception as exc:  # noqa: BLE001
                    rows[name]["memory"] = {"error": _failure(exc)}
        built.clear()
    if device.type != "cuda" and not interrupted:
        ok = [n for n in trainers if "failure" not in rows[n]]
        for name, result in memory.cpu_memory_all(ok, size, settings.memory_steps, threads or
                                                  torch.get_num_threads(), settings.memory_parallel).items():
            rows[name]["memory"] = result
    _ratios(rows, times, losses, "median_s", "time_ratio", "times_s")
    _ratios(rows, cpu_times, losses, "median_cpu_s", "cpu_time_ratio", "cpu_times_s")
    _memory_ratios(rows)
    # On CPU with one torch thread the process CPU time is the step's compute and barely moves with other load
    # on a shared machine, so the target uses it there; otherwise (CUDA, several threads) the wall time.
    basis = "cpu" if device.type == "cpu" and (threads or torch.get_num_threads()) == 1 else "wall"
    extra = {"graph_breaks": graph_breaks} if compile_network else {}
    if interrupted:
        extra["interrupted"] = interrupted
    return {**extra, "plan": plan.describe(), "arch_kwargs": plan.arch_kwargs(), "batch_size": plan.batch_size,
            "patch": list(plan.patch), "compile": compile_network and device.type == "cuda",
            "compile_requested": compile_network, "amp": device.type == "cuda",
            "warmup": settings.warmup, "steps": settings.steps, "how": HOW, "rows": list(rows.values()),
            "target_time_basis": basis,
            "target_time_ratio": TARGET_TIME_RATIO, "target_memory_ratio": TARGET_MEMORY_RATIO}


def _time_steps(built: dict, batch: dict, device: torch.device, settings: StepSettings, rows: dict[str, dict],
                times: dict[str, list[float]], cpu_times: dict[str, list[float]],
                losses: dict[str, list[float]]) -> str | None:
    """Interleaved rounds of one ``train_step`` per trainer; a trainer that raises is reported and dropped.
    Returns a note if interrupted (Ctrl-C or the GPU script's timeout), keeping what was measured."""
    total = settings.warmup + settings.steps
    for step in range(total):
        for name, trainer in list(built.items()):
            out: dict = {}
            try:
                seconds, cpu_seconds = time_once_with_cpu(lambda t=trainer, o=out: o.update(t.train_step(batch)),
                                                          device)
            except KeyboardInterrupt:
                note = f"interrupted in round {step} of {total} ({name}); figures use the rounds done"
                print(f"[B] {note}", flush=True)
                return note
            except Exception as exc:  # noqa: BLE001 - e.g. a torch.compile failure: reported, not hidden
                rows[name]["failure"] = f"train_step {step}: " + _failure(exc)
                print(f"[B] {name} FAILED in train_step {step}: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
                del built[name]
                continue
            losses[name].append(float(np.asarray(out["loss"])))
            if step >= settings.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
            elif step == 0 or seconds > 5.0:
                print(f"[B] warm-up {step}: {name} {seconds:.2f} s", flush=True)
        if step == total - 1 or (step >= settings.warmup and (step - settings.warmup) % 10 == 9):
            print(f"[B] round {step + 1}/{total}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in built
                                                            if times[n]), flush=True)
    return None


def _graph_breaks() -> dict:
    """torch._dynamo's graph-break reasons and counts in this process (compile runs)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {"graph_breaks": dict(counters.get("graph_break", {})),
            "unique_graphs": counters.get("stats", {}).get("unique_graphs")}


def _ratios(rows: dict[str, dict], times: dict[str, list[float]], losses: dict[str, list[float]], median_key: str,
            ratio_key: str, list_key: str) -> None:
    """Per trainer: median of ``times`` and its ratio to nnUNetTrainer's median (also the median of the
    per-round ratios, which cancels drift between rounds)."""
    base_times = times.get(BASELINE) or []
    base_med = median(base_times)
    for name, row in rows.items():
        t = times.get(name) or []
        if t and "failure" not in row:
            row[median_key] = median(t)
            row[list_key] = t
            row[ratio_key] = row[median_key] / base_med if base_times and base_med > 0 else math.nan
            paired = [a / b for a, b in zip(t, base_times) if b > 0]
            row[f"paired_{ratio_key}_median"] = median(paired) if paired else math.nan
        if losses.get(name):
            row["loss_first"], row["loss_last"] = losses[name][0], losses[name][-1]


def _memory_ratios(rows: dict[str, dict]) -> None:
    base_mem = rows[BASELINE].get("memory", {}).get("step_bytes")
    for row in rows.values():
        mem = row.get("memory", {}).get("step_bytes")
        if mem is not None and base_mem:
            row["memory_ratio"] = mem / base_mem
