"""Part B: nnU-Net's ``train_step`` of the CSSE trainers against ``nnUNetTrainer`` (time, step memory), and the
op-by-op profile (``python -m benchmarks profile``). How time and memory are measured: docs/benchmarks.md."""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing
import tempfile
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks import plans
from benchmarks.plans import BASELINE, HOW, median

MMAP_THRESHOLD = 1 << 20  # bytes: allocations from 1 MiB up are mmapped and unmapped on free
TARGET_TIME_RATIO = TARGET_MEMORY_RATIO = 1.10


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc)[-6:])}"[:4000]


def run_steps(plan: plans.BenchPlan, size: str, device: torch.device, trainers: list[str],
              settings: plans.StepSettings, compile_network: bool = False, threads: int | None = None) -> dict:
    """Time ``train_step`` of every trainer and measure its step memory. Returns a JSON-able dict."""
    trainers = trainers if BASELINE in trainers else [BASELINE, *trainers]
    rows: dict[str, dict] = {name: {"trainer": name} for name in trainers}
    with tempfile.TemporaryDirectory(prefix="csse_bench_nnunet_") as workdir:
        folders, built = plans.nnunet_folders(Path(workdir)), {}
        for name in trainers:
            try:
                built[name] = plans.make_trainer(name, plan, device, compile_network, folders)
                rows[name]["parameters"] = sum(p.numel() for p in built[name].network.parameters())
            except Exception as exc:  # noqa: BLE001 - reported in the table, never hidden
                rows[name]["failure"] = "initialize: " + _failure(exc)
        if not built:
            return {"plan": plan.describe(), "rows": list(rows.values()), "how": HOW}
        batch = plans.synthetic_batch(plan, plans.deep_supervision_scales(next(iter(built.values()))),
                                      pin=device.type == "cuda")
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in built}  # (wall, CPU) per timed round
        losses: dict[str, list[float]] = {name: [] for name in built}
        interrupted = _time_steps(built, batch, device, settings, rows, times, losses)
        extra = {"graph_breaks": _graph_breaks()} if compile_network else {}
        for name, trainer in built.items() if device.type == "cuda" and not interrupted else ():
            try:
                rows[name]["memory"] = cuda_step_memory(trainer, batch, device)
            except Exception as exc:  # noqa: BLE001
                rows[name]["memory"] = {"error": _failure(exc)}
        built.clear()
    threads = threads or torch.get_num_threads()
    if device.type != "cuda" and not interrupted:
        ok = [n for n in trainers if "failure" not in rows[n]]
        for name, result in cpu_memory_all(ok, size, settings.memory_steps, threads, settings.memory_parallel).items():
            rows[name]["memory"] = result
    base, base_mem = times.get(BASELINE) or [], rows[BASELINE].get("memory", {}).get("step_bytes")
    for name, row in rows.items():
        for i, keys in enumerate((("median_s", "time_ratio", "times_s"),
                                  ("median_cpu_s", "cpu_time_ratio", "cpu_times_s"))):
            if times.get(name) and "failure" not in row:
                (median_key, ratio_key, list_key), own, ref = keys, [x[i] for x in times[name]], [x[i] for x in base]
                row[median_key], row[list_key] = median(own), own
                row[ratio_key] = row[median_key] / median(ref) if ref and median(ref) > 0 else math.nan
                paired = [a / b for a, b in zip(own, ref) if b > 0]  # per round: cancels drift between rounds
                row[f"paired_{ratio_key}_median"] = median(paired) if paired else math.nan
        if losses.get(name):
            row["loss_first"], row["loss_last"] = losses[name][0], losses[name][-1]
        if row.get("memory", {}).get("step_bytes") is not None and base_mem:
            row["memory_ratio"] = row["memory"]["step_bytes"] / base_mem
    return {**extra, **({"interrupted": interrupted} if interrupted else {}), "plan": plan.describe(),
            "arch_kwargs": plan.arch_kwargs(), "batch_size": plan.batch_size, "patch": list(plan.patch),
            "compile": compile_network and device.type == "cuda", "compile_requested": compile_network,
            "amp": device.type == "cuda", "warmup": settings.warmup, "steps": settings.steps, "how": HOW,
            "rows": list(rows.values()),
            # one CPU thread: the process CPU time is the step's own compute, robust to other load
            "target_time_basis": "cpu" if device.type == "cpu" and threads == 1 else "wall",
            "target_time_ratio": TARGET_TIME_RATIO, "target_memory_ratio": TARGET_MEMORY_RATIO}


