"""``python -m benchmarks.uncertainty_time -m MODEL_FOLDER -i IMAGES``: the wall time of ``nnunet-csse uncertainty``
against ``nnUNetv2_predict`` on the same model and cases, both as fresh processes, interleaved; the segmentations
are compared after the last round. How it is timed: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_csse.tools.commands import executable

TARGET = 1.2  # nnunet-csse uncertainty / nnUNetv2_predict
PREDICT, UNCERTAINTY = "nnUNetv2_predict", "nnunet-csse uncertainty"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.uncertainty_time", description=__doc__)
    p.add_argument("-m", "--model", type=Path, required=True,
                   help="trained model folder (<nnUNet_results>/DatasetXXX_Name/<trainer>__<plans>__<config>)")
    p.add_argument("-i", "--input", type=Path, required=True, help="folder with CASE_0000<ending> images")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold(s), ensembled by both commands")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (both commands)")
    p.add_argument("-npp", type=int, default=1, help="nnUNetv2_predict preprocessing workers (default: %(default)s)")
    p.add_argument("-nps", type=int, default=1, help="nnUNetv2_predict export workers (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, each runs both commands (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (file caches, default: 1)")
    p.add_argument("--workdir", type=Path, default=None, help="output folders go here (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def split_model_folder(model: Path) -> dict[str, str]:
    """``.../DatasetXXX_Name/<trainer>__<plans>__<config>`` -> results folder, dataset, trainer, plans, config."""
    model = model.resolve()
    parts = model.name.split("__")
    if len(parts) != 3 or not re.fullmatch(r"Dataset\d{3}_.+", model.parent.name):
        raise ValueError(f"{model} is not a model folder <nnUNet_results>/DatasetXXX_Name/<trainer>__<plans>__<config>")
    return dict(zip(("trainer", "plans", "configuration"), parts), results=str(model.parent.parent),
                dataset=model.parent.name)


def commands(args: argparse.Namespace, out_predict: Path, out_uncertainty: Path) -> dict[str, list[str]]:
    """The two command lines, same model, folds, checkpoint, device and mirroring."""
    model = split_model_folder(args.model)
    tta = ["--disable_tta"] if args.disable_tta else []
    return {PREDICT: [executable(PREDICT), "-i", str(args.input), "-o", str(out_predict), "-d", model["dataset"],
                      "-c", model["configuration"], "-p", model["plans"], "-tr", model["trainer"], "-f", *args.folds,
                      "-chk", args.checkpoint, "-device", args.device, "-npp", str(args.npp), "-nps", str(args.nps),
                      "--disable_progress_bar", *tta],
            UNCERTAINTY: [executable("nnunet-csse"), "uncertainty", "-i", str(args.input), "-o", str(out_uncertainty),
                          "-m", str(args.model), "-f", *args.folds, "-chk", args.checkpoint, "-device", args.device,
                          *tta]}


def run_timed(cmd: list[str], env: dict[str, str], output: Path) -> float:
    """Seconds of one run of ``cmd`` (a fresh ``output`` folder each time)."""
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def same_segmentations(out_predict: Path, out_uncertainty: Path, ending: str) -> tuple[int, int]:
    """(number of cases, number whose segmentation arrays are equal) between the two output folders."""
    import numpy as np
    import SimpleITK as sitk

    def read(path: Path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    cases = sorted(out_predict.glob(f"*{ending}"))
    return len(cases), sum((out_uncertainty / p.name).exists() and
                           np.array_equal(read(p), read(out_uncertainty / p.name)) for p in cases)


def main(argv: list[str] | None = None) -> int:
    from nnunet_csse.environment import trainers_path

    args = parse_args(argv)
    ending = json.loads((args.model / "dataset.json").read_text())["file_ending"]
    n_cases = len(list(args.input.glob(f"*_0000{ending}")))
    if n_cases == 0:
        print(f"error: no CASE_0000{ending} images in {args.input}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nnunet-csse-uncertainty-time-"))
    outputs = {PREDICT: workdir / "predict", UNCERTAINTY: workdir / "uncertainty"}
    cmds = commands(args, outputs[PREDICT], outputs[UNCERTAINTY])
    env = dict(os.environ, nnUNet_results=split_model_folder(args.model)["results"])
    env.setdefault("nnUNet_extTrainer", trainers_path())
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):  # only read to silence nnU-Net's warnings
        env.setdefault(name, env["nnUNet_results"])
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for r in range(args.warmup + args.rounds):
        for name in list(cmds) if r % 2 == 0 else list(cmds)[::-1]:  # A B, then B A: neither always runs second
            seconds = run_timed(cmds[name], env, outputs[name])
            if r >= args.warmup:
                times[name].append(seconds)
            print(f"{'warm-up' if r < args.warmup else f'round {r - args.warmup + 1}'}: {name} {seconds:.2f} s",
                  flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians[UNCERTAINTY] / medians[PREDICT]
    # the two runs of one round are back to back: their ratio is less exposed to load that drifts between rounds
    paired = [u / p for u, p in zip(times[UNCERTAINTY], times[PREDICT])]
    compared, equal = same_segmentations(outputs[PREDICT], outputs[UNCERTAINTY], ending)

    print(f"\nmodel {args.model}\ninput {args.input} ({n_cases} cases), device {args.device}, folds "
          f"{' '.join(args.folds)}, mirroring {'off' if args.disable_tta else 'on'}, {args.rounds} rounds")
    for name, values in times.items():
        print(f"{name:<26} median {medians[name]:8.2f} s   runs " + " ".join(f"{v:.2f}" for v in values))
    print(f"ratio uncertainty / predict: {ratio:.3f} (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'MISS'}); "
          f"per round " + " ".join(f"{r:.3f}" for r in paired) + f", median {statistics.median(paired):.3f}")
    print(f"segmentations equal: {equal}/{compared}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "model": str(args.model), "input": str(args.input), "cases": n_cases, "device": args.device,
            "folds": args.folds, "mirroring": not args.disable_tta, "rounds": args.rounds,
            "commands": cmds, "seconds": times, "median_seconds": medians, "ratio": ratio, "ratio_per_round": paired,
            "median_ratio_per_round": statistics.median(paired), "target": TARGET,
            "segmentations_equal": [equal, compared],
        }, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
