"""``nnunet-csse compare``: the Dice of nnU-Net runs (cross-validation folds, or prediction folders on a labelled test
set), paired per-case statistics against the first run and the training level (:mod:`nnunet_csse.tools.trainings`).
Inputs, pairing and statistics: docs/benchmarks.md. Nothing is written unless all input is valid."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_csse.folders import FOREGROUND_MEAN, dataset_folder, read_evaluator_summary
from nnunet_csse.tools import trainings as T
from nnunet_csse.tools.trainings import BOOTSTRAP_SEED, N_RESAMPLES, TIE_TOLERANCE, format_p, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_FOLDS = (0, 1, 2, 3, 4)
MIN_CASES = 5  # fewer paired cases: no CI, no p-value
PAIRED_COLUMNS = ("reference", "n_paired", "mean_difference", "ci_low", "ci_high", "wilcoxon_p", "wins", "losses",
                  "ties")


@dataclass
class TrainerDice:
    """Dice of one run: per fold, ``dice[class_key][fold]`` (NaN where the class was absent), and per case."""

    name: str  # as given (TRAINER, TRAINER__PLANS or the prediction's NAME)
    folder: Path  # <trainer>__<plans>__<configuration>, or the prediction folder
    folds: list[str]  # folds with a summary.json, in the order asked for (empty on a test set)
    missing: list[str]  # folds asked for without one
    dice: dict[str, dict[str, float]]
    label_names: dict[str, str] = field(default_factory=dict)
    cases: dict[str, dict[str, float]] = field(default_factory=dict)  # case (file name) -> key -> Dice
    case_folds: dict[str, str] = field(default_factory=dict)  # case -> fold it was validated in

    def mean_std(self, key: str) -> tuple[float, float, int]:
        """(mean, sample std, n) of ``key`` over the folds found, NaN folds left out."""
        return mean_std(self.dice.get(key, {}).get(f) for f in self.folds)

    def case_values(self, key: str, foreground_keys: Sequence[str] | None = None) -> dict[str, float]:
        """case -> finite Dice of ``key``; the foreground mean: over ``foreground_keys`` (default: all but "0")."""
        if key != FOREGROUND_MEAN:
            return {c: v for c, m in self.cases.items() if math.isfinite(v := m.get(key, math.nan))}
        means = {c: mean_std(m.get(k) for k in (foreground_keys if foreground_keys is not None else
                                                [k for k in m if k != "0"])) for c, m in self.cases.items()}
        return {c: mean for c, (mean, _, n) in means.items() if n}

    def case_mean_std(self, key: str) -> tuple[float, float, int]:
        """(mean, sample std, n) over cases with a finite Dice of ``key``."""
        return mean_std(self.case_values(key).values())


@dataclass
class PairedDifference:
    """Paired per-case Dice differences (trainer minus reference, in the order of the sorted ``cases``) of one class;
    CI: percentile bootstrap of whole cases (``scipy.stats.bootstrap``); NaN: n/a."""

    trainer: str
    reference: str
    key: str  # summary key or FOREGROUND_MEAN
    cases: list[str]
    differences: np.ndarray
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan

    def __post_init__(self) -> None:
        from scipy.stats import bootstrap

        self.n = len(self.cases)
        self.mean = float(self.differences.mean()) if self.n else math.nan
        self.wins = int(np.sum(self.differences >= TIE_TOLERANCE))
        self.losses = int(np.sum(self.differences <= -TIE_TOLERANCE))
        self.ties = self.n - self.wins - self.losses
        if self.n >= MIN_CASES:
            ci = bootstrap((self.differences,), np.mean, n_resamples=N_RESAMPLES, confidence_level=0.95,
                           method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
            self.ci_low, self.ci_high, self.p_value = float(ci.low), float(ci.high), T.wilcoxon_p(self.differences)


@dataclass
class Comparison:
    """Result of ``compare_trainers`` / ``compare_predictions``."""

    dataset: str
    configuration: str  # the label folder's name on a test set
    folds: list[str]
    classes: list[str]  # summary keys in label order, then FOREGROUND_MEAN
    trainers: list[TrainerDice]
    warnings: list[str]
    csv_path: Path | None = None
    png_path: Path | None = None
    paired: list[PairedDifference] = field(default_factory=list)
    test_set: bool = False
    n_label_cases: int = 0  # test set: label files found
    paired_png_path: Path | None = None
    md_path: Path | None = None
    trainings: list[T.TrainerTrainings] = field(default_factory=list)  # cross-validation: one fold = one training

    @property
    def written(self) -> list[Path]:
        return [p for p in (self.csv_path, self.md_path, self.png_path, self.paired_png_path) if p is not None]

    def label(self, key: str, short: bool = False) -> str:
        """``key (name)`` with the label name from dataset.json where known (``short``: the name alone)."""
        if short and key == FOREGROUND_MEAN:
            return "foreground\nmean"
        name = next((t.label_names[key] for t in self.trainers if key in t.label_names), None)
        return key if name is None else (name if short else f"{key} ({name})")

    def mean_std(self, trainer: TrainerDice, key: str) -> tuple[float, float, int]:
        """Over cases on a test set, over folds in cross-validation."""
        return trainer.case_mean_std(key) if self.test_set else trainer.mean_std(key)

    def rows(self) -> list[dict]:
        """The CSV: per trainer and class the mean, std, n_folds or n_cases, fold_<f> values, ``PAIRED_COLUMNS``."""
        paired = {(p.trainer, p.key): p for p in self.paired}
        rows = []
        for t in self.trainers:
            for key in self.classes:
                mean, std, n = self.mean_std(t, key)
                row = {"trainer": t.name, "class": key, "mean": mean, "std": std,
                       "n_cases" if self.test_set else "n_folds": n}
                row.update({f"fold_{f}": t.dice.get(key, {}).get(f, math.nan) for f in self.folds})
                p = paired.get((t.name, key))
                row.update(dict(zip(PAIRED_COLUMNS, (p.reference, p.n, p.mean, p.ci_low, p.ci_high, p.p_value, p.wins,
                                                     p.losses, p.ties))) if p else dict.fromkeys(PAIRED_COLUMNS, ""))
                rows.append(row)
        return rows

    def case_scope(self) -> str:
        """Where the paired cases come from: the test set, one training (fold) or several pooled."""
        if self.test_set:
            return "test-set cases"
        folds = sorted({self.trainers[0].case_folds[c] for p in self.paired for c in p.cases}, key=self.folds.index)
        if len(folds) == 1:
            return f"validation cases within one training, fold {folds[0]}"
        return f"validation cases pooled over {len(folds)} trainings, folds {','.join(folds)}"

    def sections(self) -> list[tuple[str, list[list[list[str]]], str]]:
        """(title, tables, note) of each part of the report."""
        def cell(t: TrainerDice, key: str) -> str:
            mean, std, n = self.mean_std(t, key)
            return "-" if n == 0 else f"{mean:.4f} ± {'n/a' if math.isnan(std) else f'{std:.4f}'} ({n})"

        means = [["class"] + [t.name for t in self.trainers]]
        means += [[self.label(key)] + [cell(t, key) for t in self.trainers] for key in self.classes]
        means.append(["cases found" if self.test_set else "folds found"] + [
            f"{len(t.cases)}/{self.n_label_cases}" if self.test_set else f"{len(t.folds)}/{len(self.folds)}: "
            f"{','.join(t.folds)}" for t in self.trainers])
        reference = self.trainers[0].name
        result = [("test-set Dice, mean ± std over cases (n cases)" if self.test_set else
                   "validation Dice, mean ± std over folds (n folds)", [means], "")]
        if self.trainings:
            groups = [((), self.trainings)]
            result.append((f"training level (one fold = one training; pairs: same fold) vs {reference} (reference): "
                           f"foreground Dice per training, stalled trainings",
                           [T.table_rows(groups), T.per_training_rows(groups)], T.method_note("one fold")))
        if self.paired:
            paired = [["trainer", "class", "n", "mean diff", "95% CI", "p", "W/L/T"]] + [
                [p.trainer, self.label(p.key), str(p.n), "-" if p.n == 0 else f"{p.mean:+.4f}",
                 T.format_interval(p.ci_low, p.ci_high, signed=True), format_p(p.p_value),
                 f"{p.wins}/{p.losses}/{p.ties}"] for p in self.paired]
            result.append((f"paired per-case Dice difference vs {reference} (reference), {self.case_scope()}: mean, "
                           f"95% bootstrap CI, two-sided Wilcoxon signed-rank p, wins/losses/ties", [paired],
                           f"CI: {N_RESAMPLES} bootstrap resamples of the cases, seed {BOOTSTRAP_SEED}; tie: |diff| < "
                           f"{TIE_TOLERANCE:g}; p: ties dropped, 1 if all tied; CI and p n/a below {MIN_CASES} "
                           f"paired cases. Cases of the same trainings: this CI and p describe these trainings, not "
                           f"the next one (see the training-level table)."))
        return result

    def table(self) -> str:
        """The text tables printed by the CLI."""
        (what, (means,), _), *rest = self.sections()
        lines = [f"{self.dataset} {self.configuration}: {what}",
                 T.render(means, separator_before=1 + self.classes.index(FOREGROUND_MEAN))]
        for title, tables, note in rest:
            lines += ["", title, *(f"{T.render(rows)}\n" for rows in tables), note]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The tables, the method and the warnings as a markdown document."""
        parts = [f"# {self.dataset} {self.configuration}"]
        for title, tables, note in self.sections():
            parts += ["", f"## {title[0].upper()}{title[1:]}", "", "\n\n".join(T.render(t, True) for t in tables)]
            parts += ["", note] if note else []
        if self.warnings:
            parts += ["", "## Warnings", "", *[f"- {w}" for w in self.warnings]]
        return "\n".join(parts) + "\n"


