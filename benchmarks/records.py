"""The accuracy benchmark's run records (``runs/<run>.json``, ``runs/<run>.validation_summary.json``) and their
training-level table (one (fold, seed) run is one training), also ``python -m benchmarks trainings``. See docs/."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from nnunet_csse.folders import FOREGROUND_MEAN, read_evaluator_summary
from nnunet_csse.tools import trainings as T

TRAINER_ALIASES = {alias: f"nnUNetTrainer{'' if alias == 'baseline' else alias}_benchmark"
                   for alias in ("baseline", "UAFS", "PDCR", "CSSE", "CSSE_authors")}
REFERENCE = "baseline"
PER_CASE_SUFFIX = ".validation_summary.json"  # next to a run's record: its fold's validation/summary.json
TRAININGS_FIGURE = "trainings.png"
GROUP_COLUMNS = ("budget", "fraction")


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
    return Run(record["trainer"], record["fraction"], record["fold"], record["seed"], record["plans"])


def describe_runs(runs: Sequence[Run]) -> str:
    """``runs`` grouped by trainer, fraction and seed (first-seen order), the folds listed once per group."""
    groups: dict[tuple[str, float, int], list[int]] = {}
    for run in runs:
        groups.setdefault((run.trainer, run.fraction, run.seed), []).append(run.fold)
    return "; ".join(f"{trainer}, fraction {fraction:g}, seed {seed}, fold{'s' if len(folds) > 1 else ''} "
                     f"{', '.join(map(str, folds))}" for (trainer, fraction, seed), folds in groups.items())


def display_name(trainer: str) -> str:
    """The alias of a benchmark trainer (``baseline``, ``CSSE``, ...), else the class name."""
    return next((alias for alias, name in TRAINER_ALIASES.items() if name == trainer), trainer)


def record_training(record: dict, runs_folder: Path) -> T.Training:
    """The training of one run record, with the per-case Dice of the ``PER_CASE_SUFFIX`` file next to it if any."""
    key = f"fold {record['fold']} seed {record['seed']}"
    from_record = T.Training(key, {name: math.nan if v is None else float(v)
                                   for name, v in record["validation"]["dice"].items()})
    per_case = runs_folder / f"{run_of(record).run_id}{PER_CASE_SUFFIX}"
    if not per_case.is_file():
        return from_record
    means, cases = read_evaluator_summary(per_case)
    classes = [k for k in means if k not in (FOREGROUND_MEAN, "0")]
    names = dict(zip(classes, from_record.class_dice)) if len(classes) == len(from_record.class_dice) else None
    training = T.Training.from_cases(key, cases, classes, names)
    if not math.isclose(training.foreground, from_record.foreground, abs_tol=1e-9, rel_tol=0):
        raise ValueError(f"{per_case} gives foreground Dice {training.foreground:.6f}, its record "
                         f"{from_record.foreground:.6f}: the two files belong to different runs; delete both to train "
                         f"the run again")
    return training


def _budget_label(record: dict) -> str:
    return f"{record['budget']['epochs']}x{record['budget']['iterations_per_epoch']}"


def training_groups(records: Sequence[tuple[dict, Path]], trainers: Sequence[str] | None,
                    reference: str) -> list[T.Group]:
    """Per (budget, fraction) the statistics of every trainer there, paired with ``reference`` by fold and seed.
    ``records``: (record, its runs/ folder); ``trainers``: their order."""
    by_group: dict[tuple[str, float], dict[str, list[T.Training]]] = {}
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
        groups.append(((budget, f"{fraction:g}"), T.summarize_trainings(named, display_name(reference))))
    return groups


def _method(groups: Sequence[T.Group]) -> str:
    trainings = [t for _, summaries in groups for s in summaries for t in s.trainings]
    return (f"{T.method_note('one (fold, seed) run')} Per-case Dice (`runs/*{PER_CASE_SUFFIX}`, resampled in the "
            f"CIs) for {sum(t.cases is not None for t in trainings)} of {len(trainings)} trainings.")


def trainings_text(groups: Sequence[T.Group]) -> str:
    return "\n\n".join([T.render(T.table_rows(groups, GROUP_COLUMNS)),
                        T.render(T.per_training_rows(groups, GROUP_COLUMNS)), _method(groups)])


def trainings_markdown(groups: Sequence[T.Group], reference: str, figure: str | None = None) -> str:
    """The training-level section of ``summary.md`` and of ``python -m benchmarks trainings``."""
    return "\n".join(["## Trainings: one (fold, seed) run is one training", "",
                      f"Reference: {reference}; pairs: the same fold and seed in both trainers. Budget: epochs x "
                      f"iterations per epoch; fraction: of each fold's training cases.", "",
                      T.render(T.table_rows(groups, GROUP_COLUMNS), markdown=True), "", _method(groups), "",
                      *([f"![foreground Dice per training]({figure})", ""] if figure else []),
                      "Each training's foreground Dice:", "",
                      T.render(T.per_training_rows(groups, GROUP_COLUMNS), markdown=True)])


def write_trainings_figure(groups: Sequence[T.Group], path: Path, title: str) -> Path:
    labelled = [(f"{budget}, fraction {fraction}", summaries) for (budget, fraction), summaries in groups]
    title = f"{title}: foreground Dice per training (one dot = one (fold, seed) run)"
    T.trainings_figure(labelled, title).savefig(path)
    return path


def read_budget_folder(folder: Path) -> list[tuple[dict, Path]]:
    """(record, runs/ folder) of the records ``folder/runs/*.json`` of an accuracy output folder."""
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
    p = argparse.ArgumentParser(prog="python -m benchmarks trainings",
                                description="Training-level statistics of finished accuracy-benchmark runs, from the "
                                            "runs/*.json records (and per-case summaries) of each budget folder.")
    p.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                   help="accuracy output folders, e.g. benchmarks/results/accuracy/<Dataset>__<plans>__<config>__"
                        "e20x50_val10")
    p.add_argument("--out", type=Path, default=Path("."),
                   help="folder for trainings.md and trainings.png (default: %(default)s)")
    p.add_argument("--reference", default=REFERENCE, help="reference trainer (default: %(default)s)")
    p.add_argument("--trainers", nargs="+", metavar="TRAINER", help="only these trainers (aliases or class names)")
    p.add_argument("--folds", nargs="+", type=int, help="only runs of these folds")
    p.add_argument("--fractions", nargs="+", type=float, metavar="F", help="only runs at these training fractions")
    args = p.parse_args(argv)
    try:
        reference = TRAINER_ALIASES.get(args.reference, args.reference)
        trainers = None if args.trainers is None else [TRAINER_ALIASES.get(t, t) for t in args.trainers]
        records = [(r, f) for folder in args.folders for r, f in read_budget_folder(folder)
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
        title = f"{records[0][0].get('dataset', '?')} {records[0][0].get('configuration', '?')}"
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
