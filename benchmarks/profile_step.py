"""``python -m benchmarks.profile_step``: where a CSSE trainer's extra train_step time goes, op by op.

Profiles a few ``train_step`` calls of each trainer (after warm-up) with ``torch.profiler`` and prints, per aten op,
the device time per step of each trainer and the difference to nnUNetTrainer, largest (either way) first. On CUDA
the device time is the GPU kernel time; on CPU it is the op's own CPU time. A diagnosis tool: the step-time
targets come from ``python -m benchmarks`` (interleaved medians), not from this profile.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path


def _self_device_us(event, cuda: bool) -> float:
    if not cuda:
        return event.self_cpu_time_total
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def op_times(trainer, batch: dict, device, steps: int) -> tuple[dict[str, float], int]:
    """Per aten op: self device time per step in ms; and the number of aten op calls per step."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.timing import synchronize

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(batch)
        synchronize(device)
    times: dict[str, float] = defaultdict(float)
    calls = 0
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            times[event.key] += _self_device_us(event, cuda) / 1000.0 / steps
            calls += event.count
    return dict(times), calls // steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--size", choices=("tiny", "small", "full"), default=None)
    p.add_argument("--trainers", default="nnUNetTrainer,nnUNetTrainerCSSE")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)

    from benchmarks import placeholders

    placeholders.install("auto")
    import torch

    from benchmarks.plans import synthetic_batch
    from benchmarks.profiles import profile
    from benchmarks.trainers import BASELINE, deep_supervision_scales, make_trainer, prepare_nnunet_folders

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train
    else:
        torch.set_num_threads(1)
    plan = profile(args.size or ("full" if device.type == "cuda" else "tiny"), device.type).step_plan
    names = [BASELINE, *[n for n in args.trainers.split(",") if n and n != BASELINE]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="csse_profile_") as workdir:
        prepare_nnunet_folders(Path(workdir))
        for name in names:
            trainer = make_trainer(name, plan, device, compile_network=False)
            batch = synthetic_batch(plan, deep_supervision_scales(trainer), pin=device.type == "cuda")
            for _ in range(args.warmup):
                trainer.train_step(batch)
            results[name] = op_times(trainer, batch, device, args.steps)
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    kind = "GPU kernel" if device.type == "cuda" else "CPU self"
    print(f"profile of train_step on {plan.describe()}, {device.type}, eager, {args.steps} steps after "
          f"{args.warmup} warm-up; {kind} time per step in ms")
    base, base_calls = results[BASELINE]
    for name in names[1:]:
        ops, calls = results[name]
        total, base_total = sum(ops.values()), sum(base.values())
        print(f"\n{name}: {total:.2f} ms vs {BASELINE} {base_total:.2f} ms ({total - base_total:+.2f} ms); "
              f"aten op calls per step {calls} vs {base_calls}")
        diff = sorted(((ops.get(k, 0.0) - base.get(k, 0.0), k) for k in set(ops) | set(base)),
                      key=lambda item: -abs(item[0]))  # largest differences either way
        print(f"   {'aten op':44s} {name[:14]:>14s} {BASELINE[:14]:>14s} {'difference':>11s}")
        for delta, key in diff[:args.top]:
            print(f"   {key[:44]:44s} {ops.get(key, 0.0):14.3f} {base.get(key, 0.0):14.3f} {delta:+11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