def _label_names(labels: object) -> dict[str, str]:
    """summary key -> label name from a dataset.json ``"labels"`` dict, or from the dataset.json at a Path."""
    if isinstance(labels, Path):
        try:
            labels = json.loads(labels.read_text())["labels"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
    names: dict[str, str] = {}
    for name, value in (labels.items() if isinstance(labels, dict) else ()):
        if isinstance(value, int):
            names[str(value)] = name
        elif isinstance(value, list):  # nnU-Net's key is "(1, 2)"; [2] is "2" in a label dataset, "(2,)" with regions
            names.update(dict.fromkeys([str(tuple(value))] + ([str(value[0])] if len(value) == 1 else []), name))
    return names


def compare_trainers(dataset: str | int, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
                     folds: Sequence[int | str] = DEFAULT_FOLDS, out_dir: str | Path | None = ".",
                     results_root: str | Path | None = None) -> Comparison:
    """The validation Dice of finished trainings (``TRAINER`` or ``TRAINER__PLANS``) paired with the first; writes
    ``compare_<Dataset>_<configuration>.*`` into ``out_dir`` (None: nothing). Unusable input is a ValueError."""
    if not trainers:
        raise ValueError("give at least one trainer")
    if len(set(trainers)) != len(trainers):
        raise ValueError(f"trainer given twice in {list(trainers)}")
    root = dataset_folder(dataset, "nnUNet_results", results_root)
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
        folder = root / f"{trainer}__{trainer_plans}__{configuration}"
        result = TrainerDice(entry, folder, [], [], {}, _label_names(folder / "dataset.json"))
        for f in fold_names:
            path = folder / f"fold_{f}" / "validation" / "summary.json"
            if not path.is_file():
                result.missing.append(f)
                continue
            fold_dice, cases = read_evaluator_summary(path)
            for key, value in fold_dice.items():
                result.dice.setdefault(key, {})[f] = value
            for case, metrics in cases.items():
                if case in result.cases:
                    raise ValueError(f"trainer '{entry}': case {case} is in fold {result.case_folds[case]} and in "
                                     f"fold {f}; pass only folds of one cross-validation (e.g. --folds all alone)")
                result.cases[case], result.case_folds[case] = metrics, f
            result.folds.append(f)
        if not result.folds:
            expected = folder / f"fold_{fold_names[0]}" / "validation" / "summary.json"
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            hint = "" if folder.is_dir() else f" (no folder {folder.name}; present: {present})"
            configs = sorted({p.name.split("__")[-1] for p in root.glob("*__*__*") if p.is_dir()})
            fix = f"Train with nnUNetv2_train {root.name} {configuration} FOLD -tr {trainer} -p {trainer_plans}" \
                if configuration in configs or not configs else f"Configurations with results: {configs}; check -c"
            raise ValueError(f"no results for trainer '{entry}': expected {expected} (folds {','.join(fold_names)})"
                             f"{hint}. {fix}")
        if result.missing:
            warnings.append(f"{entry}: no validation/summary.json for fold(s) {','.join(result.missing)} in "
                            f"{folder} (unfinished training, or run nnUNetv2_train ... --val); using "
                            f"{len(result.folds)} fold(s)")
        results.append(result)
    comparison = Comparison(root.name, configuration, fold_names, _classes(t.dice for t in results), results, warnings)
    trainings = {}  # one training per fold (its cases: those validated in it), paired by fold with the first trainer
    for t in results:
        keys = {k for m in t.cases.values() for k in m}
        classes = [k for k in comparison.classes if k in keys and k not in (FOREGROUND_MEAN, "0")]
        trainings[t.name] = [T.Training.from_cases(f"fold {f}", {c: m for c, m in t.cases.items()
                                                                 if t.case_folds[c] == f},
                                                   classes, {k: comparison.label(k) for k in classes}) for f in t.folds]
    comparison.trainings = T.summarize_trainings(trainings, results[0].name)
    return _finish(comparison, out_dir)


def _classes(key_sets: Iterable[Iterable[str]]) -> list[str]:
    """The summary keys in label order (labels, then regions), then the foreground mean."""
    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region

    def order(key: str) -> tuple:
        try:
            value = key_to_label_or_region(key)
        except ValueError:
            return (2, key)
        return (0, value, ()) if isinstance(value, int) else (1, 0, value)

    return sorted({k for keys in key_sets for k in keys} - {FOREGROUND_MEAN}, key=order) + [FOREGROUND_MEAN]


def _finish(comparison: Comparison, out_dir: str | Path | None) -> Comparison:
    """Pairs every trainer with the first one (warning about what cannot be paired), then writes the output files
    ``compare_<Dataset>_<configuration or label folder>.*``."""
    reference, *others = comparison.trainers
    for t in others:
        shared = t.cases.keys() & reference.cases.keys()
        if not shared:
            raise ValueError(
                f"'{t.name}' and the reference '{reference.name}' share no case: {t.name} has folds "
                f"{','.join(t.folds) or '-'} ({len(t.cases)} cases, e.g. {_examples(t.cases)}), {reference.name} "
                f"has {','.join(reference.folds) or '-'} ({len(reference.cases)} cases, e.g. "
                f"{_examples(reference.cases)}); compare runs of the same dataset and cross-validation / test set")
        only = [(run, sorted(run.cases.keys() - shared)) for run in (reference, t)]
        if any(cases for _, cases in only):
            left_out = [f"{len(cases)} case(s) only in {run.name} ({_examples(cases)})" for run, cases in only if cases]
            folds = [f"fold(s) {','.join(own)} only in {run.name}" for run, other in ((reference, t), (t, reference))
                     if (own := [f for f in run.folds if f not in other.folds])]
            comparison.warnings.append(
                f"{t.name} vs {reference.name}: paired statistics use the {len(shared)} case(s) both have; left out "
                f"{' and '.join(left_out)}" + (f"; {' and '.join(folds)}" if folds else ""))
        t_keys, ref_keys = ({k for m in run.cases.values() for k in m} for run in (t, reference))
        if t_keys != ref_keys:
            comparison.warnings.append(
                f"{t.name} vs {reference.name}: different classes ({', '.join(sorted(t_keys))} vs "
                f"{', '.join(sorted(ref_keys))}); paired over the shared ones, the foreground mean too")
        foreground = [k for k in comparison.classes if k in t_keys and k in ref_keys and k != "0"]
        for key in [k for k in comparison.classes if k == FOREGROUND_MEAN or k in foreground]:
            a, b = t.case_values(key, foreground), reference.case_values(key, foreground)  # finite values only
            cases = sorted(a.keys() & b.keys())
            comparison.paired.append(PairedDifference(t.name, reference.name, key, cases,
                                                      np.array([a[c] - b[c] for c in cases], dtype=float)))
    if out_dir is not None:
        write_outputs(comparison, out_dir, f"compare_{comparison.dataset}_{comparison.configuration}")
    return comparison


def _examples(cases: object, limit: int = 3) -> str:
    names = sorted(cases)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "") if names else "none"