def _time_steps(built: dict, batch: dict, device: torch.device, settings: plans.StepSettings, rows: dict,
                times: dict[str, list], losses: dict[str, list]) -> str | None:
    """Interleaved rounds of one ``train_step`` per trainer; a trainer that raises is reported and dropped.
    Returns a note if interrupted (Ctrl-C or the GPU script's timeout), keeping what was measured."""
    total = settings.warmup + settings.steps
    for step in range(total):
        for name, trainer in list(built.items()):
            out: dict = {}
            try:
                seconds = plans.time_once(lambda t=trainer, o=out: o.update(t.train_step(batch)), device)
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
            elif step == 0 or seconds[0] > 5.0:
                print(f"[B] warm-up {step}: {name} {seconds[0]:.2f} s", flush=True)
        if step == total - 1 or (step >= settings.warmup and (step - settings.warmup) % 10 == 9):
            print(f"[B] round {step + 1}/{total}: " + ", ".join(f"{n} {times[n][-1][0]:.3f} s" for n in built
                                                            if times[n]), flush=True)
    return None


def _graph_breaks() -> dict:
    """torch._dynamo's graph-break reasons and counts in this process (compile runs)."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": dict(counters.get("graph_break", {})),
            "unique_graphs": counters.get("stats", {}).get("unique_graphs")}


def cuda_step_memory(trainer, batch: dict, device: torch.device) -> dict:
    """Peak bytes allocated during one ``train_step`` above what was allocated before it."""
    trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer.train_step(batch)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"method": "torch.cuda.max_memory_allocated - memory_allocated before the step", "before_bytes": base,
            "peak_bytes": peak, "step_bytes": peak - base,
            "reserved_peak_bytes": torch.cuda.max_memory_reserved(device)}


def cpu_memory_all(trainers: list[str], size: str, steps: int, threads: int, parallel: int) -> dict[str, dict]:
    """CPU step memory of each trainer, each in a fresh process forked (``parallel`` at a time) from
    multiprocessing's fork server, which only imports torch, nnU-Net and the trainers."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunet_csse.training",
                                    "benchmarks.step"])
    results: dict[str, dict] = {}
    for start in range(0, len(trainers), max(1, parallel)):
        jobs = {}
        for name in trainers[start:start + max(1, parallel)]:
            receive, send = context.Pipe(duplex=False)
            jobs[name] = (context.Process(target=_measure, args=(name, size, steps, threads, send)), receive)
            jobs[name][0].start()
            send.close()
        for name, (process, receive) in jobs.items():
            try:
                results[name] = receive.recv()
            except EOFError:
                results[name] = {"error": f"memory process for {name} ended without a result"}
            process.join()
            if process.exitcode and "error" not in results[name]:
                results[name] = {"error": f"memory process for {name} exited with code {process.exitcode}"}
    return results


