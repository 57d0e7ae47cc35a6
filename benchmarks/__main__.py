"""``python -m benchmarks [--device cpu|cuda] [--size tiny|small|full] [--compile] [--amp] [--out DIR]``.

Runs part A (PDCR vs loop), B (train_step time and memory vs nnUNetTrainer) and C (PDCR scaling), prints one table
and writes ``<out>/benchmark_<tag>.json`` and ``.png``. Other commands: ``accuracy``, ``trainings``, ``summary``,
``authors-quirks``, ``profile`` (each with ``--help``); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

PARTS = ("pdcr", "step", "scaling")
COMMANDS = {"accuracy": ("benchmarks.accuracy", "main"), "trainings": ("benchmarks.records", "trainings_main"),
            "summary": ("benchmarks.report", "summary_main"), "profile": ("benchmarks.step", "profile_main"),
            "authors-quirks": ("benchmarks.authors_quirks", "main")}


def _finite_json(value):
    """NaN/inf -> None so the JSON file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    return [_finite_json(v) for v in value] if isinstance(value, (list, tuple)) else value


def _parts(text: str) -> list[str]:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if set(parts) - set(PARTS):
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    return parts


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] and given[0] in COMMANDS:
        module, function = COMMANDS[given[0]]
        return getattr(importlib.import_module(module), function)(given[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--size", choices=("tiny", "small", "full"), default=None,
                   help="tiny: smoke test; small: CPU default; full: nnU-Net's default 3D plan (CUDA default)")
    p.add_argument("--compile", action="store_true",
                   help="nnUNet_compile=true for the trainers (nnU-Net itself never compiles on CPU); on CUDA part A "
                        "also times torch.compile(PDCRLoss), as the trainers then run it")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast the PDCR parts' feature maps (default: on for CUDA). train_step always follows "
                        "nnU-Net: autocast on CUDA, none on CPU")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "nnunet-csse-benchmarks",
                   help="folder for benchmark_<tag>.json and .png (default: %(default)s)")
    p.add_argument("--tag", default=None, help="output name suffix (default: <device>_<size>[_compile])")
    p.add_argument("--parts", type=_parts, default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--trainers", default=None, help="comma list (default: nnUNetTrainer, UAFS, PDCR, CSSE)")
    p.add_argument("--warmup", type=int, default=None, help="train_step warm-up rounds (default: per size)")
    p.add_argument("--steps", type=int, default=None, help="timed train_step rounds (default: per size)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1: the CPU time of one thread is robust to other load)")
    args = p.parse_args(given)


    import torch

    from benchmarks import pdcr, report, step
    from benchmarks.plans import TRAINERS, profile

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device, cuda = torch.device(device_name), device_name == "cuda"
    size = args.size or ("full" if cuda else "small")
    amp = cuda if args.amp is None else args.amp
    prof = profile(size, device_name)
    prof = prof._replace(step=prof.step._replace(**{k: getattr(args, k) for k in ("warmup", "steps")
                                                    if getattr(args, k) is not None}))
    threads = 1 if cuda or not args.threads else args.threads  # 1 on CUDA as nnUNetv2_train (docs/benchmarks.md)
    threads_reason = "as nnUNetv2_train on CUDA" if cuda else "requested" if args.threads else \
        f"CPU default of this benchmark; nnUNetv2_train would use all {os.cpu_count()} cores: --threads N"
    torch.set_num_threads(threads)
    if cuda:
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train
    trainers = args.trainers.split(",") if args.trainers else list(TRAINERS)
    tag = args.tag or f"{device_name}_{size}" + ("_compile" if args.compile else "")
    notes = [note for condition, note in (
        (args.compile and not cuda, "--compile on CPU: nnU-Net's _do_i_compile() returns False on CPU, so nothing is "
                                    "compiled"),
        (not amp and cuda, "--no-amp: PDCR parts in float32; nnU-Net's train_step autocasts on CUDA regardless"),
        (amp and not cuda, "--amp on CPU: PDCR parts use bfloat16 feature maps under autocast; nnU-Net's train_step "
                           "never autocasts on CPU")) if condition]
    results: dict = {
        "machine": report.machine_info(device),
        "settings": {"size": size, "device": device_name, "compile": args.compile, "amp": amp, "threads": threads,
                     "threads_reason": threads_reason, "parts": args.parts, "trainers": trainers, "argv": given},
        "notes": notes, "parts": {}, "elapsed_s": {}, "failures": {},
    }
    elapsed, failures = results["elapsed_s"], results["failures"]
    jobs = {
        "pdcr": ("pdcr_speed", f"[A] PDCR vs loop on {prof.pdcr_plan.describe()} ...",
                 lambda: pdcr.run_speed(prof.pdcr_plan, device, prof.speed, amp, args.compile and cuda)),
        "step": ("step_time", f"[B] train_step on {prof.step_plan.describe()}, trainers {', '.join(trainers)} ...",
                 lambda: step.run_steps(prof.step_plan, size, device, trainers, prof.step,
                                        compile_network=args.compile, threads=threads)),
        "scaling": ("scaling", f"[C] PDCR scaling on {prof.scaling_plan.describe()} ...",
                    lambda: pdcr.run_scaling(prof.scaling_plan, device, prof.spacings, prof.sides, prof.classes,
                                             prof.scaling_reps, amp=amp)),
    }
    started = time.perf_counter()
    for key, message, job in (jobs[part] for part in PARTS if part in args.parts):
        print(message, flush=True)
        t0 = time.perf_counter()
        try:
            results["parts"][key] = job()
            if results["parts"][key].get("interrupted"):
                notes.append(f"part {key} interrupted; later parts skipped")
                break
        except KeyboardInterrupt:
            notes.append(f"part {key} interrupted after {time.perf_counter() - t0:.0f} s; later parts skipped")
            print(f"[{key}] interrupted", flush=True)
            break
        except Exception as exc:  # noqa: BLE001 - reported (table, JSON, exit code); later parts still run
            text = "".join(traceback.format_exception(exc))
            failures[key] = text[-4000:]
            notes.append(f"part {key} FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            print(f"[{key}] FAILED:\n{text}", flush=True)
        finally:
            elapsed[key] = time.perf_counter() - t0
    elapsed["total"] = time.perf_counter() - started
    results["targets"] = report.targets(results)
    print(report.format_table(results) + "\n(ran " + ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items()) + ")",
          flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"benchmark_{tag}.json"
    png_path = report.write_png(results, args.out / f"benchmark_{tag}.png")
    results["files"] = {"json": str(json_path), "png": str(png_path) if png_path else None}
    json_path.write_text(json.dumps(_finite_json(results), indent=1))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
