"""Peak training-step memory of one trainer.

CUDA: allocator statistics in the running process (``max_memory_allocated`` during one ``train_step`` minus what
was allocated before it, with this trainer's gradients released first).

CPU: the RSS is shared by everything in a process, so each trainer is measured in a process of its own (forked
from ``python -m benchmarks.memory``, which only imports). Just before the steps the kernel's peak-RSS mark is
reset (``5`` written to ``/proc/self/clear_refs``, Linux >= 4.0) and the RSS read; after them the peak (``VmHWM``)
is read; the delta is the steps' own memory (activations, gradients, optimizer state, temporaries). Where the
reset is refused the lifetime peak (``getrusage`` ``ru_maxrss``) is used and the result says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MMAP_THRESHOLD = 1 << 20  # bytes: allocations from 1 MiB up are mmapped and unmapped on free


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (or process start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
    return {"method": "torch.cuda.max_memory_allocated - memory_allocated before the step",
            "before_bytes": base, "peak_bytes": torch.cuda.max_memory_allocated(device),
            "step_bytes": torch.cuda.max_memory_allocated(device) - base,
            "reserved_peak_bytes": torch.cuda.max_memory_reserved(device)}


def cpu_memory_all(trainers: list[str], size: str, steps: int, threads: int, parallel: int) -> dict[str, dict]:
    """CPU step memory of each trainer, each in its own fresh process.

    One helper process (``python -m benchmarks.memory``) imports torch and nnU-Net once, runs no torch work, and
    forks one child per trainer (``parallel`` at a time); each child builds its trainer and measures its steps.
    glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) in that process so freed tensors leave the
    RSS at once and the RSS peak follows live tensor memory.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    cmd = [sys.executable, "-m", "benchmarks.memory", "--trainers", ",".join(trainers), "--size", size,
           "--steps", str(steps), "--threads", str(threads), "--parallel", str(parallel)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        return {t: {"error": f"memory helper failed ({proc.returncode}): {proc.stderr[-3000:]}"} for t in trainers}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(trainer_name: str, size: str, steps: int, threads: int) -> dict:
    """In a freshly forked child: build the trainer, then measure the RSS peak of ``steps`` train steps."""
    torch.set_num_threads(threads)
    from benchmarks.plans import PLANS, synthetic_batch
    from benchmarks.trainers import deep_supervision_scales, make_trainer, prepare_nnunet_folders

    plan = PLANS[size]
    with tempfile.TemporaryDirectory(prefix="csse_bench_mem_") as workdir:
        prepare_nnunet_folders(Path(workdir))
        device = torch.device("cpu")
        trainer = make_trainer(trainer_name, plan, device, compile_network=False)
        batch = synthetic_batch(plan, deep_supervision_scales(trainer))
        gc.collect()
        reset = reset_peak_rss()
        before = current_rss_bytes()
        for _ in range(steps):
            trainer.train_step(batch)
        peak = peak_rss_bytes()
    method = ("peak RSS (VmHWM, reset before the steps) minus RSS before the steps, own process" if reset else
              "lifetime peak RSS (reset refused: building the trainer may hold the peak) minus RSS before the "
              "steps, own process")
    return {"method": method, "peak_reset": reset, "before_bytes": before, "peak_bytes": peak,
            "step_bytes": peak - before, "steps": steps}


def _fork_measure(trainer: str, args: argparse.Namespace, result_file: Path) -> int:
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            result = _measure(trainer, args.size, args.steps, args.threads)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        result_file.write_text(json.dumps(result))
        os._exit(code)
    return pid


def _helper(args: argparse.Namespace) -> dict[str, dict]:
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401 - imported once, before forking

    import benchmarks.trainers  # noqa: F401
    import nnunet_csse.training  # noqa: F401

    trainers = args.trainers.split(",")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="csse_bench_memres_") as tmp:
        files = {t: Path(tmp) / f"{i}.json" for i, t in enumerate(trainers)}
        for start in range(0, len(trainers), max(1, args.parallel)):
            batch = trainers[start:start + max(1, args.parallel)]
            pids = {_fork_measure(t, args, files[t]): t for t in batch}
            for pid, trainer in pids.items():
                _, status = os.waitpid(pid, 0)
                try:
                    results[trainer] = json.loads(files[trainer].read_text())
                except (OSError, ValueError):
                    results[trainer] = {"error": f"memory child for {trainer} exited with status {status}"}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU step memory, one forked process per trainer")
    parser.add_argument("--trainers", required=True, help="comma list")
    parser.add_argument("--size", required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(_helper(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