def _rss_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS since the last reset) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _measure(trainer_name: str, size: str, steps: int, threads: int, send) -> None:
    """In a fresh process: build the trainer, then send the RSS peak of ``steps`` train steps (or the error)."""
    try:
        ctypes.CDLL(None).mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD: freed large tensors leave the RSS at once
    except (OSError, AttributeError):
        pass
    try:
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="csse_bench_mem_") as workdir:
            trainer = plans.make_trainer(trainer_name, plans.PLANS[size], torch.device("cpu"), False,
                                         plans.nnunet_folders(Path(workdir)))
            batch = plans.synthetic_batch(plans.PLANS[size], plans.deep_supervision_scales(trainer))
            gc.collect()
            try:  # reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0; may be refused)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                reset = True
            except OSError:
                reset = False
            before = _rss_bytes("VmRSS")
            for _ in range(steps):
                trainer.train_step(batch)
            peak = _rss_bytes("VmHWM")
        method = ("peak RSS (VmHWM, reset before the steps) minus RSS before the steps, own process" if reset else
                  "lifetime peak RSS (reset refused: building the trainer may hold the peak) minus RSS before the "
                  "steps, own process")
        send.send({"method": method, "peak_reset": reset, "before_bytes": before, "peak_bytes": peak,
                   "step_bytes": peak - before, "steps": steps})
    except Exception as exc:  # noqa: BLE001 - reported in the parent's table
        send.send({"error": f"{type(exc).__name__}: {exc}"})


def op_times(trainer, batch: dict, device: torch.device, steps: int) -> tuple[dict[str, float], int]:
    """Per aten op, the self device time per step in ms (GPU kernel time on CUDA, CPU self time on CPU); and the
    number of aten op calls per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    plans.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            trainer.train_step(batch)
        plans.synchronize(device)
    times: dict[str, float] = defaultdict(float)
    calls = 0
    for event in (e for e in prof.key_averages() if e.key.startswith("aten::")):
        us = (getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)) if cuda \
            else event.self_cpu_time_total
        times[event.key] += us / 1000.0 / steps
        calls += event.count
    return dict(times), calls // steps


def profile_main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks profile [--device] [--size] [--trainers] ...``: prints the op table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks profile", description=(
        "Per aten op, the device time per train_step of each trainer (GPU kernel time on CUDA, the op's own CPU time "
        "on CPU) and its difference to nnUNetTrainer, largest first. A diagnosis tool: the step-time targets come "
        "from python -m benchmarks."))
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--size", choices=("tiny", "small", "full"), default=None)
    p.add_argument("--trainers", default="nnUNetTrainer,nnUNetTrainerCSSE")
    for name, default in (("--warmup", 3), ("--steps", 3), ("--top", 15)):
        p.add_argument(name, type=int, default=default)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train
    else:
        torch.set_num_threads(1)
    plan = plans.profile(args.size or ("full" if device.type == "cuda" else "tiny"), device.type).step_plan
    names = [BASELINE, *[n for n in args.trainers.split(",") if n and n != BASELINE]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="csse_profile_") as workdir:
        for name in names:
            trainer = plans.make_trainer(name, plan, device, False, plans.nnunet_folders(Path(workdir)))
            batch = plans.synthetic_batch(plan, plans.deep_supervision_scales(trainer), pin=device.type == "cuda")
            for _ in range(args.warmup):
                trainer.train_step(batch)
            results[name] = op_times(trainer, batch, device, args.steps)
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"profile of train_step on {plan.describe()}, {device.type}, eager, {args.steps} steps after "
          f"{args.warmup} warm-up; {'GPU kernel' if device.type == 'cuda' else 'CPU self'} time per step in ms")
    base, base_calls = results[BASELINE]
    for name in names[1:]:
        ops, calls = results[name]
        total, base_total = sum(ops.values()), sum(base.values())
        print(f"\n{name}: {total:.2f} ms vs {BASELINE} {base_total:.2f} ms ({total - base_total:+.2f} ms); "
              f"aten op calls per step {calls} vs {base_calls}\n   {'aten op':44s} {name[:14]:>14s} "
              f"{BASELINE[:14]:>14s} {'difference':>11s}")
        diff = sorted(((ops.get(k, 0.0) - base.get(k, 0.0), k) for k in set(ops) | set(base)),
                      key=lambda item: -abs(item[0]))  # largest differences either way
        for delta, key in diff[:args.top]:
            print(f"   {key[:44]:44s} {ops.get(key, 0.0):14.3f} {base.get(key, 0.0):14.3f} {delta:+11.3f}")
    return 0
