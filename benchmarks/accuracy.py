r"""``python -m benchmarks accuracy``: train the comparison, then compare it with ``nnunet-csse compare``.

For one dataset (default 4, nnU-Net's ``Dataset004_Hippocampus``), configuration (default ``3d_fullres``) and plans
(default ``nnUNetPlans``; ``--preset NAME`` derives a smaller network with ``nnunet-csse plans apply``'s code),
every listed trainer is trained by ``nnUNetv2_train`` on the same folds, with the same seed and the same explicit
budget (epochs x iterations per epoch, plus validation iterations per epoch), optionally on a fraction of each
fold's training cases (``--fractions 1.0 0.25``; the fold's validation cases stay the same). A run is
(trainer, fraction, fold, seed). The trainers are the ``*_benchmark`` classes of :mod:`nnunet_csse.schedules`,
which read the budget and the seed from environment variables set here, and the fraction from the plans.

Work folder (``--workdir``, default ``work_dirs/accuracy``, git-ignored)::

    nnUNet_raw/Dataset004_Hippocampus             (--convert-from DIR writes it)
    nnUNet_preprocessed/Dataset004_Hippocampus    (nnUNetv2_plan_and_preprocess, the derived plans)
    e{E}x{I}_val{V}/seed{S}/nnUNet_results/...    (one results root per budget and seed: runs never collide)
    logs/...                                      (the console output of every nnUNetv2_train)

A finished run (``fold_X/checkpoint_final.pth`` and ``fold_X/validation/summary.json``) is reused; an interrupted
one resumes with ``nnUNetv2_train --c``. So the benchmark can be stopped and started again at any time. A run
recorded in ``--out`` (``runs/<run>.json``, next to nnU-Net's per-case ``runs/<run>.validation_summary.json``) is
reused too when its work folder is gone: commit the output folder and a later checkout (a new machine, an empty work
folder) continues the grid instead of training it again; delete the two files to train that run again. The
comparisons are computed from these per-case files, not from the work folder, so runs of different invocations pool.

Limited data: each fraction f < 1 gets its own plans identifier ``<plans>_frac<NN>``, a copy of the plans with
``"training_fraction": f`` in the configuration (same ``data_identifier``, so the preprocessed data is shared) and
hence its own results folder. ``splits_final.json`` is never changed: the trainers' ``do_split`` keeps
``round(f * n_train)`` training cases of nnU-Net's split, chosen by a seed of their own, the same for every trainer
and run seed (:func:`nnunet_csse.schedules.training_subset`).

Outputs (``--out``, default ``benchmarks/results/accuracy``), in a folder named after dataset, plans,
configuration and budget: one JSON record per run (budget, wall time, validation Dice per class from nnU-Net's
``summary.json``, learning curves from the checkpoint's logging) next to a copy of that ``summary.json`` (the per-case
Dice), ``runs.csv`` and ``runs.md``, the output of ``nnunet-csse compare`` per seed and fraction in
``compare/seed<S>_frac<NN>_folds<F-F>`` (named by the folds it rests on, so a comparison over other folds is never
overwritten; plus, for each fraction f < 1, every trainer at f
against the first trainer at full data: the limited-data question), ``summary.md`` and ``learning_curves.png``.
No checkpoints. ``summary.md`` (and the console) leads with the training-level table: one (fold, seed) run is one
training, the unit that repeats (a CI over the validation cases of one training says nothing about the next one).
Per budget, fraction and trainer: trainings, stalled trainings (a foreground class below 0.1 mean Dice) k/n with an
exact interval, mean ± SD of the trainings' foreground Dice, the mean difference to the first trainer over the
(fold, seed) pairs both have with a hierarchical bootstrap CI, and a Wilcoxon or exact sign test over the pairs
(:mod:`nnunet_csse.tools.trainings`, shared with ``nnunet-csse compare``); ``trainings.png`` shows every training.
``python -m benchmarks trainings FOLDER ... --out DIR`` writes that table and figure from the committed records of
one or more output folders (e.g. two budgets side by side).

``--report-only`` trains nothing and writes these outputs for the finished runs of the grid it is given: to pool folds
that separate invocations trained, or to look at results while another invocation trains the rest.

Example (from the repository root; CPU, half-width network, baseline vs CSSE on 3 folds, full and 25% data)::

    python -m benchmarks accuracy --convert-from DIR --preset half_width --trainers baseline CSSE \
        --folds 0 1 2 --fractions 1.0 0.25 --epochs 20 --iterations 50 --device cpu

On a CPU shared with other work, ``--threads 1`` avoids oversubscribing the cores (OpenMP threads that wait for
each other); the default is all cores, as ``nnUNetv2_train -device cpu`` uses. Measured on 2 cores (half-width
Hippocampus plan): a 2-thread training next to a 1-thread one slowed from about 95 s to 990 s per epoch; two 1-thread
trainings side by side (baseline and CSSE) took about 205 s and 230 s per epoch, no faster in total than one after
the other at 2 threads (95 s and 120 s). So train the runs one after the other with all cores, and give every
training ``--threads 1`` only when runs must share the cores. On Linux with autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``), ``nice`` does not work across terminal sessions: lower the priority
of competing work with ``/proc/<pid>/autogroup`` instead. ``benchmarks/accuracy_gpu.sh`` runs the GPU variant at
nnU-Net's default plan.

Reproducibility: the seed fixes the initial weights (the U-Net part is the same for every trainer) and the start of
the data stream, but the runs are not bit-deterministic: augmentation workers (``nnUNet_n_proc_DA`` > 0) are
unseeded and deliver batches in arrival order, cuDNN autotunes, and the trainers draw different amounts of random
numbers. Use ``--seeds 0 1 2`` to see the spread between repeats.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunet_csse.folders import FOREGROUND_MEAN, find_dataset_folder, read_evaluator_summary, write_json_atomic
from nnunet_csse.schedules import (
    BUDGET_LOG_PREFIX,
    ENV_EPOCHS,
    ENV_ITERATIONS,
    ENV_SAVE_EVERY,
    ENV_SEED,
    ENV_THREADS,
    ENV_VAL_ITERATIONS,
    FRACTION_KEY,
    FRACTION_SEED_KEY,
    SUBSET_LOG_PREFIX,
    TRAINING_SUBSET_SEED,
    check_training_fraction,
)
from nnunet_csse.tools.trainings import (
    Group,
    Training,
    markdown_table,
    method_note,
    per_training_rows,
    summarize_trainings,
    table_rows,
    text_table,
    trainings_figure,
)

TRAINER_ALIASES = {
    "baseline": "nnUNetTrainer_benchmark",
    "UAFS": "nnUNetTrainerUAFS_benchmark",
    "PDCR": "nnUNetTrainerPDCR_benchmark",
    "CSSE": "nnUNetTrainerCSSE_benchmark",
    "CSSE_authors": "nnUNetTrainerCSSE_authors_benchmark",
}
DEFAULT_TRAINERS = ("baseline", "CSSE")
HIPPOCAMPUS_NAME = "Hippocampus"
HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}
FILE_ENDING = ".nii.gz"
SESSIONS_FILE = "benchmark_sessions.json"  # per fold folder: the wall time of every nnUNetv2_train session
PER_CASE_SUFFIX = ".validation_summary.json"  # next to a run's record: its fold's validation/summary.json
FRACTION_MARKER = "csse_benchmark_fraction"  # in derived plans: we only ever replace our own files
DEFAULT_WORKDIR = Path("work_dirs") / "accuracy"
DEFAULT_OUT = Path("benchmarks") / "results" / "accuracy"
COLORS = ("tab:gray", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive")


class DataMissing(Exception):
    """The dataset is neither raw nor preprocessed in the work folder; the message says what to pass."""


# ----------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Budget:
    """Training budget of every run: epochs x iterations per epoch, plus validation iterations per epoch."""

    epochs: int
    iterations: int
    val_iterations: int

    @property
    def tag(self) -> str:
        """Folder name, e.g. ``e20x50_val10``."""
        return f"e{self.epochs}x{self.iterations}_val{self.val_iterations}"

    def describe(self) -> str:
        return (f"{self.epochs} epochs x {self.iterations} iterations (+ {self.val_iterations} validation iterations "
                f"per epoch)")


@dataclasses.dataclass
class Settings:
    """Everything one invocation needs, validated by :func:`parse_args`."""

    dataset: str
    configuration: str
    plans: str
    preset: str | None
    trainers: list[str]
    folds: list[int]
    seeds: list[int]
    fractions: list[float]
    budget: Budget
    workdir: Path
    out: Path
    device: str
    threads: int
    da_workers: int
    preprocess_processes: int
    convert_from: Path | None
    save_every: int
    report_only: bool = False


@dataclasses.dataclass(frozen=True)
class Run:
    """One training: (trainer, fraction, fold, seed) with the plans identifier of its fraction."""

    trainer: str
    fraction: float
    fold: int
    seed: int
    plans: str

    @property
    def run_id(self) -> str:
        return f"{self.trainer}__{self.plans}__fold{self.fold}__seed{self.seed}"

    def describe(self) -> str:
        return f"{self.trainer}, fraction {self.fraction:g}, fold {self.fold}, seed {self.seed}"


def run_of(record: dict) -> Run:
    """The run a record describes."""
    return Run(record["trainer"], record["fraction"], record["fold"], record["seed"], record["plans"])


def describe_runs(runs: Sequence[Run]) -> str:
    """``runs`` grouped by trainer, fraction and seed (first-seen order), their folds listed once per group, e.g.
    ``nnUNetTrainer_benchmark, fraction 1, seed 0, folds 1, 2; ...``: a report over a grid stays readable."""
    groups: dict[tuple[str, float, int], list[int]] = {}
    for run in runs:
        groups.setdefault((run.trainer, run.fraction, run.seed), []).append(run.fold)
    return "; ".join(f"{trainer}, fraction {fraction:g}, seed {seed}, fold{'s' if len(folds) > 1 else ''} "
                     f"{', '.join(map(str, folds))}" for (trainer, fraction, seed), folds in groups.items())


def fraction_tag(fraction: float) -> str:
    """``frac25`` for 0.25, ``frac12p5`` for 0.125 (percent of the training cases)."""
    percent = round(fraction * 100, 6)
    text = f"{int(percent):02d}" if float(percent).is_integer() else f"{percent:g}".replace(".", "p")
    return f"frac{text}"


def fraction_plans(plans: str, fraction: float) -> str:
    """Plans identifier of a fraction: the plans themselves for 1.0, else ``<plans>_frac<NN>``."""
    return plans if fraction == 1.0 else f"{plans}_{fraction_tag(fraction)}"


def check_fractions(values: Sequence[object]) -> list[float]:
    """The fractions as floats in (0, 1], without duplicates; ValueError otherwise."""
    fractions = [check_training_fraction(v, "--fractions: each fraction") for v in values]
    tags = [fraction_tag(f) for f in fractions]
    if len(set(tags)) != len(tags):
        raise ValueError(f"--fractions: duplicate fractions in {list(values)}")
    return fractions


def resolve_trainers(names: Sequence[str]) -> list[str]:
    """Trainer class names for aliases (baseline, UAFS, PDCR, CSSE, CSSE_authors) or ``*_benchmark`` class names."""
    known = set(TRAINER_ALIASES.values())
    out = []
    for name in names:
        trainer = TRAINER_ALIASES.get(name, name)
        if trainer not in known:
            raise ValueError(f"unknown trainer '{name}': choose from {', '.join(TRAINER_ALIASES)} or "
                             f"{', '.join(sorted(known))} (only these read the benchmark's budget and seed)")
        if trainer in out:
            raise ValueError(f"trainer '{name}' given twice")
        out.append(trainer)
    return out


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse and validate the command line (raises ValueError for invalid values; nothing is written)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="4", help="dataset id or DatasetXXX_Name (default 4: Hippocampus)")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="default 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    p.add_argument("--preset", default=None,
                   help="plans preset (nnunet-csse plans list), e.g. half_width; trains <plans>CSSE_<preset>")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS), metavar="TRAINER",
                   help=f"aliases {', '.join(f'{k}={v}' for k, v in TRAINER_ALIASES.items())} or those class names "
                        f"(default: baseline CSSE)")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="run seeds, one results root each (default 0)")
    p.add_argument("--fractions", nargs="+", default=["1.0"], metavar="F",
                   help="fractions of each fold's training cases, in (0, 1] (default 1.0)")
    p.add_argument("--epochs", type=int, default=20, help="default 20")
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (default 50)")
    p.add_argument("--val-iterations", type=int, default=10,
                   help="validation iterations per epoch, for nnU-Net's pseudo Dice (default 10)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="nnUNet_raw/preprocessed/results of the benchmark (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default %(default)s)")
    p.add_argument("--convert-from", type=Path, default=None, metavar="DIR",
                   help="a Hippocampus copy with images/NAME.nii.gz and labels/NAME.nii.gz (or MSD's imagesTr/ and "
                        "labelsTr/): written as Dataset{id}_Hippocampus in <workdir>/nnUNet_raw (symlinks)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of each training (CPU default: all cores, as nnUNetv2_train; CUDA: 1)")
    p.add_argument("--da-workers", type=int, default=None,
                   help="nnUNet_n_proc_DA (CPU default 0: augmentation in the training process; CUDA: nnU-Net's)")
    p.add_argument("--preprocess-processes", type=int, default=None,
                   help="-np of nnUNetv2_plan_and_preprocess (default: min(8, CPU cores))")
    p.add_argument("--save-every", type=int, default=None,
                   help="checkpoint_latest.pth every N epochs, for resuming (default: about 10 per run)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the outputs for the runs of this grid that have finished (e.g. while "
                        "another invocation trains the rest, or to pool folds trained by separate invocations)")
    args = p.parse_args(argv)
    for name in ("epochs", "iterations", "val_iterations"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(f < 0 for f in args.folds) or len(set(args.folds)) != len(args.folds):
        raise ValueError(f"--folds must be distinct non-negative integers, got {args.folds}")
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    fractions = check_fractions(args.fractions)
    trainers = resolve_trainers(args.trainers)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    cores = os.cpu_count() or 1
    threads = args.threads if args.threads is not None else (cores if device == "cpu" else 1)
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if args.da_workers is not None:
        da_workers = args.da_workers
    elif device == "cpu":
        da_workers = 0
    else:
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        da_workers = get_allowed_n_proc_DA()
    if da_workers < 0:
        raise ValueError(f"--da-workers must be >= 0, got {da_workers}")
    budget = Budget(args.epochs, args.iterations, args.val_iterations)
    save_every = args.save_every if args.save_every is not None else max(1, min(50, math.ceil(budget.epochs / 10)))
    if save_every < 1:
        raise ValueError(f"--save-every must be >= 1, got {save_every}")
    if args.preset is not None:
        from nnunet_csse.presets import load_preset

        load_preset(args.preset)  # unknown preset: ValueError with the list
    return Settings(
        dataset=str(args.dataset), configuration=args.configuration, plans=args.plans, preset=args.preset,
        trainers=trainers, folds=list(args.folds), seeds=list(args.seeds), fractions=fractions, budget=budget,
        workdir=args.workdir, out=args.out, device=device, threads=threads, da_workers=da_workers,
        preprocess_processes=args.preprocess_processes or max(1, min(8, cores)),
        convert_from=args.convert_from, save_every=save_every, report_only=args.report_only)


# ----------------------------------------------------------------------------------------------- the data
def _executable(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _dataset_id(dataset: str) -> int | None:
    text = dataset.strip()
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"Dataset(\d{3})_.+", text)
    return int(match.group(1)) if match else None


def _case_files(folder: Path) -> dict[str, Path]:
    """NAME -> file for ``NAME.nii.gz`` files (hidden files such as ``._NAME.nii.gz`` left out)."""
    return {f.name[: -len(FILE_ENDING)]: f for f in sorted(folder.iterdir())
            if f.name.endswith(FILE_ENDING) and not f.name.startswith(".")}


def convert_hippocampus(source: Path, raw_root: Path, dataset_id: int) -> Path:
    """Write ``raw_root/Dataset{id}_Hippocampus`` (nnU-Net raw format) from a folder with ``images/NAME.nii.gz``
    and ``labels/NAME.nii.gz`` (or MSD's ``imagesTr``/``labelsTr``): ``imagesTr/NAME_0000.nii.gz`` and
    ``labelsTr/NAME.nii.gz`` as symlinks to the source (copies where links fail), and ``dataset.json`` from nnU-Net's
    ``generate_dataset_json``. An existing conversion with the same cases is reused; returns the dataset folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    source = source.resolve()
    pairs = [(source / a, source / b) for a, b in (("images", "labels"), ("imagesTr", "labelsTr"))]
    images_dir, labels_dir = next(((a, b) for a, b in pairs if a.is_dir() and b.is_dir()), (None, None))
    if images_dir is None:
        raise DataMissing(f"--convert-from {source}: expected images/ and labels/ (or imagesTr/ and labelsTr/) with "
                          f"NAME{FILE_ENDING} files")
    images, labels = _case_files(images_dir), _case_files(labels_dir)
    if not images:
        raise DataMissing(f"--convert-from {source}: no *{FILE_ENDING} files in {images_dir}")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise ValueError(f"--convert-from {source}: {len(unlabelled)} image(s) without a label in {labels_dir}, "
                         f"e.g. {unlabelled[:3]}")
    target = raw_root / f"Dataset{dataset_id:03d}_{HIPPOCAMPUS_NAME}"
    if (target / "dataset.json").is_file():
        existing = sorted(_case_files(target / "labelsTr"))
        if existing == sorted(images):
            return target
        raise ValueError(f"{target} exists with {len(existing)} cases, not the {len(images)} of {source}; remove it "
                         f"or choose another --workdir")
    other = find_dataset_folder(raw_root, str(dataset_id))
    if other is not None:
        raise ValueError(f"{other} exists in {raw_root}; nnU-Net needs one dataset per id: remove it or choose "
                         f"another --workdir")
    tmp = raw_root / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    for name in sorted(images):
        for src, dst in ((images[name], tmp / "imagesTr" / f"{name}_0000{FILE_ENDING}"),
                         (labels[name], tmp / "labelsTr" / f"{name}{FILE_ENDING}")):
            try:
                dst.symlink_to(src.resolve())
            except OSError:
                shutil.copy2(src, dst)
    generate_dataset_json(str(tmp), {0: "MRI"}, HIPPOCAMPUS_LABELS, len(images), FILE_ENDING,
                          dataset_name=target.name, reference="Medical Segmentation Decathlon, Task04 Hippocampus",
                          description=f"{len(images)} cases, converted by python -m benchmarks accuracy --convert-from",
                          license="CC-BY-SA 4.0", converted_by="nnunet-csse benchmarks/accuracy.py")
    tmp.rename(target)
    return target


def _preprocessed_cases(folder: Path, plans_file: Path, configuration: str) -> int:
    """Number of preprocessed cases of ``configuration`` (0 if its data folder is missing)."""
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"].get(configuration)
    if config is None:
        return 0
    identifier = config.get("data_identifier")
    if identifier is None and "inherits_from" in config:
        identifier = plans["configurations"][config["inherits_from"]].get("data_identifier")
    data = folder / str(identifier)
    return len(list(data.glob("*.pkl"))) if data.is_dir() else 0


class Benchmark:
    """One invocation: data, plans, runs, records, comparisons and the figure."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.workdir = settings.workdir.resolve()
        self.raw = self.workdir / "nnUNet_raw"
        self.preprocessed = self.workdir / "nnUNet_preprocessed"
        self.dataset_name: str | None = None
        self.plans_identifier = settings.plans
        self.plan_summary: dict[str, Any] = {}
        self.comparisons: list[dict] = []

    # ------------------------------------------------------------------------------------------- output
    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def budget_line(self) -> str:
        """The budget, stated in every output."""
        p, s = self.plan_summary, self.s
        width = "..".join(str(x) for x in (p["features"][0], p["features"][-1]))
        compiled = s.device == "cuda" and os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")
        return (f"budget: {s.budget.describe()} | patch {p['patch_size']} | batch {p['batch_size']} | network "
                f"features {width} ({len(p['features'])} stages) | device {s.device} | torch threads {s.threads} | "
                f"augmentation workers {s.da_workers} | torch.compile {'on' if compiled else 'off'} | plans "
                f"{self.plans_identifier} | {s.configuration}")

    def base_env(self) -> dict[str, str]:
        from nnunet_csse.environment import trainers_path

        # the benchmark's own folders only, whatever nnU-Net folders the calling environment names
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results_root(self.s.seeds[0])), nnUNet_extTrainer=trainers_path())
        env.setdefault("nnUNet_def_n_proc", str(self.s.preprocess_processes))
        return env

    def run_env(self, seed: int) -> dict[str, str]:
        """Environment of one nnUNetv2_train process: folders, budget, seed, threads, augmentation workers."""
        s = self.s
        env = self.base_env()
        env.update({"nnUNet_results": str(self.results_root(seed)), ENV_EPOCHS: str(s.budget.epochs),
                    ENV_ITERATIONS: str(s.budget.iterations), ENV_VAL_ITERATIONS: str(s.budget.val_iterations),
                    ENV_SEED: str(seed), ENV_SAVE_EVERY: str(s.save_every), ENV_THREADS: str(s.threads),
                    "nnUNet_n_proc_DA": str(s.da_workers), "PYTHONUNBUFFERED": "1"})
        if s.device == "cpu":
            env.update(OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads))
        return env

    def results_root(self, seed: int) -> Path:
        return self.workdir / self.s.budget.tag / f"seed{seed}" / "nnUNet_results"

    # ------------------------------------------------------------------------------------------- data
    def prepare_data(self) -> None:
        """Convert (``--convert-from``), plan and preprocess if needed; sets ``dataset_name``."""
        s = self.s
        folder = find_dataset_folder(self.preprocessed, s.dataset)
        ready = folder is not None and (folder / f"{s.plans}.json").is_file() and \
            _preprocessed_cases(folder, folder / f"{s.plans}.json", s.configuration) > 0
        raw = find_dataset_folder(self.raw, s.dataset)
        if s.convert_from is not None:
            dataset_id = _dataset_id(s.dataset)
            if dataset_id is None:
                raise ValueError(f"--convert-from needs a dataset id (-d 4), got '{s.dataset}'")
            self.raw.mkdir(parents=True, exist_ok=True)
            raw = convert_hippocampus(s.convert_from, self.raw, dataset_id)
            self.say(f"[data] {raw.name} in {self.raw} ({len(_case_files(raw / 'labelsTr'))} cases, from "
                     f"{s.convert_from})")
        if raw is not None and ready:
            expected = json.loads((raw / "dataset.json").read_text()).get("numTraining")
            done = _preprocessed_cases(folder, folder / f"{s.plans}.json", s.configuration)
            ready = expected is None or done == expected
        if ready:
            self.dataset_name = folder.name
            self.say(f"[data] reusing preprocessed {folder.name} ({s.plans}, {s.configuration})")
            return
        if s.report_only:
            raise DataMissing(f"--report-only: dataset {s.dataset} with plans {s.plans} is not preprocessed in "
                              f"{self.preprocessed}, so no run can have finished; run the benchmark without "
                              f"--report-only first")
        if raw is None:
            raise DataMissing(
                f"dataset {s.dataset} not found in {self.raw} or {self.preprocessed}: pass --convert-from DIR (a "
                f"folder with images/NAME{FILE_ENDING} and labels/NAME{FILE_ENDING}) or put it there in nnU-Net "
                f"format")
        if s.plans != "nnUNetPlans":
            raise DataMissing(f"plans {s.plans} not found for {raw.name} in {self.preprocessed}: create them with "
                              f"nnUNetv2_plan_and_preprocess (-pl ...) first")
        self.say(f"[data] {raw.name}: nnUNetv2_plan_and_preprocess -d {_dataset_id(raw.name)} -c {s.configuration} "
                 f"--verify_dataset_integrity (-np {s.preprocess_processes})")
        t0 = time.perf_counter()
        log = self.workdir / "logs" / "plan_and_preprocess.log"
        self._run_logged([_executable("nnUNetv2_plan_and_preprocess"), "-d", str(_dataset_id(raw.name)), "-c",
                          s.configuration, "--verify_dataset_integrity", "-np", str(s.preprocess_processes), "-npfp",
                          str(s.preprocess_processes)], self.base_env(), log)
        self.say(f"[data] preprocessed in {time.perf_counter() - t0:.0f} s (log: {log})")
        self.dataset_name = raw.name

    # ------------------------------------------------------------------------------------------- plans
    def prepare_plans(self) -> None:
        """The preset's plans (if any), one plans file per fraction < 1, and the plan summary for the budget line."""
        s = self.s
        folder = self.preprocessed / self.dataset_name
        if s.preset:
            from nnunet_csse.presets import apply_preset

            target = apply_preset(s.preset, self.dataset_name, [s.configuration], source_plans=s.plans,
                                  preprocessed_root=self.preprocessed)
            self.plans_identifier = target.stem
            self.say(f"[plans] preset {s.preset}: {target.name}")
        plans = json.loads((folder / f"{self.plans_identifier}.json").read_text())
        if s.configuration not in plans["configurations"]:
            raise ValueError(f"configuration {s.configuration} not in {self.plans_identifier}.json; available: "
                             f"{list(plans['configurations'])}")
        for fraction in s.fractions:
            if fraction < 1.0:
                self._write_fraction_plans(folder, plans, fraction)
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        config = PlansManager(plans).get_configuration(s.configuration)
        arch = config.network_arch_init_kwargs
        self.plan_summary = {"patch_size": list(config.patch_size), "batch_size": config.batch_size,
                             "features": list(arch["features_per_stage"]), "network": config.network_arch_class_name,
                             "spacing": list(config.spacing)}

    def _write_fraction_plans(self, folder: Path, plans: dict, fraction: float) -> None:
        identifier = fraction_plans(self.plans_identifier, fraction)
        derived = json.loads(json.dumps(plans))
        derived["plans_name"] = identifier
        derived[FRACTION_MARKER] = {"source_plans": self.plans_identifier, "fraction": fraction,
                                    "configuration": self.s.configuration}
        config = derived["configurations"][self.s.configuration]
        config[FRACTION_KEY] = fraction
        config[FRACTION_SEED_KEY] = TRAINING_SUBSET_SEED
        target = folder / f"{identifier}.json"
        if target.exists():
            current = json.loads(target.read_text())
            if FRACTION_MARKER not in current:
                raise ValueError(f"{target} exists and was not written by this benchmark; refusing to overwrite it")
            if current == derived:
                return
        write_json_atomic(derived, target)
        self.say(f"[plans] fraction {fraction:g}: {target.name} ({FRACTION_KEY} {fraction:g}, subset seed "
                 f"{TRAINING_SUBSET_SEED})")

    # ------------------------------------------------------------------------------------------- runs
    def runs(self) -> list[Run]:
        """Seed, then fraction, then fold, then trainer: the runs of one pair finish next to each other."""
        s = self.s
        return [Run(t, f, fold, seed, fraction_plans(self.plans_identifier, f))
                for seed in s.seeds for f in s.fractions for fold in s.folds for t in s.trainers]

    def fold_dir(self, run: Run) -> Path:
        return (self.results_root(run.seed) / self.dataset_name /
                f"{run.trainer}__{run.plans}__{self.s.configuration}" / f"fold_{run.fold}")

    @property
    def out_dir(self) -> Path:
        s = self.s
        return s.out / f"{self.dataset_name}__{self.plans_identifier}__{s.configuration}__{s.budget.tag}"

    def record_path(self, run: Run) -> Path:
        return self.out_dir / "runs" / f"{run.run_id}.json"

    def per_case_path(self, run: Run) -> Path:
        return self.out_dir / "runs" / f"{run.run_id}{PER_CASE_SUFFIX}"

    def committed_record(self, run: Run) -> dict | None:
        """The record of ``run`` in the output folder, else None. A record without its per-case summary (written by
        an earlier version of this benchmark) counts as finished too; it is left out of the paired statistics."""
        path = self.record_path(run)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        b = record.get("budget", {})
        stated = (b.get("epochs"), b.get("iterations_per_epoch"), b.get("val_iterations_per_epoch"), record.get("seed"))
        expected = (self.s.budget.epochs, self.s.budget.iterations, self.s.budget.val_iterations, run.seed)
        if stated != expected:
            raise ValueError(f"{path} states budget and seed {stated}, not {expected}: move it out of {path.parent}")
        return record

    @staticmethod
    def finished(fold_dir: Path) -> bool:
        return (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file()

    def train_all(self) -> tuple[list[Run], list[Run], list[Run]]:
        """Train what is not finished (``--report-only``: nothing); returns the runs skipped because finished, the
        runs that failed and the runs left untrained."""
        runs = self.runs()
        skipped, failed, pending = [], [], []
        self.say(f"[runs] {len(runs)} runs: {len(self.s.trainers)} trainers x {len(self.s.fractions)} fractions x "
                 f"{len(self.s.folds)} folds x {len(self.s.seeds)} seeds")
        for i, run in enumerate(runs, 1):
            head = f"[run {i}/{len(runs)}] {run.describe()}"
            fold_dir = self.fold_dir(run)
            if self.finished(fold_dir):
                self.say(f"{head}: finished before, skipped (reusing {self._relative(fold_dir)})")
                skipped.append(run)
            elif self.committed_record(run) is not None:
                self.say(f"{head}: recorded before, skipped (reusing {self.record_path(run)}; no checkpoint in this "
                         f"work folder; delete the record to train it again)")
                skipped.append(run)
            elif self.s.report_only:
                self.say(f"{head}: not finished, left out (--report-only)")
                pending.append(run)
            elif not self.train(run, head):
                failed.append(run)
        return skipped, failed, pending

    def train(self, run: Run, head: str) -> bool:
        """One ``nnUNetv2_train`` session (resumed with ``--c`` from a checkpoint); True when it finished."""
        s = self.s
        fold_dir = self.fold_dir(run)
        resume = any((fold_dir / f"checkpoint_{k}.pth").is_file() for k in ("final", "latest"))
        cmd = [_executable("nnUNetv2_train"), self.dataset_name, s.configuration, str(run.fold), "-tr", run.trainer,
               "-p", run.plans, "-device", s.device, *(["--c"] if resume else [])]
        self.say(f"{head}: {'resuming' if resume else 'training'} ({s.budget.describe()}, {s.device})")
        log = self.workdir / "logs" / s.budget.tag / f"seed{run.seed}" / f"{run.run_id}.log"
        started = time.time()
        t0 = time.perf_counter()
        returncode = None  # stays None when interrupted (Ctrl-C): the session still counts for the wall time
        try:
            returncode = self._run_logged(cmd, self.run_env(run.seed), log, epochs=s.budget.epochs, check=False)
        finally:
            wall = time.perf_counter() - t0
            if fold_dir.is_dir():
                self._append_session(fold_dir, {
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "wall_s": round(wall, 2),
                    "resumed": resume, "returncode": returncode, "device": s.device, "torch_threads": s.threads,
                    "augmentation_workers": s.da_workers})
        if returncode != 0 or not self.finished(fold_dir):
            self.say(f"{head}: FAILED after {wall:.0f} s (exit code {returncode}); last lines of {log}:")
            self.say("\n".join("    " + line for line in log.read_text().splitlines()[-25:]))
            return False
        self.say(f"{head}: done in {wall:.1f} s")
        return True

    @staticmethod
    def _append_session(fold_dir: Path, session: dict) -> None:
        path = fold_dir / SESSIONS_FILE
        sessions = json.loads(path.read_text()) if path.is_file() else []
        sessions.append(session)
        path.write_text(json.dumps(sessions, indent=1))

    def _run_logged(self, cmd: list[str], env: dict[str, str], log: Path, epochs: int | None = None,
                    check: bool = True) -> int:
        """Run ``cmd`` with its output appended to ``log``; with ``epochs``, print one line per finished epoch."""
        log.parent.mkdir(parents=True, exist_ok=True)
        epoch: dict[str, str] = {}
        with open(log, "a") as handle, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                        stderr=subprocess.STDOUT, text=True) as proc:
            handle.write(f"$ {' '.join(cmd)}\n")
            for line in proc.stdout:
                handle.write(line)
                if epochs is None:
                    continue
                text = re.sub(r"np\.float\d+\(([^)]*)\)", r"\1", line.strip())
                if m := re.search(r": Epoch (\d+)$", text):
                    epoch = {"epoch": m.group(1)}
                elif m := re.search(r": (train_loss|val_loss|Pseudo dice|Epoch time:) (.*)$", text):
                    epoch[m.group(1)] = m.group(2)
                    if m.group(1) == "Epoch time:" and "epoch" in epoch:
                        self.say(f"    epoch {int(epoch['epoch']) + 1}/{epochs}: train_loss {epoch.get('train_loss')}"
                                 f"  val_loss {epoch.get('val_loss')}  pseudo Dice {epoch.get('Pseudo dice')}  "
                                 f"({epoch['Epoch time:']})")
            proc.wait()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")
        return proc.returncode

    def _relative(self, path: Path) -> str:
        """A path inside the work folder, relative to it (committed outputs name no machine path)."""
        try:
            return str(path.resolve().relative_to(self.workdir))
        except ValueError:
            return path.name

    # ------------------------------------------------------------------------------------------- records
    def record(self, run: Run, reused: bool) -> dict[str, Any]:
        """The JSON record of a finished run (see the module docstring)."""
        import torch

        fold_dir = self.fold_dir(run)
        mean_dice, case_dice = read_evaluator_summary(fold_dir / "validation" / "summary.json")
        dataset_json = json.loads((fold_dir.parent / "dataset.json").read_text())
        names = {str(v): k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
        checkpoint = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        logging = checkpoint["logging"]
        sessions_file = fold_dir / SESSIONS_FILE
        sessions = json.loads(sessions_file.read_text()) if sessions_file.is_file() else []
        logs = "".join(f.read_text() for f in sorted(fold_dir.glob("training_log_*.txt")))
        split = re.findall(r"This split has (\d+) training and (\d+) validation cases", logs)
        subset = re.findall(rf"{SUBSET_LOG_PREFIX} \S+: training on (\d+) of (\d+) training cases.*training cases: "
                            rf"(.*)$", logs, flags=re.M)
        budget_logged = re.findall(rf"{BUDGET_LOG_PREFIX} (\d+) epochs x (\d+) iterations per epoch, (\d+) validation "
                                   rf"iterations per epoch, seed (\d+)", logs)
        train_cases = int(subset[-1][0]) if subset else (int(split[-1][0]) if split else None)
        dice = {names.get(k, k): _finite(v) for k, v in mean_dice.items() if k != FOREGROUND_MEAN}
        classes = [names.get(str(k), str(k)) for k in sorted(int(v) for v in names if v != "0")]
        per_class = [[_finite(x) for x in epoch] for epoch in logging["dice_per_class_or_region"]]
        curves = {
            "epoch": list(range(len(logging["train_losses"]))),
            "train_loss": [_finite(x) for x in logging["train_losses"]],
            "val_loss": [_finite(x) for x in logging["val_losses"]],
            "pseudo_dice": {c: [e[i] if i < len(e) else None for e in per_class] for i, c in enumerate(classes)},
            "mean_pseudo_dice": [_finite(x) for x in logging["mean_fg_dice"]],
            "ema_pseudo_dice": [_finite(x) for x in logging["ema_fg_dice"]],
            "learning_rate": [_finite(x) for x in logging["lrs"]],
            "epoch_time_s": [_finite(b - a) for a, b in zip(logging["epoch_start_timestamps"],
                                                            logging["epoch_end_timestamps"])],
        }
        for key in sorted(k for k in logging if k.startswith("pdcr_")):
            curves[key] = [_finite(x) for x in logging[key]]
        devices = sorted({x["device"] for x in sessions}) or [None]
        warnings = []
        expected = (self.s.budget.epochs, self.s.budget.iterations, self.s.budget.val_iterations, run.seed)
        if budget_logged and tuple(int(x) for x in budget_logged[-1]) != expected:
            warnings.append(f"the training log states another budget/seed: {budget_logged[-1]}")
        if len(curves["epoch"]) != self.s.budget.epochs:
            warnings.append(f"{len(curves['epoch'])} epochs logged, budget {self.s.budget.epochs}")
        return {
            "trainer": run.trainer, "fraction": run.fraction, "fold": run.fold, "seed": run.seed,
            "dataset": self.dataset_name, "configuration": self.s.configuration, "plans": run.plans,
            "budget": {"epochs": self.s.budget.epochs, "iterations_per_epoch": self.s.budget.iterations,
                       "val_iterations_per_epoch": self.s.budget.val_iterations, **self.plan_summary,
                       "device": devices[-1] if len(devices) == 1 else devices,
                       "torch_threads": sessions[-1]["torch_threads"] if sessions else None,
                       "augmentation_workers": sessions[-1]["augmentation_workers"] if sessions else None},
            "wall_s": round(sum(x["wall_s"] for x in sessions), 2) if sessions else None,
            "sessions": sessions, "reused_in_this_invocation": reused,
            "train_cases": train_cases, "train_cases_full_split": int(split[-1][0]) if split else None,
            "val_cases": int(split[-1][1]) if split else None,
            "training_subset": subset[-1][2].strip().split(", ") if subset else None,
            "subset_seed": TRAINING_SUBSET_SEED if run.fraction < 1 else None,
            "validation": {"dice": dice, "foreground_mean_dice": _finite(mean_dice[FOREGROUND_MEAN]),
                           "cases": len(case_dice)},
            "final_ema_pseudo_dice": curves["ema_pseudo_dice"][-1] if curves["ema_pseudo_dice"] else None,
            "curves": curves, "warnings": warnings, "fold_folder": self._relative(fold_dir),
        }

    # ------------------------------------------------------------------------------------------- reports
    def write_outputs(self, records: list[dict], failed: list[Run], skipped: list[Run],
                      pending: Sequence[Run] = ()) -> Path:
        out = self.out_dir
        (out / "runs").mkdir(parents=True, exist_ok=True)
        for r in records:
            run = self._run_of(r)
            self.record_path(run).write_text(json.dumps(r, indent=1))
            summary = self.fold_dir(run) / "validation" / "summary.json"
            if summary.is_file():  # else recorded before: its per-case copy is already there (or never was)
                shutil.copyfile(summary, self.per_case_path(run))
        classes = list(records[0]["validation"]["dice"]) if records else []
        self._write_table(records, classes, out)
        comparisons = self.comparisons = self._compare(records, out)
        figure = self._figure(records, out / "learning_curves.png") if records else None
        groups = training_groups([(r, out / "runs") for r in records], self.s.trainers, self.s.trainers[0])
        if groups:
            write_trainings_figure(groups, out / TRAININGS_FIGURE, f"{self.dataset_name} {self.s.configuration}")
            self.say(f"[trainings] one (fold, seed) run = one training; reference {display_name(self.s.trainers[0])}"
                     f"\n{trainings_text(groups)}")
        self._write_summary(records, classes, comparisons, failed, skipped, pending, figure, out, groups)
        return out

    @staticmethod
    def _run_of(record: dict) -> Run:
        return run_of(record)

    def _rows(self, records: list[dict], classes: list[str]) -> list[dict]:
        rows = []
        for r in records:
            row = {"trainer": r["trainer"], "fraction": f"{r['fraction']:g}", "fold": r["fold"], "seed": r["seed"],
                   "train_cases": r["train_cases"], "val_cases": r["val_cases"],
                   "budget": f"{r['budget']['epochs']}x{r['budget']['iterations_per_epoch']}",
                   "device": r["budget"]["device"], "wall_s": r["wall_s"]}
            for c in classes:
                row[f"dice_{c}"] = r["validation"]["dice"].get(c)
            row["dice_foreground_mean"] = r["validation"]["foreground_mean_dice"]
            row["final_ema_pseudo_dice"] = r["final_ema_pseudo_dice"]
            rows.append(row)
        return rows

    def _write_table(self, records: list[dict], classes: list[str], out: Path) -> None:
        rows = self._rows(records, classes)
        header = list(rows[0]) if rows else ["trainer", "fraction", "fold", "seed"]
        with open(out / "runs.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        lines = [f"# Runs: {self.dataset_name} {self.s.configuration}", "", self.budget_line(), "",
                 "Validation Dice: nnU-Net's summary.json of the fold (final checkpoint). Wall time: all "
                 "nnUNetv2_train sessions of the run (start-up, training, validation).", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(row[k]) for k in header) + " |" for row in rows]
        (out / "runs.md").write_text("\n".join(lines) + "\n")

    def _compare(self, records: list[dict], out: Path) -> list[dict]:
        """``nnunet-csse compare`` per seed and fraction, on the trainers with at least one finished run; and per
        seed and fraction f < 1 (when 1 is in the grid too) the limited-data question: every trainer at f against
        the reference trainer at 1. Computed from the per-case summaries in ``out/runs``, staged as a results
        folder (so runs of earlier invocations count, whatever this work folder still holds)."""
        comparisons = []
        reference = self.s.trainers[0]
        for seed in self.s.seeds:
            staged = self._stage_per_case([r for r in records if r["seed"] == seed], seed)
            for fraction in self.s.fractions:
                group = [r for r in records if r["seed"] == seed and r["fraction"] == fraction]
                comparisons.append(self._compare_group(
                    f"seed{seed}_{fraction_tag(fraction)}", seed, f"fraction {fraction:g}",
                    [(t, fraction) for t in self.s.trainers], group, out, staged))
            if 1.0 not in self.s.fractions:
                continue
            for fraction in (f for f in self.s.fractions if f < 1.0):
                group = [r for r in records if r["seed"] == seed and (
                    (r["fraction"] == 1.0 and r["trainer"] == reference) or r["fraction"] == fraction)]
                comparisons.append(self._compare_group(
                    f"seed{seed}_{fraction_tag(fraction)}_vs_{fraction_tag(1.0)}", seed,
                    f"fraction {fraction:g} against {reference} at fraction 1",
                    [(reference, 1.0), *((t, fraction) for t in self.s.trainers)], group, out, staged))
        return comparisons

    def _stage_per_case(self, records: list[dict], seed: int) -> Path:
        """A results folder for ``nnunet-csse compare`` holding, for every record with a per-case summary in the
        output folder, ``<dataset>/<trainer>__<plans>__<configuration>/fold_<f>/validation/summary.json`` (and the
        dataset.json for the label names); rebuilt from scratch at every invocation."""
        root = self.workdir / "compare_inputs" / self.s.budget.tag / f"seed{seed}"
        if root.exists():
            shutil.rmtree(root)
        dataset_json = self.preprocessed / self.dataset_name / "dataset.json"
        for r in records:
            source = self.per_case_path(self._run_of(r))
            if not source.is_file():
                continue
            folder = root / self.dataset_name / f"{r['trainer']}__{r['plans']}__{self.s.configuration}"
            (folder / f"fold_{r['fold']}" / "validation").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / f"fold_{r['fold']}" / "validation" / "summary.json")
            if dataset_json.is_file():
                shutil.copyfile(dataset_json, folder / "dataset.json")
        return root

    def _compare_group(self, name: str, seed: int, title: str, members: list[tuple[str, float]],
                       group: list[dict], out: Path, staged: Path) -> dict:
        """One ``nnunet-csse compare`` of ``members`` (trainer, fraction; the first is the reference) over the runs of
        ``group`` with a per-case summary, written to ``out/compare/<name>_folds<F-F>`` (the folds it rests on).
        Members without such a run are left out; records without per-case summary are listed, not compared.
        Members of one fraction are named by trainer (``-p`` gives the plans), mixed fractions as ``TRAINER__PLANS``.
        """
        per_case = [r for r in group if self.per_case_path(self._run_of(r)).is_file()]
        found = [(t, f) for t, f in members if any(r["trainer"] == t and r["fraction"] == f for r in per_case)]
        one_fraction = len({f for _, f in members}) == 1
        plans = fraction_plans(self.plans_identifier, members[0][1])
        names = [t if one_fraction else f"{t}__{fraction_plans(self.plans_identifier, f)}" for t, f in found]
        folds = sorted({r["fold"] for r in per_case if (r["trainer"], r["fraction"]) in found})
        folder = out / "compare" / (f"{name}_folds{'-'.join(map(str, folds))}" if folds else name)
        entry = {"seed": seed, "title": title, "folder": str(folder.relative_to(out)), "trainers": names,
                 "runs": len(per_case), "folds": {n: sorted(r["fold"] for r in per_case if (r["trainer"],
                                                                                            r["fraction"]) == m)
                                                  for n, m in zip(names, found)},
                 "without_per_case": describe_runs([self._run_of(r) for r in group if r not in per_case])}
        if not found or found[0] != members[0]:
            entry["output"] = "no finished run with per-case results" if not found else \
                f"the reference {members[0][0]} at fraction {members[0][1]:g} has no finished run with per-case results"
            return entry
        if len(found) == 1 and len(members) > 1:
            entry["output"] = f"only the reference {members[0][0]} at fraction {members[0][1]:g} has a finished run " \
                              f"with per-case results: nothing to pair it with"
            return entry
        folder.mkdir(parents=True, exist_ok=True)
        fold_args = [str(f) for f in folds]
        cmd = [_executable("nnunet-csse"), "compare", "-d", self.dataset_name, "-c", self.s.configuration,
               "-tr", *names, "-p", plans, "--folds", *fold_args, "--out", str(folder)]
        env = dict(self.base_env(), nnUNet_results=str(staged))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        text = (proc.stdout + proc.stderr).strip()
        text = text.replace(str(folder.resolve()), ".").replace(str(folder), ".")
        text = text.replace(str(self.workdir), "<workdir>")
        for written in folder.glob("*.md"):  # its warnings name run folders: keep the machine's paths out
            written.write_text(written.read_text().replace(str(self.workdir), "<workdir>"))
        entry["returncode"] = proc.returncode
        entry["output"] = text
        (folder / "compare.txt").write_text(
            f"$ nnunet-csse compare -d {self.dataset_name} -c {self.s.configuration} -tr {' '.join(names)} "
            f"-p {plans} --folds {' '.join(fold_args)} --out .\n"
            f"seed {seed}, {title}: {len(per_case)} runs (nnUNet_results: their per-case summaries from runs/)\n"
            f"{self.budget_line()}\n\n{text}\n")
        self.say(f"[compare] seed {seed}, {title} ({len(per_case)} runs):\n{text}")
        return entry

    def _write_summary(self, records: list[dict], classes: list[str], comparisons: list[dict], failed: list[Run],
                       skipped: list[Run], pending: Sequence[Run], figure: Path | None, out: Path,
                       groups: Sequence[Group] = ()) -> None:
        import torch

        from benchmarks.report import cpu_model

        s = self.s
        gpu = torch.cuda.get_device_name(0) if s.device == "cuda" and torch.cuda.is_available() else None
        lines = [f"# Accuracy benchmark: {self.dataset_name} {s.configuration}", "", self.budget_line(), "",
                 f"Machine: {gpu or cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, nnunetv2 "
                 f"{_version('nnunetv2')}.", "",
                 f"Trainers: {', '.join(s.trainers)}. Folds {', '.join(map(str, s.folds))}; seeds "
                 f"{', '.join(map(str, s.seeds))}; training fractions {', '.join(f'{f:g}' for f in s.fractions)} "
                 f"(subset seed {TRAINING_SUBSET_SEED}, the same subset for every trainer and seed; validation cases "
                 f"of each fold unchanged).", "",
                 f"{len(records)} of {len(self.runs())} runs finished ({len(skipped)} reused from earlier "
                 f"invocations); {len(failed)} failed" + (": " + describe_runs(failed) if failed
                                                          else "") + "." +
                 (f" Not finished yet (--report-only): {describe_runs(pending)}." if pending
                  else ""), ""]
        if groups:
            lines += [trainings_markdown(groups, display_name(s.trainers[0]), TRAININGS_FIGURE), ""]
        lines += ["Not bit-deterministic: the seed fixes the initial weights and the start of the data stream, but "
                  "augmentation workers are unseeded and cuDNN autotunes; repeat with --seeds to see the spread.", ""]
        lines += ["## Mean validation Dice over runs", "",
                  "Mean ± sample std over the runs (folds x seeds) of each trainer and fraction; n = runs. "
                  f"Paired: difference to {s.trainers[0]} over the (fold, seed) pairs both finished.", "",
                  "| fraction | trainer | n | " + " | ".join(classes + ["foreground mean"]) + " | paired diff (fg) |",
                  "|" + "---|" * (len(classes) + 5)]
        for fraction in s.fractions:
            reference = {(r["fold"], r["seed"]): r for r in records
                         if r["fraction"] == fraction and r["trainer"] == s.trainers[0]}
            for trainer in s.trainers:
                group = [r for r in records if r["fraction"] == fraction and r["trainer"] == trainer]
                if not group:
                    continue
                cells = [_mean_std([r["validation"]["dice"].get(c) for r in group]) for c in classes]
                cells.append(_mean_std([r["validation"]["foreground_mean_dice"] for r in group]))
                pairs = [r["validation"]["foreground_mean_dice"] - reference[(r["fold"], r["seed"])]["validation"][
                    "foreground_mean_dice"] for r in group if (r["fold"], r["seed"]) in reference
                    and r["validation"]["foreground_mean_dice"] is not None
                    and reference[(r["fold"], r["seed"])]["validation"]["foreground_mean_dice"] is not None]
                n_pairs = f"{len(pairs)} pair" + ("s" if len(pairs) != 1 else "")
                paired = "reference" if trainer == s.trainers[0] else (
                    f"{_mean_std(pairs, signed=True)} ({n_pairs})" if pairs else "-")
                lines.append(f"| {fraction:g} | {trainer} | {len(group)} | " + " | ".join(cells) + f" | {paired} |")
        lines += ["", "## nnunet-csse compare, per seed and fraction", "",
                  "Case level: the validation cases of the trainings (folds) of one seed, pooled; their CIs and p "
                  "describe these trainings, not the next one (the trainings table above does).", ""]
        for c in comparisons:
            folds = "; ".join(f"{t}: {len(f)} fold(s) {f}" for t, f in c["folds"].items()) or "none"
            compared = "returncode" in c
            lines += [f"### seed {c['seed']}, {c['title']} " + (f"(`{c['folder']}`)" if compared else "(not compared)"),
                      "", f"Rests on {c['runs']} run{'s' if c['runs'] != 1 else ''} ({folds})." if compared else
                      f"Runs with per-case results: {c['runs']} ({folds}); not enough to compare."]
            if c["without_per_case"]:
                lines.append(f"Left out, no per-case summary in runs/: {c['without_per_case']}.")
            lines += ["", "```", c.get("output", ""), "```", ""]
        written = {c["folder"] for c in comparisons if "returncode" in c}
        kept = sorted(p for p in (out / "compare").glob("*/compare.txt")
                      if str(p.parent.relative_to(out)) not in written) if (out / "compare").is_dir() else []
        if kept:  # written by invocations over other runs; never overwritten, so listed
            lines += ["### Other comparisons in compare/", ""]
            lines += [f"- `{p.parent.relative_to(out)}`: {p.read_text().splitlines()[1]}" for p in kept]
            lines.append("")
        lines += ["## Files", "", "- `runs/*.json`: one record per run (budget, wall time, Dice, learning curves)",
                  f"- `runs/*{PER_CASE_SUFFIX}`: nnU-Net's validation summary.json of each run (per-case Dice)",
                  "- `runs.csv`, `runs.md`: the per-run table",
                  "- `compare/seed*_frac*_folds*/`: nnunet-csse compare output, named by the folds it rests on"]
        if figure is not None:
            lines.append(f"- `{figure.name}`: learning curves of all runs")
        if groups:
            lines.append(f"- `{TRAININGS_FIGURE}`: foreground Dice of every training, mean and 95% CI per trainer")
        (out / "summary.md").write_text("\n".join(lines) + "\n")

    def _figure(self, records: list[dict], path: Path) -> Path:
        """Per fraction: mean pseudo Dice vs epoch (top) and the losses (bottom), one line per run, color per
        trainer."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator

        fractions = [f for f in self.s.fractions if any(r["fraction"] == f for r in records)]
        colors = {t: COLORS[i % len(COLORS)] for i, t in enumerate(self.s.trainers)}
        fig = Figure(figsize=(max(9.0, 5.5 * len(fractions) + 1.0), 9.0), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, len(fractions), squeeze=False, sharex="col")
        for col, fraction in enumerate(fractions):
            group = [r for r in records if r["fraction"] == fraction]
            dice_ax, loss_ax = axes[0][col], axes[1][col]
            for r in group:
                c = r["curves"]
                epochs = [e + 1 for e in c["epoch"]]
                few = len(epochs) <= 25
                kw = {"color": colors[r["trainer"]], "alpha": 0.8, "linewidth": 1.4, "markersize": 4}
                dice_ax.plot(epochs, _nan(c["mean_pseudo_dice"]), marker="o" if few else None, **kw)
                loss_ax.plot(epochs, _nan(c["train_loss"]), linestyle="-", marker="o" if few else None, **kw)
                loss_ax.plot(epochs, _nan(c["val_loss"]), linestyle="--", marker="x" if few else None, **kw)
            cases = sorted({r["train_cases"] for r in group if r["train_cases"] is not None})
            dice_ax.set_title(f"training fraction {fraction:g}: {len(group)} runs, "
                              f"{'/'.join(map(str, cases)) or '?'} training cases per fold", fontsize=11)
            dice_ax.set_ylabel("mean pseudo Dice (validation patches)")
            dice_ax.set_ylim(0, 1)
            loss_ax.set_ylabel("loss")
            loss_ax.set_xlabel("epoch")
            for ax in (dice_ax, loss_ax):
                ax.grid(alpha=0.3)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlim(0.5, self.s.budget.epochs + 0.5)
        handles = [Line2D([], [], color=colors[t], label=f"{t} (n = {sum(r['trainer'] == t for r in records)})")
                   for t in self.s.trainers]
        handles += [Line2D([], [], color="black", linestyle="-", marker="o",
                           label="train loss (+ weighted PDCR terms)"),
                    Line2D([], [], color="black", linestyle="--", marker="x", label="validation loss")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2 if len(fractions) == 1 else 4, fontsize=10,
                   frameon=False)
        budget = self.budget_line().rsplit(" | ", 1)[0]  # the configuration is in the first title line
        fig.suptitle(f"{self.dataset_name} {self.s.configuration}: one line per run (folds "
                     f"{', '.join(map(str, self.s.folds))}; seeds {', '.join(map(str, self.s.seeds))})\n"
                     + _wrap(budget, 40 + 55 * len(fractions)), fontsize=10)
        fig.savefig(path)
        return path

    # ------------------------------------------------------------------------------------------- all
    def run(self) -> int:
        s = self.s
        self.prepare_data()
        self.prepare_plans()
        header = self.budget_line()
        self.say(f"[benchmark] {self.dataset_name} {s.configuration}; trainers {', '.join(s.trainers)}; folds "
                 f"{s.folds}; seeds {s.seeds}; fractions {[f'{f:g}' for f in s.fractions]}\n[benchmark] {header}\n"
                 f"[benchmark] work folder {self.workdir}")
        t0 = time.perf_counter()
        skipped, failed, pending = self.train_all()
        records = []
        for run in self.runs():
            if self.finished(self.fold_dir(run)):
                records.append(self.record(run, run in skipped))
            elif (committed := self.committed_record(run)) is not None:
                records.append(dict(committed, reused_in_this_invocation=True))
        out = self.write_outputs(records, failed, skipped, pending)
        trained = len(self.runs()) - len(skipped) - len(failed) - len(pending)
        compare_failed = [c for c in self.comparisons if c.get("returncode", 0) != 0]
        self.say(f"[benchmark] {trained} runs trained, {len(skipped)} reused, {len(failed)} failed in "
                 f"{time.perf_counter() - t0:.0f} s" + (f"; {len(compare_failed)} comparison(s) failed" if
                                                         compare_failed else "") +
                 f"\n[benchmark] {header}\n[benchmark] wrote {out}")
        return 1 if failed or compare_failed else 0


# ----------------------------------------------------------------------------------------------- trainings
TRAININGS_FIGURE = "trainings.png"
GROUP_COLUMNS = ("budget", "fraction")


def display_name(trainer: str) -> str:
    """The alias of a benchmark trainer (``baseline``, ``CSSE``, ...), else the class name."""
    return next((alias for alias, name in TRAINER_ALIASES.items() if name == trainer), trainer)


def record_training(record: dict, runs_folder: Path) -> Training:
    """The training of one run record: its class Dice, and its per-case Dice where ``runs/<run>.validation_summary
    .json`` is next to it (ValueError when that summary does not match the record)."""
    key = f"fold {record['fold']} seed {record['seed']}"
    class_dice = {name: math.nan if v is None else float(v) for name, v in record["validation"]["dice"].items()}
    per_case = runs_folder / f"{run_of(record).run_id}{PER_CASE_SUFFIX}"
    if not per_case.is_file():
        return Training(key, class_dice)
    means, cases = read_evaluator_summary(per_case)
    classes = [k for k in means if k not in (FOREGROUND_MEAN, "0")]
    names = dict(zip(classes, class_dice)) if len(classes) == len(class_dice) else None
    training = Training.from_cases(key, cases, classes, names)
    if not math.isclose(training.foreground, Training(key, class_dice).foreground, abs_tol=1e-9, rel_tol=0):
        raise ValueError(f"{per_case} gives foreground Dice {training.foreground:.6f}, its record "
                         f"{Training(key, class_dice).foreground:.6f}: the two files belong to different runs; delete "
                         f"both to train the run again")
    return training


def _budget_label(record: dict) -> str:
    return f"{record['budget']['epochs']}x{record['budget']['iterations_per_epoch']}"


def training_groups(records: Sequence[tuple[dict, Path]], trainers: Sequence[str] | None,
                    reference: str) -> list[Group]:
    """Per (budget, fraction) the training-level statistics (:mod:`nnunet_csse.tools.trainings`) of every trainer
    with a run there, paired with ``reference`` by fold and seed. ``records``: (record, its runs/ folder).
    ``trainers``: their order (default: the aliases' order, then the others sorted)."""
    by_group: dict[tuple[str, float], dict[str, list[Training]]] = {}
    seen: dict[tuple, Path] = {}
    for record, runs_folder in records:
        group = (_budget_label(record), record["fraction"])
        where = (*group, record["trainer"], record["fold"], record["seed"])
        if where in seen:
            raise ValueError(f"{display_name(record['trainer'])}, budget {group[0]}, fraction {group[1]:g}, fold "
                             f"{record['fold']}, seed {record['seed']} is recorded in {seen[where]} and in "
                             f"{runs_folder}: give each budget folder once")
        seen[where] = runs_folder
        by_group.setdefault(group, {}).setdefault(record["trainer"], []).append(record_training(record, runs_folder))
    known = list(trainers) if trainers is not None else list(TRAINER_ALIASES.values())
    budgets = list(dict.fromkeys(b for b, _ in by_group))
    groups = []
    for budget, fraction in sorted(by_group, key=lambda g: (budgets.index(g[0]), -g[1])):
        found = by_group[budget, fraction]
        order = sorted(found, key=lambda t: (known.index(t) if t in known else len(known), t))
        named = {display_name(t): sorted(found[t], key=lambda x: x.key) for t in order}
        groups.append(((budget, f"{fraction:g}"), summarize_trainings(named, display_name(reference))))
    return groups


def _per_case_coverage(groups: Sequence[Group]) -> str:
    trainings = [t for _, summaries in groups for s in summaries for t in s.trainings]
    known = sum(t.cases is not None for t in trainings)
    return (f"Per-case Dice (`runs/*{PER_CASE_SUFFIX}`, resampled in the CIs) for {known} of {len(trainings)} "
            f"trainings.")


def trainings_text(groups: Sequence[Group]) -> str:
    """The training-level table, each training's Dice and the method as aligned text."""
    return "\n\n".join([text_table(table_rows(groups, GROUP_COLUMNS)),
                        text_table(per_training_rows(groups, GROUP_COLUMNS)),
                        f"{method_note('one (fold, seed) run')} {_per_case_coverage(groups)}"])


def trainings_markdown(groups: Sequence[Group], reference: str, figure: str | None = None) -> str:
    """The training-level section of ``summary.md`` and of ``python -m benchmarks trainings``."""
    lines = ["## Trainings: one (fold, seed) run is one training", "",
             f"Reference: {reference}; pairs: the same fold and seed in both trainers. Budget: epochs x iterations "
             f"per epoch; fraction: of each fold's training cases.", "",
             markdown_table(table_rows(groups, GROUP_COLUMNS)), "",
             f"{method_note('one (fold, seed) run')} {_per_case_coverage(groups)}", ""]
    if figure:
        lines += [f"![foreground Dice per training]({figure})", ""]
    lines += ["Each training's foreground Dice:", "", markdown_table(per_training_rows(groups, GROUP_COLUMNS))]
    return "\n".join(lines)


def write_trainings_figure(groups: Sequence[Group], path: Path, title: str) -> Path:
    """``trainings_figure`` of ``groups`` (one panel per budget and fraction) as PNG."""
    labelled = [(f"{budget}, fraction {fraction}", summaries) for (budget, fraction), summaries in groups]
    trainings_figure(labelled, f"{title}: foreground Dice per training (one dot = one (fold, seed) run)").savefig(path)
    return path


def read_budget_folder(folder: Path) -> list[tuple[dict, Path]]:
    """The run records ``folder/runs/*.json`` of an accuracy output folder, each with its runs/ folder."""
    runs = folder / "runs"
    paths = sorted(p for p in runs.glob("*.json") if not p.name.endswith(PER_CASE_SUFFIX)) if runs.is_dir() else []
    if not paths:
        raise ValueError(f"{folder} has no runs/*.json records: give a folder written by python -m benchmarks "
                         f"accuracy (benchmarks/results/accuracy/<Dataset>__<plans>__<config>__<budget>)")
    records = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
            run_of(record), _budget_label(record), dict(record["validation"]["dice"])  # KeyError: what is missing
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a run record of python -m benchmarks accuracy ({type(e).__name__}: "
                             f"{e}); move it out of {runs}") from None
        records.append((record, runs))
    return records


def trainings_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks trainings FOLDER ... --out DIR``: the training-level table of committed records."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks trainings",
        description="Training-level statistics of finished accuracy-benchmark runs: per budget, fraction and trainer "
                    "the trainings, stalled trainings, mean foreground Dice and the paired difference to the "
                    "reference, from the runs/*.json records (and per-case summaries) of each budget folder.")
    p.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                   help="accuracy output folders, e.g. benchmarks/results/accuracy/<Dataset>__<plans>__<config>__"
                        "e20x50_val10")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for trainings.md and trainings.png "
                                                               "(default: %(default)s)")
    p.add_argument("--reference", default=DEFAULT_TRAINERS[0],
                   help="reference trainer, alias or class name (default: %(default)s)")
    p.add_argument("--trainers", nargs="+", metavar="TRAINER", help="only these trainers (aliases or class names)")
    p.add_argument("--folds", nargs="+", type=int, help="only runs of these folds (e.g. 0: one fold, so that the "
                                                        "trainings differ by their seed, i.e. their initial weights)")
    p.add_argument("--fractions", nargs="+", type=float, metavar="F", help="only runs at these training fractions")
    args = p.parse_args(argv)
    try:
        reference = TRAINER_ALIASES.get(args.reference, args.reference)
        records = [r for folder in args.folders for r in read_budget_folder(folder)]
        trainers = None if args.trainers is None else [TRAINER_ALIASES.get(t, t) for t in args.trainers]
        records = [(r, f) for r, f in records
                   if (args.folds is None or r["fold"] in args.folds)
                   and (args.fractions is None or any(abs(r["fraction"] - x) < 1e-9 for x in args.fractions))
                   and (trainers is None or r["trainer"] in trainers or r["trainer"] == reference)]
        if not records:
            raise ValueError("no run record matches --folds/--fractions/--trainers; drop a filter")
        if not any(r["trainer"] == reference for r, _ in records):
            present = sorted({display_name(r["trainer"]) for r, _ in records})
            raise ValueError(f"--reference {args.reference}: no run of it in {', '.join(map(str, args.folders))}; "
                             f"choose one of {', '.join(present)}")
        groups = training_groups(records, trainers, reference)
        args.out.mkdir(parents=True, exist_ok=True)
        first = records[0][0]
        title = f"{first.get('dataset', '?')} {first.get('configuration', '?')}"
        figure = write_trainings_figure(groups, args.out / TRAININGS_FIGURE, title)
        sources = "\n".join(f"- `{folder}`" for folder in args.folders)
        markdown = args.out / "trainings.md"
        markdown.write_text(f"# Trainings: {title}\n\nFrom the run records of\n\n{sources}\n\n"
                            f"{trainings_markdown(groups, display_name(reference), figure.name)}\n")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"one (fold, seed) run = one training; reference {display_name(reference)}\n{trainings_text(groups)}\n"
          f"wrote {markdown}\nwrote {figure}")
    return 0


# ----------------------------------------------------------------------------------------------- helpers
def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _mean_std(values: Sequence[float | None], signed: bool = False) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    mean = sum(v) / len(v)
    sign = "+" if signed else ""
    if len(v) == 1:
        return f"{mean:{sign}.4f}"
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return f"{mean:{sign}.4f} ± {std:.4f}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _wrap(text: str, width: int) -> str:
    parts, line = [], ""
    for piece in text.split(" | "):
        if line and len(line) + len(piece) + 3 > width:
            parts.append(line)
            line = piece
        else:
            line = f"{line} | {piece}" if line else piece
    return "\n".join([*parts, line])


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python -m benchmarks accuracy``; 0 when every run finished, 1 when one failed, 2 for bad input."""
    try:
        settings = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return Benchmark(settings).run()
    except (DataMissing, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
