"""``python -m benchmarks accuracy``: train trainers side by side with ``nnUNetv2_train``, then compare them.

A run is (trainer, fraction, fold, seed): a ``*_benchmark`` trainer on the budget and seed given here, on the fold's
full split or the limited split of ``nnunet-csse split`` (plans ``<plans>_frac<NN>``). Finished runs and the records
committed in ``--out`` are reused; ``python -m benchmarks trainings`` tabulates several invocations. See docs/.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import records
from benchmarks.records import TRAINER_ALIASES, Run, describe_runs, run_of
from nnunet_csse import schedules
from nnunet_csse.folders import FOREGROUND_MEAN, find_dataset_folder, read_evaluator_summary, write_json_atomic
from nnunet_csse.subsets import check_fraction, fraction_tag
from nnunet_csse.tools import StepFailed
from nnunet_csse.tools.commands import CommandFailed, run_logged
from nnunet_csse.tools.splits import full_split, make_limited_split, restore_full_split

SUBSET_SEED = 0  # of the limited splits: the same subset for every trainer and run seed
HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}
FILE_ENDING = ".nii.gz"
SESSIONS_FILE = "benchmark_sessions.json"  # per fold folder: the wall time of every nnUNetv2_train session
FRACTION_MARKER = "csse_benchmark_fraction"  # in derived plans: only our own files are ever replaced
say = functools.partial(print, flush=True)


def fraction_plans(plans: str, fraction: float) -> str:
    return plans if fraction == 1.0 else f"{plans}_{fraction_tag(fraction)}"


def check_fractions(values: Sequence[object]) -> list[float]:
    fractions = [check_fraction(v, "--fractions: each fraction") for v in values]
    if len({fraction_tag(f) for f in fractions}) != len(fractions):
        raise ValueError(f"--fractions: duplicate fractions in {list(values)}")
    return fractions


def resolve_trainers(names: Sequence[str]) -> list[str]:
    """Trainer class names for aliases (baseline, UAFS, PDCR, CSSE, CSSE_authors) or ``*_benchmark`` class names."""
    known, out = set(TRAINER_ALIASES.values()), []
    for name in names:
        trainer = TRAINER_ALIASES.get(name, name)
        if trainer not in known:
            raise ValueError(f"unknown trainer '{name}': choose from {', '.join(TRAINER_ALIASES)} or "
                             f"{', '.join(sorted(known))} (only these read the benchmark's budget and seed)")
        if trainer in out:
            raise ValueError(f"trainer '{name}' given twice")
        out.append(trainer)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, validated and completed (ValueError for invalid values; nothing is written)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="4", help="dataset id or DatasetXXX_Name (default 4: Hippocampus)")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="default 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    p.add_argument("--preset", default=None, help="plans preset (nnunet-csse plans list), e.g. half_width")
    p.add_argument("--trainers", nargs="+", default=["baseline", "CSSE"], metavar="TRAINER",
                   help=f"aliases {', '.join(TRAINER_ALIASES)} or their class names (default: baseline CSSE)")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="run seeds, one results root each (default 0)")
    p.add_argument("--fractions", nargs="+", default=["1.0"], metavar="F",
                   help="fractions of each fold's training cases, in (0, 1] (default 1.0)")
    p.add_argument("--epochs", type=int, default=20, help="default 20")
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (default 50)")
    p.add_argument("--val-iterations", type=int, default=10, help="validation iterations per epoch (default 10)")
    p.add_argument("--workdir", type=Path, default=Path("work_dirs") / "accuracy",
                   help="nnUNet_raw/preprocessed/results of the benchmark (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "accuracy",
                   help="results folder (default %(default)s)")
    p.add_argument("--convert-from", type=Path, default=None, metavar="DIR",
                   help="a Hippocampus copy with images/NAME.nii.gz and labels/NAME.nii.gz (or imagesTr/, labelsTr/)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per training (CPU default: all cores)")
    p.add_argument("--da-workers", type=int, default=None, help="nnUNet_n_proc_DA (CPU default 0; CUDA: nnU-Net's)")
    p.add_argument("--preprocess-processes", type=int, default=None, help="default: min(8, CPU cores)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N epochs (default: ~10 per run)")
    p.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs of the grid")
    args = p.parse_args(argv)
    for name in ("folds", "seeds"):
        values = getattr(args, name)
        if any(v < 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"--{name} must be distinct non-negative integers, got {values}")
    args.fractions, args.trainers = check_fractions(args.fractions), resolve_trainers(args.trainers)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    cores = os.cpu_count() or 1
    if args.threads is None:
        args.threads = cores if args.device == "cpu" else 1
    if args.da_workers is None:
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        args.da_workers = 0 if args.device == "cpu" else get_allowed_n_proc_DA()
    if args.save_every is None:
        args.save_every = max(1, min(50, math.ceil(args.epochs / 10)))
    for name in ("epochs", "iterations", "val_iterations", "threads", "da_workers", "save_every"):
        if (value := getattr(args, name)) < (minimum := int(name != "da_workers")):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.preset is not None:
        from nnunet_csse.presets import load_preset

        load_preset(args.preset)  # unknown preset: ValueError with the list
    args.dataset, args.preprocess_processes = str(args.dataset), args.preprocess_processes or max(1, min(8, cores))
    args.budget, args.tag = (args.epochs, args.iterations, args.val_iterations), \
        f"e{args.epochs}x{args.iterations}_val{args.val_iterations}"
    args.budget_text = f"{args.epochs} epochs x {args.iterations} iterations (+ {args.val_iterations} validation " \
                       f"iterations per epoch)"
    return args


def _dataset_id(dataset: str) -> int | None:
    match = re.fullmatch(r"(\d+)|Dataset(\d{3})_.+", dataset.strip())
    return int(match.group(1) or match.group(2)) if match else None


def _case_files(folder: Path) -> dict[str, Path]:
    """NAME -> file for ``NAME.nii.gz`` files (hidden files such as ``._NAME.nii.gz`` left out)."""
    return {f.name[: -len(FILE_ENDING)]: f for f in sorted(folder.iterdir())
            if f.name.endswith(FILE_ENDING) and not f.name.startswith(".")}


def convert_hippocampus(source: Path, raw_root: Path, dataset_id: int) -> Path:
    """``raw_root/Dataset{id}_Hippocampus`` in nnU-Net's raw format, linking (else copying) ``source``'s cases;
    an equal conversion is reused."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    source = source.resolve()
    pairs = [(source / a, source / b) for a, b in (("images", "labels"), ("imagesTr", "labelsTr"))]
    images_dir, labels_dir = next(((a, b) for a, b in pairs if a.is_dir() and b.is_dir()), (None, None))
    if images_dir is None:
        raise ValueError(f"--convert-from {source}: expected images/ and labels/ (or imagesTr/ and labelsTr/) with "
                         f"NAME{FILE_ENDING} files")
    images, labels = _case_files(images_dir), _case_files(labels_dir)
    if not images:
        raise ValueError(f"--convert-from {source}: no *{FILE_ENDING} files in {images_dir}")
    if unlabelled := sorted(set(images) - set(labels)):
        raise ValueError(f"--convert-from {source}: {len(unlabelled)} image(s) without a label in {labels_dir}, "
                         f"e.g. {unlabelled[:3]}")
    target = raw_root / f"Dataset{dataset_id:03d}_Hippocampus"
    if (target / "dataset.json").is_file():
        if sorted(_case_files(target / "labelsTr")) == sorted(images):
            return target
        raise ValueError(f"{target} exists with other cases than {source}; remove it or choose another --workdir")
    if (other := find_dataset_folder(raw_root, str(dataset_id))) is not None:
        raise ValueError(f"{other} exists in {raw_root}; nnU-Net needs one dataset per id: remove it or choose "
                         f"another --workdir")
    tmp = raw_root / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in sorted(images):
        for src, dst in ((images[name], tmp / "imagesTr" / f"{name}_0000{FILE_ENDING}"),
                         (labels[name], tmp / "labelsTr" / f"{name}{FILE_ENDING}")):
            dst.parent.mkdir(parents=True, exist_ok=True)
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


