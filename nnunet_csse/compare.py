"""Compare finished nnU-Net trainings by their cross-validation Dice (``nnunet-csse compare``).

Reads what ``nnUNetv2_train`` writes at the end of training (or with ``--val``):

    <nnUNet_results>/<Dataset>/<trainer>__<plans>__<configuration>/fold_<f>/validation/summary.json

``summary.json`` is nnU-Net's ``compute_metrics_on_folder`` output: ``"mean"`` holds the mean metrics over the
validation cases per label or region (keys ``"1"``, ``"2"`` or ``"(1, 2)"``) and ``"foreground_mean"`` their
mean over all labels but background. For every trainer and class this module reports the mean and standard
deviation (sample std, ddof=1; empty for a single fold) of the per-fold Dice over the folds found; a class whose
Dice is NaN in a fold (absent from all of that fold's validation cases) does not count for that fold.

A trainer entry may be ``TRAINER`` (plans from ``-p``) or ``TRAINER__PLANS``, to compare runs that used
different plans identifiers (e.g. a limited-data run, see ``nnunet-csse split``). Nothing is trained.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_csse.splits import resolve_dataset_name, root_from_env

FOREGROUND = "foreground_mean"
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


@dataclass
class TrainerDice:
    """Per-fold Dice of one trainer: ``dice[class_key][fold]`` (NaN where the class was absent)."""

    name: str  # as given (TRAINER or TRAINER__PLANS)
    folder: Path  # <trainer>__<plans>__<configuration>
    folds: list[str]  # folds with a summary.json, in the order asked for
    missing: list[str]  # folds asked for without one
    dice: dict[str, dict[str, float]]
    label_names: dict[str, str] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        """Dice values of ``key`` over the folds found, NaN ones left out."""
        return [v for f in self.folds if (v := self.dice.get(key, {}).get(f)) is not None and not math.isnan(v)]

    def mean_std(self, key: str) -> tuple[float, float, int]:
        """(mean, sample std, n); NaN for what cannot be computed."""
        v = self.values(key)
        if not v:
            return math.nan, math.nan, 0
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
        return mean, std, len(v)


@dataclass
class Comparison:
    """Result of ``compare_trainers``."""

    dataset: str
    configuration: str
    folds: list[str]
    classes: list[str]  # summary keys in label order, then "foreground_mean"
    trainers: list[TrainerDice]
    warnings: list[str]
    csv_path: Path | None = None
    png_path: Path | None = None

    def rows(self) -> list[dict]:
        """One row per trainer and class: trainer, class, mean, std, n_folds and fold_<f> values."""
        rows = []
        for t in self.trainers:
            for key in self.classes:
                mean, std, n = t.mean_std(key)
                row = {"trainer": t.name, "class": key, "mean": mean, "std": std, "n_folds": n}
                for f in self.folds:
                    row[f"fold_{f}"] = t.dice.get(key, {}).get(f, math.nan)
                rows.append(row)
        return rows

    def table(self) -> str:
        """The text table printed by the CLI."""
        names = {}
        for t in self.trainers:
            for k, v in t.label_names.items():
                names.setdefault(k, v)
        labels = [f"{k} ({names[k]})" if k in names else k for k in self.classes]
        width = max(len(s) for s in labels + ["folds found"]) + 2
        cols = [max(len(t.name), 24) + 2 for t in self.trainers]
        lines = [f"{self.dataset} {self.configuration}: validation Dice, mean ± std over folds (n folds)",
                 "class".ljust(width) + "".join(t.name.ljust(c) for t, c in zip(self.trainers, cols))]
        for key, label in zip(self.classes, labels):
            cells = []
            for t, c in zip(self.trainers, cols):
                mean, std, n = t.mean_std(key)
                cell = "-" if n == 0 else f"{mean:.4f} ± {_fmt(std)} ({n})"
                cells.append(cell.ljust(c))
            if key == FOREGROUND:
                lines.append("-" * (width + sum(cols)))
            lines.append(label.ljust(width) + "".join(cells))
        cells = [(f"{len(t.folds)}/{len(self.folds)}: " + (",".join(t.folds))).ljust(c)
                 for t, c in zip(self.trainers, cols)]
        lines.append("folds found".ljust(width) + "".join(cells))
        return "\n".join(line.rstrip() for line in lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def _class_sort_key(key: str) -> tuple:
    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region

    try:
        value = key_to_label_or_region(key)
    except ValueError:
        return (2, key)
    return (0, value, ()) if isinstance(value, int) else (1, 0, value)


def _label_names(folder: Path) -> dict[str, str]:
    """summary key -> label name from the dataset.json nnU-Net copies into the results folder."""
    try:
        labels = json.loads((folder / "dataset.json").read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    names = {}
    for name, value in labels.items():
        if isinstance(value, int):
            names[str(value)] = name
        elif isinstance(value, list) and len(value) == 1:
            names[str(value[0])] = name
        elif isinstance(value, list):
            names[str(tuple(value))] = name
    return names


def _load_summary(path: Path) -> dict[str, float]:
    summary = json.loads(path.read_text())
    try:
        dice = {str(k): float(v["Dice"]) for k, v in summary["mean"].items()}
        dice[FOREGROUND] = float(summary["foreground_mean"]["Dice"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an nnU-Net summary.json (no Dice in 'mean'/'foreground_mean': {e})") from None
    return dice


def compare_trainers(
    dataset: str | int,
    configuration: str,
    trainers: Sequence[str],
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = DEFAULT_FOLDS,
    out_dir: str | Path | None = ".",
    results_root: str | Path | None = None,
) -> Comparison:
    """Collect the validation Dice of finished trainings and write ``compare_<Dataset>_<config>.csv/.png``.

    Args:
        dataset: dataset id or name.
        configuration: nnU-Net configuration (``3d_fullres``, ``2d``, ...).
        trainers: trainer class names, each optionally ``TRAINER__PLANS`` to override ``plans``.
        plans: plans identifier (``-p`` of ``nnUNetv2_train``).
        folds: folds to look for (ints or ``"all"``).
        out_dir: folder for the CSV and PNG; None writes nothing.
        results_root: default ``$nnUNet_results``.

    Missing folds are listed in ``warnings``. Raises ValueError when a trainer has no summary.json at all
    (the message names the expected path) or the dataset is unknown.
    """
    if not trainers:
        raise ValueError("give at least one trainer")
    root = root_from_env(results_root, "nnUNet_results")
    name = resolve_dataset_name(dataset, root, "nnUNet_results")
    fold_names = [str(f) for f in folds]
    if len(set(fold_names)) != len(fold_names):
        raise ValueError(f"duplicate folds in {fold_names}")
    warnings: list[str] = []
    results: list[TrainerDice] = []
    for entry in trainers:
        parts = entry.split("__")
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"trainer '{entry}': give TRAINER or TRAINER__PLANS")
        trainer, trainer_plans = parts[0], parts[1] if len(parts) == 2 else plans
        folder = root / name / f"{trainer}__{trainer_plans}__{configuration}"
        found, missing, dice = [], [], {}
        for f in fold_names:
            path = folder / f"fold_{f}" / "validation" / "summary.json"
            if path.is_file():
                for key, value in _load_summary(path).items():
                    dice.setdefault(key, {})[f] = value
                found.append(f)
            else:
                missing.append(f)
        if not found:
            expected = folder / f"fold_{fold_names[0]}" / "validation" / "summary.json"
            hint = "" if folder.is_dir() else f" (no folder {folder.name}; present: {_present(root / name)})"
            raise ValueError(f"no results for trainer '{entry}': expected {expected} (folds {','.join(fold_names)})"
                             f"{hint}. Train with nnUNetv2_train {name} {configuration} FOLD -tr {trainer} "
                             f"-p {trainer_plans}")
        if missing:
            warnings.append(f"{entry}: no validation/summary.json for fold(s) {','.join(missing)} in {folder} "
                            f"(unfinished training, or run nnUNetv2_train ... --val); using {len(found)} fold(s)")
        results.append(TrainerDice(entry, folder, found, missing, dice, _label_names(folder)))

    keys = {k for t in results for k in t.dice if k != FOREGROUND}
    classes = sorted(keys, key=_class_sort_key) + [FOREGROUND]
    comparison = Comparison(name, configuration, fold_names, classes, results, warnings)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"compare_{name}_{configuration}"
        comparison.csv_path = write_csv(comparison, out / f"{stem}.csv")
        comparison.png_path = write_png(comparison, out / f"{stem}.png")
    return comparison


def _present(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def write_csv(comparison: Comparison, path: str | Path) -> Path:
    """Rows: trainer, class, mean, std, n_folds, fold_<f>... (empty cells for NaN / missing)."""
    path = Path(path)
    header = ["trainer", "class", "mean", "std", "n_folds"] + [f"fold_{f}" for f in comparison.folds]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for row in comparison.rows():
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return path


def write_png(comparison: Comparison, path: str | Path) -> Path:
    """Grouped bar chart: one group per class, one bar per trainer, error bars = std over folds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    n_classes, n_trainers = len(comparison.classes), len(comparison.trainers)
    fig = Figure(figsize=(max(6.0, 1.0 + n_classes * (0.5 + 0.35 * n_trainers)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n_trainers
    for i, t in enumerate(comparison.trainers):
        stats = [t.mean_std(k) for k in comparison.classes]
        means = [0.0 if math.isnan(m) else m for m, _, _ in stats]
        stds = [0.0 if math.isnan(s) else s for _, s, _ in stats]
        xs = [c + (i - (n_trainers - 1) / 2) * width for c in range(n_classes)]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{t.name} ({len(t.folds)} folds)")
    names = {}
    for t in comparison.trainers:
        for k, v in t.label_names.items():
            names.setdefault(k, v)
    ax.set_xticks(range(n_classes))
    ax.set_xticklabels([("foreground\nmean" if k == FOREGROUND else names.get(k, k)) for k in comparison.classes])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("validation Dice (mean ± std over folds)")
    ax.set_title(f"{comparison.dataset} {comparison.configuration}")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------- CLI
EPILOG = """\
reads <nnUNet_results>/<Dataset>/<trainer>__<plans>__<config>/fold_<f>/validation/summary.json
(written by nnUNetv2_train after training or with --val). Missing folds are warned about; a trainer with no
fold at all is an error. A trainer may be given as TRAINER__PLANS to use other plans than -p.

example:
  nnunet-csse compare -d 4 -c 3d_fullres -tr nnUNetTrainer nnUNetTrainerCSSE --out results/
"""


def _fold(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got '{value}'")
    return value if value == "all" else str(int(value))


def _cmd_compare(args: argparse.Namespace) -> int:
    try:
        result = compare_trainers(args.dataset, args.configuration, args.trainers, plans=args.plans,
                                  folds=args.folds, out_dir=args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(result.table())
    print(f"wrote {result.csv_path}")
    print(f"wrote {result.png_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "compare", help="per-class validation Dice of finished trainings (mean ± std over folds), CSV + PNG",
        description="Compare trainers by the validation Dice nnU-Net wrote for each fold.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-tr", "--trainers", nargs="+", required=True, metavar="TRAINER",
                   help="trainer class names (or TRAINER__PLANS)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--folds", nargs="+", type=_fold, default=[str(f) for f in DEFAULT_FOLDS],
                   help="folds to collect (default 0 1 2 3 4)")
    p.add_argument("--out", default=".", help="folder for compare_<Dataset>_<config>.csv/.png (default: .)")
    p.set_defaults(func=_cmd_compare)