# ------------------------------------------------------------------------------------------- test set
def _dataset_json(dataset: str | int | None, dataset_json: str | Path | None) -> tuple[str | None, Path]:
    """(dataset name or None, dataset.json): ``dataset_json``, or that of ``dataset`` in nnUNet_preprocessed/raw."""
    if (dataset is None) == (dataset_json is None):
        raise ValueError("give the dataset (-d DATASET, its dataset.json is read from nnUNet_preprocessed or "
                         "nnUNet_raw) or --dataset-json FILE, one of them")
    if dataset_json is not None:
        path = Path(dataset_json)
        if not path.is_file():
            raise ValueError(f"--dataset-json {path} does not exist")
        return (path.parent.name if path.parent.name.startswith("Dataset") else None), path
    problems = []
    for variable in ("nnUNet_preprocessed", "nnUNet_raw"):
        try:
            folder = dataset_folder(dataset, variable)
        except ValueError as e:
            problems.append(str(e))
            continue
        if (folder / "dataset.json").is_file():
            return folder.name, folder / "dataset.json"
        problems.append(f"no {folder / 'dataset.json'}")
    raise ValueError(f"no dataset.json for dataset '{dataset}' ({'; '.join(problems)}); pass --dataset-json FILE")


def compare_predictions(labels: str | Path, predictions: Sequence[tuple[str, str | Path]],
                        dataset: str | int | None = None, dataset_json: str | Path | None = None,
                        out_dir: str | Path | None = ".", num_processes: int | None = None) -> Comparison:
    """Prediction folders (name, folder) evaluated against ``labels`` by nnU-Net's evaluator (settings from the
    dataset.json), compared like ``compare_trainers``."""
    import multiprocessing

    from nnunetv2.configuration import default_num_processes
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if not predictions:
        raise ValueError("give at least one prediction folder as NAME=FOLDER")
    names = [n for n, _ in predictions]
    if len(set(names)) != len(names):
        raise ValueError(f"prediction name given twice in {names}; name them NAME=FOLDER")
    name, json_path = _dataset_json(dataset, dataset_json)
    try:
        content = json.loads(json_path.read_text())
        file_ending = content["file_ending"]
        label_manager = LabelManager(content["labels"], content.get("regions_class_order"))
        name = name or "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(content.get("name") or "test"))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"{json_path} is not a usable nnU-Net dataset.json ({type(e).__name__}: {e}); it needs "
                         f"'labels' and 'file_ending'") from None
    label_folder = Path(labels)
    if not label_folder.is_dir():
        raise ValueError(f"label folder {label_folder} does not exist")
    label_cases = sorted(p.name for p in label_folder.iterdir() if p.name.endswith(file_ending) and p.is_file())
    if not label_cases:
        raise ValueError(f"no *{file_ending} files in label folder {label_folder} (file_ending from {json_path})")
    warnings: list[str] = []
    shared: list[list[str]] = []
    for prediction_name, folder in predictions:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"prediction folder {folder} ({prediction_name}) does not exist")
        files = {p.name for p in folder.iterdir() if p.name.endswith(file_ending) and p.is_file()}
        shared.append([c for c in label_cases if c in files])
        if not shared[-1]:
            raise ValueError(f"prediction folder {folder} ({prediction_name}) has no {file_ending} file named like "
                             f"a label in {label_folder} (e.g. {_examples(label_cases)}; it has "
                             f"{_examples(files)}); predict the test images with nnUNetv2_predict")
        missing, unlabelled = sorted(set(label_cases) - files), sorted(files - set(label_cases))
        if missing:
            warnings.append(f"{prediction_name}: no prediction for {len(missing)} of {len(label_cases)} label "
                            f"case(s) ({_examples(missing)}) in {folder}")
        if unlabelled:
            warnings.append(f"{prediction_name}: {len(unlabelled)} prediction(s) without a label in {label_folder} "
                            f"ignored ({_examples(unlabelled)})")
    try:
        reader_writer = determine_reader_writer_from_dataset_json(content, None, verbose=False)()
    except RuntimeError as e:
        raise ValueError(f"{json_path}: {e}") from None
    labels_or_regions = label_manager.foreground_regions if label_manager.has_regions else \
        label_manager.foreground_labels
    processes = default_num_processes if num_processes is None else num_processes
    results = []
    for (prediction_name, folder), cases in zip(predictions, shared):  # nnU-Net's per-case evaluator
        jobs = [(str(label_folder / c), str(Path(folder) / c), reader_writer, labels_or_regions,
                 label_manager.ignore_label) for c in cases]
        try:
            if processes <= 1 or len(jobs) == 1:
                metrics = [compute_metrics(*job) for job in jobs]
            else:  # a spawn pool, as in nnU-Net's compute_metrics_on_folder
                with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
                    metrics = pool.starmap(compute_metrics, jobs)
        except Exception as e:  # unreadable image, shape mismatch: one line naming the folder
            raise ValueError(f"nnU-Net's evaluator failed on {Path(folder)} against {label_folder}: "
                             f"{type(e).__name__}: {e}; check that the predictions match the labels") from None
        dice = {Path(r["reference_file"]).name: {str(k): float(m["Dice"]) for k, m in r["metrics"].items()}
                for r in metrics}
        results.append(TrainerDice(prediction_name, Path(folder), [], [], {}, _label_names(content["labels"]), dice))
    comparison = Comparison(name, label_folder.name, [], _classes(m for t in results for m in t.cases.values()),
                            results, warnings, test_set=True, n_label_cases=len(label_cases))
    return _finish(comparison, out_dir)