def _preprocessed_cases(folder: Path, plans: str, configuration: str) -> int:
    """Number of preprocessed cases of ``configuration`` (0 if the plans or their data folder are missing)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not (folder / f"{plans}.json").is_file():
        return 0
    manager = PlansManager(str(folder / f"{plans}.json"))
    if configuration not in manager.available_configurations:
        return 0
    data = folder / manager.get_configuration(configuration).data_identifier
    return len(list(data.glob("*.pkl"))) if data.is_dir() else 0


def _run_finished(fold_dir: Path) -> bool:
    return (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file()


def _finite(value: Any) -> Any:
    """``value`` (a number or nested lists of them) with NaN and infinities as None, for JSON."""
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return float(value) if math.isfinite(float(value)) else None


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


class Benchmark:
    """One invocation: data, plans, runs, records, comparisons and the summary."""

    def __init__(self, settings: argparse.Namespace) -> None:
        self.s, self.workdir = settings, settings.workdir.resolve()
        self.raw, self.preprocessed = self.workdir / "nnUNet_raw", self.workdir / "nnUNet_preprocessed"
        self.dataset_name: str | None = None
        self.plans_identifier, self.plan_summary = settings.plans, {}
        self.split_fraction: float | None = None  # the fraction whose split splits_final.json holds

    def budget_line(self) -> str:
        p, s = self.plan_summary, self.s
        compiled = s.device == "cuda" and os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")
        return (f"budget: {s.budget_text} | patch {p['patch_size']} | batch {p['batch_size']} | network "
                f"features {p['features'][0]}..{p['features'][-1]} ({len(p['features'])} stages) | device {s.device} | "
                f"torch threads {s.threads} | augmentation workers {s.da_workers} | torch.compile "
                f"{'on' if compiled else 'off'} | plans {self.plans_identifier} | {s.configuration}")

    def env(self, seed: int | None = None) -> dict[str, str]:
        """The benchmark's own nnU-Net folders; with ``seed``, the environment of one nnUNetv2_train process."""
        from nnunet_csse.environment import trainers_path

        s = self.s
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results_root(s.seeds[0] if seed is None else seed)),
                   nnUNet_extTrainer=trainers_path())
        env.setdefault("nnUNet_def_n_proc", str(s.preprocess_processes))
        if seed is not None:
            env.update({schedules.ENV_EPOCHS: str(s.epochs), schedules.ENV_ITERATIONS: str(s.iterations),
                        schedules.ENV_VAL_ITERATIONS: str(s.val_iterations), schedules.ENV_SEED: str(seed),
                        schedules.ENV_SAVE_EVERY: str(s.save_every), schedules.ENV_THREADS: str(s.threads),
                        "nnUNet_n_proc_DA": str(s.da_workers), "PYTHONUNBUFFERED": "1"})
            if s.device == "cpu":
                env.update(OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads))
        return env

    def results_root(self, seed: int) -> Path:
        return self.workdir / self.s.tag / f"seed{seed}" / "nnUNet_results"

    def prepare_data(self) -> None:
        """Convert (``--convert-from``), plan and preprocess if needed; sets ``dataset_name``."""
        s = self.s
        folder = find_dataset_folder(self.preprocessed, s.dataset)
        done = _preprocessed_cases(folder, s.plans, s.configuration) if folder is not None else 0
        raw = find_dataset_folder(self.raw, s.dataset)
        if s.convert_from is not None:
            if (dataset_id := _dataset_id(s.dataset)) is None:
                raise ValueError(f"--convert-from needs a dataset id (-d 4), got '{s.dataset}'")
            self.raw.mkdir(parents=True, exist_ok=True)
            raw = convert_hippocampus(s.convert_from, self.raw, dataset_id)
            say(f"[data] {raw.name} in {self.raw} (from {s.convert_from})")
        expected = json.loads((raw / "dataset.json").read_text()).get("numTraining") if raw is not None else None
        if done and (expected is None or done == expected):
            self.dataset_name = folder.name
            return say(f"[data] reusing preprocessed {folder.name} ({s.plans}, {s.configuration})")
        if s.report_only:
            raise ValueError(f"--report-only: dataset {s.dataset} with plans {s.plans} is not preprocessed in "
                             f"{self.preprocessed}, so no run can have finished; run the benchmark without "
                             f"--report-only first")
        if raw is None:
            raise ValueError(f"dataset {s.dataset} not found in {self.raw} or {self.preprocessed}: pass "
                             f"--convert-from DIR (a folder with images/NAME{FILE_ENDING} and labels/NAME"
                             f"{FILE_ENDING}) or put it there in nnU-Net format")
        if s.plans != "nnUNetPlans":
            raise ValueError(f"plans {s.plans} not found for {raw.name} in {self.preprocessed}: create them with "
                             f"nnUNetv2_plan_and_preprocess (-pl ...) first")
        say(f"[data] {raw.name}: nnUNetv2_plan_and_preprocess -c {s.configuration} (-np {s.preprocess_processes})")
        t0, log, n = time.perf_counter(), self.workdir / "logs" / "plan_and_preprocess.log", str(s.preprocess_processes)
        run_logged(["nnUNetv2_plan_and_preprocess", "-d", str(_dataset_id(raw.name)), "-c", s.configuration,
                    "--verify_dataset_integrity", "-np", n, "-npfp", n], self.env(), log)
        say(f"[data] preprocessed in {time.perf_counter() - t0:.0f} s (log: {log})")
        self.dataset_name = raw.name

    def prepare_plans(self) -> None:
        """The preset's plans (if any), a plans copy per fraction < 1, and the plan summary of the budget line."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        s, folder = self.s, self.preprocessed / self.dataset_name
        if s.preset:
            from nnunet_csse.presets import apply_preset

            target = apply_preset(s.preset, self.dataset_name, [s.configuration], source_plans=s.plans,
                                  preprocessed_root=self.preprocessed)
            self.plans_identifier = target.stem
            say(f"[plans] preset {s.preset}: {target.name}")
        plans = json.loads((folder / f"{self.plans_identifier}.json").read_text())
        if s.configuration not in plans["configurations"]:
            raise ValueError(f"configuration {s.configuration} not in {self.plans_identifier}.json; available: "
                             f"{list(plans['configurations'])}")
        for fraction in (f for f in s.fractions if f < 1.0):
            identifier = fraction_plans(self.plans_identifier, fraction)
            derived = dict(plans, plans_name=identifier,
                           **{FRACTION_MARKER: {"source_plans": self.plans_identifier, "fraction": fraction}})
            target = folder / f"{identifier}.json"
            if (existing := _read_json(target, None)) is not None and FRACTION_MARKER not in existing:
                raise ValueError(f"{target} exists and was not written by this benchmark; refusing to overwrite it")
            if existing != derived:
                write_json_atomic(derived, target)
                say(f"[plans] fraction {fraction:g}: {target.name} (its own results folders)")
        config = PlansManager(plans).get_configuration(s.configuration)
        self.plan_summary = {"patch_size": list(config.patch_size), "batch_size": config.batch_size,
                             "features": list(config.network_arch_init_kwargs["features_per_stage"]),
                             "network": config.network_arch_class_name, "spacing": list(config.spacing)}

    def use_split(self, fraction: float) -> None:
        """Make ``splits_final.json`` the split of ``fraction``: installed by nnunet-csse split for f < 1, the full
        split restored for 1."""
        if fraction == self.split_fraction:
            return
        if fraction < 1.0:
            make_limited_split(self.dataset_name, fraction, SUBSET_SEED, install=True,
                               preprocessed_root=self.preprocessed)
            say(f"[split] training on the limited split of fraction {fraction:g} (subset seed {SUBSET_SEED})")
        else:
            restore_full_split(self.dataset_name, self.preprocessed, missing_ok=True)
        self.split_fraction = fraction

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
        return self.s.out / f"{self.dataset_name}__{self.plans_identifier}__{self.s.configuration}__{self.s.tag}"

    def run_file(self, run: Run, suffix: str = ".json") -> Path:
        """The record (``.json``) or per-case summary (``records.PER_CASE_SUFFIX``) of ``run`` in ``runs/``."""
        return self.out_dir / "runs" / f"{run.run_id}{suffix}"

    def committed_record(self, run: Run) -> dict | None:
        """The record of ``run`` in the output folder (with or without its per-case summary), else None."""
        if (record := _read_json(path := self.run_file(run), None)) is None:
            return None
        b = record.get("budget", {})
        stated = (b.get("epochs"), b.get("iterations_per_epoch"), b.get("val_iterations_per_epoch"), record.get("seed"))
        if stated != (expected := (*self.s.budget, run.seed)):
            raise ValueError(f"{path} states budget and seed {stated}, not {expected}: move it out of {path.parent}")
        return record

    def train_all(self) -> tuple[list[Run], list[Run], list[Run]]:
        """Train what is not finished (``--report-only``: nothing); (skipped as finished, failed, left untrained)."""
        runs, skipped, failed, pending = self.runs(), [], [], []
        say(f"[runs] {len(runs)} runs: {len(self.s.trainers)} trainers x {len(self.s.fractions)} fractions x "
            f"{len(self.s.folds)} folds x {len(self.s.seeds)} seeds")
        for i, run in enumerate(runs, 1):
            head = f"[run {i}/{len(runs)}] {run.describe()}"
            if _run_finished(self.fold_dir(run)):
                say(f"{head}: finished before, skipped (reusing {self._relative(self.fold_dir(run))})")
                skipped.append(run)
            elif self.committed_record(run) is not None:
                say(f"{head}: recorded before, skipped (reusing {self.run_file(run)}; delete the record to train it "
                    f"again)")
                skipped.append(run)
            elif self.s.report_only:
                say(f"{head}: not finished, left out (--report-only)")
                pending.append(run)
            elif not self.train(run, head):
                failed.append(run)
        return skipped, failed, pending

    def train(self, run: Run, head: str) -> bool:
        """One ``nnUNetv2_train`` session (resumed with ``--c`` from a checkpoint); True when the run finished."""
        s, fold_dir = self.s, self.fold_dir(run)
        self.use_split(run.fraction)
        resume = any((fold_dir / f"checkpoint_{k}.pth").is_file() for k in ("final", "latest"))
        log = self.workdir / "logs" / s.tag / f"seed{run.seed}" / f"{run.run_id}.log"
        say(f"{head}: {'resuming' if resume else 'training'} ({s.budget_text}, {s.device}; log {log})")
        started, t0, returncode, error = time.time(), time.perf_counter(), None, ""
        try:
            run_logged(["nnUNetv2_train", self.dataset_name, s.configuration, str(run.fold), "-tr", run.trainer,
                        "-p", run.plans, "-device", s.device, *(["--c"] if resume else [])], self.env(run.seed), log)
            returncode = 0
        except CommandFailed as e:
            returncode, error = e.returncode, str(e)
        finally:  # also when interrupted (Ctrl-C): the session counts for the wall time
            wall = time.perf_counter() - t0
            if fold_dir.is_dir():
                path = fold_dir / SESSIONS_FILE
                path.write_text(json.dumps([*_read_json(path, []), {
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "wall_s": round(wall, 2),
                    "resumed": resume, "returncode": returncode, "device": s.device, "torch_threads": s.threads,
                    "augmentation_workers": s.da_workers}], indent=1))
        if returncode != 0 or not _run_finished(fold_dir):
            say(f"{head}: FAILED after {wall:.0f} s: {error or f'no final checkpoint in {fold_dir}'}")
            return False
        say(f"{head}: done in {wall:.1f} s")
        return True

    def _relative(self, path: Path) -> str:
        """A path inside the work folder, relative to it (committed outputs name no machine path)."""
        try:
            return str(path.resolve().relative_to(self.workdir))
        except ValueError:
            return path.name

    def record(self, run: Run, reused: bool) -> dict[str, Any]:
        """The JSON record of a finished run: budget, wall time, split, validation Dice, learning curves."""
        import torch

        s, fold_dir = self.s, self.fold_dir(run)
        mean_dice, case_dice = read_evaluator_summary(fold_dir / "validation" / "summary.json")
        names = {str(v): k for k, v in json.loads((fold_dir.parent / "dataset.json").read_text())["labels"].items()
                 if isinstance(v, int)}
        logging = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
        sessions = _read_json(fold_dir / SESSIONS_FILE, [])
        schedule = _read_json(fold_dir / schedules.SCHEDULE_FILE, {})
        train, val = schedule.get("train_cases"), schedule.get("val_cases")
        full_train = full_split(self.preprocessed / self.dataset_name)[0][run.fold]["train"]
        curves = {key: _finite(values) for key, values in logging.items()}  # nnU-Net's per-epoch logging
        stated = tuple(schedule.get(k) for k in ("epochs", "iterations", "val_iterations", "seed"))
        warnings = [] if stated == (*s.budget, run.seed) else [
            f"{schedules.SCHEDULE_FILE} states another budget/seed: {stated}" if schedule else
            f"no {schedules.SCHEDULE_FILE} in the fold folder (trained by an earlier version): budget and split not "
            f"confirmed"]
        if len(curves["train_losses"]) != s.epochs:
            warnings.append(f"{len(curves['train_losses'])} epochs logged, budget {s.epochs}")
        devices = sorted({x["device"] for x in sessions}) or [None]
        limited = run.fraction < 1
        return {
            "trainer": run.trainer, "fraction": run.fraction, "fold": run.fold, "seed": run.seed,
            "dataset": self.dataset_name, "configuration": s.configuration, "plans": run.plans,
            "budget": {"epochs": s.epochs, "iterations_per_epoch": s.iterations, "val_iterations_per_epoch":
                       s.val_iterations, **self.plan_summary, "device": devices[0] if len(devices) == 1 else devices,
                       "torch_threads": schedule.get("torch_threads"),
                       "augmentation_workers": sessions[-1]["augmentation_workers"] if sessions else None},
            "wall_s": round(sum(x["wall_s"] for x in sessions), 2) if sessions else None,
            "sessions": sessions, "reused_in_this_invocation": reused,
            "train_cases": len(train) if train is not None else None, "train_cases_full_split": len(full_train),
            "val_cases": len(val) if val is not None else None, "training_subset": train if limited else None,
            "subset_seed": SUBSET_SEED if limited else None,
            "validation": {"dice": {names.get(k, k): _finite(v) for k, v in mean_dice.items() if k != FOREGROUND_MEAN},
                           "foreground_mean_dice": _finite(mean_dice[FOREGROUND_MEAN]), "cases": len(case_dice)},
            "final_ema_pseudo_dice": curves["ema_fg_dice"][-1] if curves["ema_fg_dice"] else None,
            "curves": curves, "warnings": warnings, "fold_folder": self._relative(fold_dir)}

    def compare(self, finished: list[dict], out: Path) -> list[dict]:
        """``nnunet-csse compare`` on the per-case summaries in ``runs/``, per seed: the trainers at each fraction
        and, for f < 1, every trainer at f against the first trainer at full data."""
        entries, reference, s = [], self.s.trainers[0], self.s
        for seed in s.seeds:
            of_seed = [r for r in finished if r["seed"] == seed]
            staged = self.workdir / "compare_inputs" / s.tag / f"seed{seed}"  # nnU-Net's results layout
            shutil.rmtree(staged, ignore_errors=True)
            for r in of_seed:
                if (source := self.run_file(run_of(r), records.PER_CASE_SUFFIX)).is_file():
                    folder = staged / self.dataset_name / f"{r['trainer']}__{r['plans']}__{s.configuration}"
                    (folder / f"fold_{r['fold']}" / "validation").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, folder / f"fold_{r['fold']}" / "validation" / "summary.json")
                    shutil.copyfile(self.preprocessed / self.dataset_name / "dataset.json", folder / "dataset.json")
            for fraction in s.fractions:
                tag = f"seed{seed}_{fraction_tag(fraction)}"
                groups = [(tag, f"fraction {fraction:g}", [(t, fraction) for t in s.trainers])]
                if fraction < 1.0 and 1.0 in s.fractions:
                    groups.append((f"{tag}_vs_{fraction_tag(1.0)}", f"fraction {fraction:g} against {reference} at "
                                   f"fraction 1", [(reference, 1.0), *((t, fraction) for t in s.trainers)]))
                for name, title, members in groups:
                    group = [r for r in of_seed if (r["trainer"], r["fraction"]) in members]
                    entries.append(self._compare_group(name, seed, title, members, group, out, staged))
        return entries

    def _compare_group(self, name: str, seed: int, title: str, members: list[tuple[str, float]],
                       group: list[dict], out: Path, staged: Path) -> dict:
        """One comparison of ``members`` (trainer, fraction; the first is the reference) over the runs of ``group``
        with a per-case summary; members without one are left out, a missing reference skips it."""
        from nnunet_csse.tools.compare import compare_trainers

        per_case = [r for r in group if self.run_file(run_of(r), records.PER_CASE_SUFFIX).is_file()]
        found = [m for m in members if any((r["trainer"], r["fraction"]) == m for r in per_case)]
        one_fraction = len({f for _, f in members}) == 1  # named by trainer (-p gives the plans), else TRAINER__PLANS
        names = [t if one_fraction else f"{t}__{fraction_plans(self.plans_identifier, f)}" for t, f in found]
        folds = sorted({r["fold"] for r in per_case if (r["trainer"], r["fraction"]) in found})
        folder = out / "compare" / (f"{name}_folds{'-'.join(map(str, folds))}" if folds else name)
        entry = {"seed": seed, "title": title, "folder": str(folder.relative_to(out)), "runs": len(per_case),
                 "folds": {n: sorted(r["fold"] for r in per_case if (r["trainer"], r["fraction"]) == m)
                           for n, m in zip(names, found)},
                 "without_per_case": describe_runs([run_of(r) for r in group if r not in per_case])}
        reference = f"the reference {members[0][0]} at fraction {members[0][1]:g}"
        if not found or found[0] != members[0] or len(found) == 1 < len(members):
            entry["output"] = "no finished run with per-case results" if not found else \
                f"{reference} has no finished run with per-case results" if found[0] != members[0] else \
                f"only {reference} has a finished run with per-case results: nothing to pair it with"
            return entry
        plans, hide = fraction_plans(self.plans_identifier, members[0][1]), str(self.workdir)
        try:
            comparison = compare_trainers(self.dataset_name, self.s.configuration, names, plans=plans, folds=folds,
                                          out_dir=folder, results_root=staged)
        except ValueError as e:  # reported, the other comparisons still run
            entry.update(output=f"error: {e}".replace(hide, "<workdir>"), failed=True)
            say(f"[compare] seed {seed}, {title}: {entry['output']}")
            return entry
        for written in folder.glob("*.md"):  # its warnings name run folders: keep the machine's paths out
            written.write_text(written.read_text().replace(hide, "<workdir>"))
        entry["output"] = "\n".join([*(f"warning: {w}" for w in comparison.warnings),
                                     comparison.table()]).replace(hide, "<workdir>")
        (folder / "compare.txt").write_text(
            f"$ nnunet-csse compare -d {self.dataset_name} -c {self.s.configuration} -tr {' '.join(names)} -p {plans} "
            f"--folds {' '.join(map(str, folds))} --out .\nseed {seed}, {title}: {len(per_case)} runs (nnUNet_results: "
            f"their per-case summaries from runs/)\n{self.budget_line()}\n\n{entry['output']}\n")
        say(f"[compare] seed {seed}, {title} ({len(per_case)} runs):\n{entry['output']}")
        entry["compared"] = True
        return entry

    def _write_summary(self, finished: list[dict], failed: list[Run], skipped: list[Run], pending: Sequence[Run],
                       out: Path, groups: Sequence, comparisons: Sequence[dict] = ()) -> None:
        from importlib import metadata

        import torch

        from benchmarks.report import cpu_model

        s = self.s
        gpu = torch.cuda.get_device_name(0) if s.device == "cuda" and torch.cuda.is_available() else None
        lines = [f"# Accuracy benchmark: {self.dataset_name} {s.configuration}", "", self.budget_line(), "",
                 f"Machine: {gpu or cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, nnunetv2 "
                 f"{metadata.version('nnunetv2')}.", "",
                 f"Trainers: {', '.join(s.trainers)}. Folds {', '.join(map(str, s.folds))}; seeds "
                 f"{', '.join(map(str, s.seeds))}; training fractions {', '.join(f'{f:g}' for f in s.fractions)} "
                 f"(limited splits of subset seed {SUBSET_SEED}: the same cases for every trainer and seed; the "
                 f"validation cases of each fold unchanged).", "",
                 f"{len(finished)} of {len(self.runs())} runs finished ({len(skipped)} reused from earlier "
                 f"invocations); {len(failed)} failed{': ' + describe_runs(failed) if failed else ''}."
                 + (f" Not finished yet (--report-only): {describe_runs(pending)}." if pending else ""), ""]
        if groups:
            lines += [records.trainings_markdown(groups, records.display_name(s.trainers[0]),
                                                 records.TRAININGS_FIGURE), ""]
        lines += ["Not bit-deterministic: the seed fixes the initial weights and the start of the data stream, but "
                  "augmentation workers are unseeded and cuDNN autotunes; repeat with --seeds to see the spread.", "",
                  "## nnunet-csse compare, per seed and fraction", "",
                  "Case level: the validation cases of the trainings (folds) of one seed, pooled; their CIs and p "
                  "describe these trainings, not the next one (the trainings table above does).", ""]
        for c in comparisons:
            folds = "; ".join(f"{t}: {len(f)} fold(s) {f}" for t, f in c["folds"].items()) or "none"
            lines += [f"### seed {c['seed']}, {c['title']} " + (f"(`{c['folder']}`)" if "compared" in c else
                                                                "(not compared)"), "",
                      (f"Rests on {c['runs']} run{'s' if c['runs'] != 1 else ''} ({folds})." if "compared" in c else
                       f"Runs with per-case results: {c['runs']} ({folds}); not enough to compare."),
                      *([f"Left out, no per-case summary in runs/: {c['without_per_case']}."]
                        if c["without_per_case"] else []), "", "```", c["output"], "```", ""]
        written = {c["folder"] for c in comparisons if "compared" in c}
        kept = sorted(p for p in out.glob("compare/*/compare.txt") if str(p.parent.relative_to(out)) not in written)
        if kept:  # written by invocations over other runs; never overwritten, so listed
            lines += ["### Other comparisons in compare/", "",
                      *(f"- `{p.parent.relative_to(out)}`: {p.read_text().splitlines()[1]}" for p in kept), ""]
        lines += ["## Files", "", "- `runs/*.json`: one record per run (budget, wall time, split, Dice, nnU-Net's "
                  "per-epoch logging)", f"- `runs/*{records.PER_CASE_SUFFIX}`: nnU-Net's validation summary.json of "
                  "each run (per-case Dice)",
                  "- `compare/seed*_frac*_folds*/`: nnunet-csse compare output, named by the folds it rests on"]
        if groups:
            lines.append(f"- `{records.TRAININGS_FIGURE}`: foreground Dice of every training, mean and 95% CI per "
                         f"trainer")
        (out / "summary.md").write_text("\n".join(lines) + "\n")

    def run(self) -> int:
        """Everything: 0 when every run finished and was compared, 1 when one failed."""
        s = self.s
        self.prepare_data()
        self.prepare_plans()
        say(f"[benchmark] {self.dataset_name} {s.configuration}; trainers {', '.join(s.trainers)}; folds {s.folds}; "
            f"seeds {s.seeds}; fractions {[f'{f:g}' for f in s.fractions]}\n[benchmark] {self.budget_line()}\n"
            f"[benchmark] work folder {self.workdir}")
        t0 = time.perf_counter()
        try:
            skipped, failed, pending = self.train_all()
        finally:
            if self.split_fraction is not None:  # the full split back, also after Ctrl-C
                restore_full_split(self.dataset_name, self.preprocessed, missing_ok=True)
        finished = []
        for run in self.runs():
            if _run_finished(self.fold_dir(run)):
                finished.append(self.record(run, run in skipped))
            elif (committed := self.committed_record(run)) is not None:
                finished.append(dict(committed, reused_in_this_invocation=True))
        out, reference = self.out_dir, records.display_name(s.trainers[0])
        (out / "runs").mkdir(parents=True, exist_ok=True)
        for r in finished:
            self.run_file(run_of(r)).write_text(json.dumps(r, indent=1))
            summary = self.fold_dir(run_of(r)) / "validation" / "summary.json"
            if summary.is_file():  # else recorded before: its per-case copy is already there (or never was)
                shutil.copyfile(summary, self.run_file(run_of(r), records.PER_CASE_SUFFIX))
        groups = records.training_groups([(r, out / "runs") for r in finished], s.trainers, s.trainers[0])
        if groups:
            records.write_trainings_figure(groups, out / records.TRAININGS_FIGURE,
                                           f"{self.dataset_name} {s.configuration}")
            say(f"[trainings] one (fold, seed) run = one training; reference {reference}\n"
                f"{records.trainings_text(groups)}")
        comparisons = self.compare(finished, out)
        self._write_summary(finished, failed, skipped, pending, out, groups, comparisons)
        trained = len(self.runs()) - len(skipped) - len(failed) - len(pending)
        compare_failed = sum("failed" in c for c in comparisons)
        say(f"[benchmark] {trained} runs trained, {len(skipped)} reused, {len(failed)} failed in "
            f"{time.perf_counter() - t0:.0f} s" + (f"; {compare_failed} comparison(s) failed" if compare_failed else "")
            + f"\n[benchmark] {self.budget_line()}\n[benchmark] wrote {out}")
        return 1 if failed or compare_failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks accuracy``: 0 when every run finished, 1 when a run or step failed, 2 for bad input."""
    try:
        return Benchmark(parse_args(argv)).run()
    except (ValueError, StepFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