# -------------------------------------------------------------------------------------------- outputs
def write_outputs(comparison: Comparison, out_dir: str | Path, stem: str) -> None:
    """Write the CSV (empty cells for NaN), the markdown file and the figures; sets ``comparison.*_path``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison.csv_path, comparison.md_path = out / f"{stem}.csv", out / f"{stem}.md"
    rows = comparison.rows()
    with open(comparison.csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                         for row in rows)
    comparison.md_path.write_text(comparison.markdown())
    if not comparison.test_set:
        comparison.png_path = out / f"{stem}.png"
        fold_mean_figure(comparison).savefig(comparison.png_path)
    if comparison.paired:
        comparison.paired_png_path = out / f"{stem}_paired.png"
        paired_figure(comparison).savefig(comparison.paired_png_path)


def fold_mean_figure(comparison: Comparison) -> Figure:
    """Bars per class and trainer with the std over folds (without any std: the values on the bars)."""
    classes, trainers = comparison.classes, comparison.trainers
    fig = T.new_figure(max(6.0, 1.0 + len(classes) * (0.5 + 0.35 * len(trainers))), 4.8)
    ax = fig.add_subplot()
    width = 0.8 / len(trainers)
    with_std = any(not math.isnan(t.mean_std(k)[1]) for t in trainers for k in classes)
    for i, t in enumerate(trainers):
        means, stds = (np.array(v, dtype=float) for v in zip(*(t.mean_std(k)[:2] for k in classes)))
        xs = np.arange(len(classes)) + (i - (len(trainers) - 1) / 2) * width
        no_std = ", no std" if with_std and len(t.folds) < 2 else ""  # a single fold among runs with error bars
        bars = ax.bar(xs, np.nan_to_num(means), width,
                      label=f"{t.name} ({len(t.folds)} fold{'s' if len(t.folds) > 1 else ''}{no_std})")
        if (shown := ~np.isnan(stds)).any():
            ax.errorbar(xs[shown], np.nan_to_num(means)[shown], yerr=stds[shown], fmt="none", ecolor="black",
                        capsize=3, lw=1)
        if not with_std:  # a bar of height 0 is invisible: "0.000"
            ax.bar_label(bars, labels=["n/a" if math.isnan(m) else f"{m:.3f}" for m in means], fontsize="x-small",
                         padding=2, rotation=90 if len(trainers) > 2 else 0)
    ax.set(xticks=range(len(classes)), xticklabels=[comparison.label(k, short=True) for k in classes], ylim=(0, 1.1),
           ylabel="validation Dice, mean ± std over folds" if with_std else "validation Dice (one fold, no std)",
           title=f"{comparison.dataset} {comparison.configuration}")
    ax.grid(axis="y", alpha=0.3)
    longest = max(len(t.name) for t in trainers) + 10
    fig.legend(fontsize="small", loc="outside upper center", frameon=False,
               ncol=max(1, min(len(trainers), int(fig.get_figwidth() * 72 / (6.5 * longest)))))
    return fig


def paired_figure(comparison: Comparison) -> Figure:
    """Per non-reference trainer and class the paired per-case differences (green better, red worse, grey tie) and
    their mean with its 95% bootstrap CI."""
    from matplotlib.lines import Line2D

    others = list(dict.fromkeys(p.trainer for p in comparison.paired))
    keys = [k for k in comparison.classes if any(p.key == k for p in comparison.paired)]
    limit = max([float(np.abs(p.differences).max()) for p in comparison.paired if p.n] + [0.01]) * 1.15
    fig = T.new_figure(max(6.0, 1.5 + 1.3 * len(keys)), 0.8 + 3.2 * len(others))
    axes = fig.subplots(len(others), 1, squeeze=False, sharey=True)[:, 0]
    jitter_rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    for ax, trainer in zip(axes, others):
        by_key = {p.key: p for p in comparison.paired if p.trainer == trainer}
        tick_labels = []
        for x, key in enumerate(keys):
            p = by_key.get(key)
            if p is None or p.n == 0:
                tick_labels.append(f"{comparison.label(key, short=True)}\nn=0")
                continue
            colors = np.where(p.differences >= TIE_TOLERANCE, "tab:green",
                              np.where(p.differences <= -TIE_TOLERANCE, "tab:red", "grey"))
            ax.scatter(x - 0.12 + jitter_rng.uniform(-0.14, 0.14, p.n), p.differences, s=14, c=colors, alpha=0.6,
                       linewidths=0)
            T.mean_whisker(ax, x + 0.18, p.mean, (p.ci_low, p.ci_high))
            stats = f"n={p.n}, CI and p n/a" if math.isnan(p.p_value) else f"n={p.n}, p={format_p(p.p_value)}"
            tick_labels.append(f"{comparison.label(key, short=True)}\n{stats}\nW/L/T {p.wins}/{p.losses}/{p.ties}")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(keys)), tick_labels, fontsize="small")
        ax.set(xlim=(-0.6, len(keys) - 0.4), ylim=(-limit, limit), ylabel="Dice difference per case")
        # two lines: TRAINER__PLANS names are long, and one line would be cut at the figure's edge
        ax.set_title(f"{trainer}\nminus {comparison.trainers[0].name} (reference)", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=c, alpha=0.6, label=label)
               for c, label in (("tab:green", "case better"), ("tab:red", "case worse"), ("grey", "tie"))]
    handles.append(Line2D([], [], ls="-", marker="D", color="black", label=f"mean, 95% bootstrap CI (n ≥ {MIN_CASES})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small", frameon=False)
    fig.suptitle(f"{comparison.dataset} {comparison.configuration}: paired per-case Dice differences\n"
                 f"{comparison.case_scope()}; p: two-sided Wilcoxon signed-rank", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------------------------- CLI
EPILOG = """\
cross-validation: reads <nnUNet_results>/<Dataset>/<trainer>__<plans>__<config>/fold_<f>/validation/summary.json
(written by nnUNetv2_train after training or with --val); a trainer may be given as TRAINER__PLANS.
test set: evaluates each prediction folder against --labels with nnU-Net's evaluator (labels or regions and file
ending from the dataset.json of -d, or --dataset-json).
The first trainer / prediction is the reference: per class, the paired per-case Dice difference (95% bootstrap CI,
Wilcoxon signed-rank p, wins/losses/ties), and per training (one fold) the mean difference over folds with a
hierarchical bootstrap CI, a Wilcoxon or exact sign test, and stalled trainings.

examples:
  nnunet-csse compare -d 4 -c 3d_fullres -tr nnUNetTrainer nnUNetTrainerCSSE --out results/
  nnunet-csse compare -d 4 --labels $nnUNet_raw/Dataset004_Hippocampus/labelsTs \\
      --predictions nnUNet=pred_baseline CSSE=pred_csse --out results/
"""


def _fold(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got '{value}'")
    return value if value == "all" else str(int(value))


def _prediction(value: str) -> tuple[str, str]:
    name, sep, folder = value.partition("=")
    if not sep:
        return Path(value).name or value, value
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"give NAME=FOLDER (or FOLDER), got '{value}'")
    return name, folder


def _cmd_compare(args: argparse.Namespace) -> int:
    """Run the mode the flags ask for; ValueError for flags that do not fit together."""
    from nnunet_csse.folders import check_writable

    check_writable(args.out, "output folder (--out)")  # before any evaluation
    if args.labels is not None or args.predictions is not None:
        if args.labels is None or args.predictions is None:
            raise ValueError("a test set needs both --labels FOLDER and --predictions NAME=FOLDER ...")
        extra = [flag for flag, value in (("-tr", args.trainers), ("-c", args.configuration), ("-p", args.plans),
                                          ("--folds", args.folds)) if value is not None]
        if extra:
            raise ValueError(f"{'/'.join(extra)} belong to cross-validation results; with --labels/--predictions "
                             f"give -d DATASET or --dataset-json FILE only")
        result = compare_predictions(args.labels, args.predictions, dataset=args.dataset,
                                     dataset_json=args.dataset_json, out_dir=args.out, num_processes=args.num_processes)
    else:
        missing = [flag for flag, value in (("-d", args.dataset), ("-c", args.configuration), ("-tr", args.trainers))
                   if value is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: give -d DATASET -c CONFIG -tr TRAINER ... (cross-"
                             f"validation) or --labels FOLDER --predictions NAME=FOLDER ... (test set)")
        if args.dataset_json is not None:
            raise ValueError("--dataset-json is for a test set (--labels/--predictions); cross-validation reads -d")
        result = compare_trainers(args.dataset, args.configuration, args.trainers, plans=args.plans or "nnUNetPlans",
                                  folds=args.folds or DEFAULT_FOLDS, out_dir=args.out)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("\n".join([result.table(), *(f"wrote {path}" for path in result.written)]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "compare", help="per-class Dice of finished trainings or test-set predictions, paired per-case "
                        "statistics vs the first one, CSV + markdown + PNG",
        description="Compare trainers by the validation Dice nnU-Net wrote for each fold, or prediction folders on\n"
                    "a labelled test set, against the first one given.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", help="dataset id or name (no default; a test set reads its dataset.json "
                                           "unless --dataset-json)")
    p.add_argument("-c", "--configuration", help="configuration, e.g. 3d_fullres (cross-validation; no default)")
    p.add_argument("-tr", "--trainers", nargs="+", metavar="TRAINER",
                   help="trainer class names (or TRAINER__PLANS); the first is the reference (no default)")
    p.add_argument("-p", "--plans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", type=_fold, help="folds to collect (default: 0 1 2 3 4)")
    p.add_argument("--labels", metavar="FOLDER", help="test set: folder with the reference segmentations (no default)")
    p.add_argument("--predictions", nargs="+", type=_prediction, metavar="NAME=FOLDER",
                   help="test set: prediction folders (NAME=FOLDER, or FOLDER named after itself); the first is the "
                        "reference (no default)")
    p.add_argument("--dataset-json", metavar="FILE", help="test set: dataset.json (default: the one of -d)")
    p.add_argument("-np", "--num-processes", type=int, default=None,
                   help="test set: evaluator processes (default: nnU-Net's default_num_processes)")
    p.add_argument("--out", default=".", help="folder for compare_<Dataset>_<config or label folder>.csv, .md, "
                                              ".png (cross-validation only), _paired.png (default: %(default)s)")
    p.set_defaults(func=_cmd_compare)
