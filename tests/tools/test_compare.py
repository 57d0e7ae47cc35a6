"""``nnunet-csse compare`` on fake nnU-Net results folders (summary.json written by nnU-Net's own writer) and on a
tiny NIfTI test set evaluated by nnU-Net's evaluator; paired statistics checked against oracles written here."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from nnunetv2.evaluation.evaluate_predictions import save_summary_json
from scipy.stats import wilcoxon

from nnunet_csse.tools import compare as C
from nnunet_csse.tools import trainings as T
from nnunet_csse.tools.cli import main

DATASET = "Dataset042_Toy"
PAIRED_COLUMNS = ["reference", "n_paired", "mean_difference", "ci_low", "ci_high", "wilcoxon_p", "wins", "losses",
                  "ties"]
CONFIG = "3d_fullres"
# trainer -> fold -> {label or region: (Dice case 0, Dice case 1)}
DICE = {
    "nnUNetTrainer": {
        0: {1: (0.80, 0.90), 2: (0.60, 0.70)},
        1: {1: (0.82, 0.86), 2: (0.50, 0.66)},
        2: {1: (0.90, 0.88), 2: (0.64, 0.72)},
        3: {1: (0.78, 0.84), 2: (0.58, 0.62)},
        4: {1: (0.85, 0.87), 2: (0.61, 0.69)},
    },
    "nnUNetTrainerCSSE": {  # folds 3 and 4 not finished
        0: {1: (0.84, 0.92), 2: (0.66, 0.74)},
        1: {1: (0.86, 0.88), 2: (float("nan"), float("nan"))},  # label 2 absent from this fold's cases
        2: {1: (0.91, 0.89), 2: (0.70, 0.76)},
    },
}


def case_name(fold, c):
    """Validation case c of a fold: every case is in exactly one fold, as in nnU-Net's cross-validation."""
    return f"case_f{fold}_{c}.nii.gz"


def write_summary(path, cases):
    """summary.json exactly as nnU-Net's compute_metrics_on_folder builds it: ``cases`` is a list of
    (reference file name, {label or region: Dice}) in ``metric_per_case`` order."""
    keys = list(cases[0][1])
    per_case = []
    for name, dice_per_key in cases:
        metrics = {}
        for k in keys:
            dice = dice_per_key[k]
            metrics[k] = {"Dice": dice, "IoU": dice / (2 - dice) if not math.isnan(dice) else dice,
                          "FP": 3, "TP": 40, "FN": 5, "TN": 1000, "n_pred": 43, "n_ref": 45}
        per_case.append({"reference_file": f"/data/gt_segmentations/{name}",
                         "prediction_file": f"/results/validation/{name}", "metrics": metrics})
    metric_list = list(per_case[0]["metrics"][keys[0]])
    with _nowarn():
        means = {k: {m: float(np.nanmean([c["metrics"][k][m] for c in per_case])) for m in metric_list}
                 for k in keys}
    foreground = {m: float(np.mean([means[k][m] for k in keys if k != 0])) for m in metric_list}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_summary_json({"metric_per_case": per_case, "mean": means, "foreground_mean": foreground}, str(path))


class _nowarn:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN, as in nnU-Net

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def write_trainer(root, trainer, folds, plans="nnUNetPlans", labels=None):
    """``folds``: fold -> list of (case, {key: Dice}) as in write_summary."""
    folder = root / DATASET / f"{trainer}__{plans}__{CONFIG}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(
        {"labels": labels or {"background": 0, "liver": 1, "tumor": 2}, "file_ending": ".nii.gz"}))
    for fold, cases in folds.items():
        write_summary(folder / f"fold_{fold}" / "validation" / "summary.json", cases)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").touch()


def as_cases(per_class, fold):
    """DICE's {key: (case 0, case 1)} of one fold as write_summary's case list."""
    return [(case_name(fold, c), {k: v[c] for k, v in per_class.items()}) for c in range(2)]


def make_results(root, dice=DICE, plans="nnUNetPlans", labels=None):
    for trainer, folds in dice.items():
        write_trainer(root, trainer, {f: as_cases(per_class, f) for f, per_class in folds.items()}, plans, labels)


def fold_dice(trainer, fold, key):
    """The fold's mean Dice as nnU-Net computes it: nanmean over cases; foreground_mean over labels."""
    per_class = DICE[trainer][fold]
    with _nowarn():
        means = {k: float(np.nanmean(v)) for k, v in per_class.items()}
    return float(np.mean(list(means.values()))) if key == "foreground_mean" else means[int(key)]


def expected(trainer, key):
    values = [v for f in DICE[trainer] if not math.isnan(v := fold_dice(trainer, f, key))]
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.mean(values), std, len(values)


def run_cli(argv):
    return main(["compare", *argv])


@pytest.fixture
def results(nnunet_dirs):
    make_results(nnunet_dirs["nnUNet_results"])
    return nnunet_dirs["nnUNet_results"]


# ------------------------------------------------------------------------------ oracles for the paired statistics
def oracle_bootstrap(differences, n_resamples=C.N_RESAMPLES, seed=C.BOOTSTRAP_SEED):
    """Plain loop: one resample of n case indices at a time from the same Generator, mean by hand, percentiles
    by linear interpolation between order statistics (numpy's default method)."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = []
    for _ in range(n_resamples):
        picked = rng.integers(0, n, size=n)
        means.append(sum(differences[i] for i in picked) / n)
    means.sort()

    def percentile(q):
        position = q / 100 * (len(means) - 1)
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    return percentile(2.5), percentile(97.5)


def oracle_pairs(trainer_cases, reference_cases, key):
    """Per-case differences by case name (dicts: case -> {key: Dice}); foreground: mean of the finite classes."""
    def value(metrics):
        if key != "foreground_mean":
            return metrics.get(key, math.nan)
        finite = [v for v in metrics.values() if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else math.nan

    differences = []
    for case in sorted(trainer_cases):
        if case in reference_cases:
            a, b = value(trainer_cases[case]), value(reference_cases[case])
            if not math.isnan(a) and not math.isnan(b):
                differences.append(a - b)
    return differences


def assert_matches_oracle(paired, differences):
    assert paired.n == len(differences)
    assert paired.mean == pytest.approx(sum(differences) / len(differences), abs=1e-12)
    assert paired.wins == sum(d >= 1e-12 for d in differences)
    assert paired.losses == sum(d <= -1e-12 for d in differences)
    assert paired.ties == sum(abs(d) < 1e-12 for d in differences)
    if len(differences) >= C.MIN_CASES:
        low, high = oracle_bootstrap(differences)
        assert (paired.ci_low, paired.ci_high) == pytest.approx((low, high), abs=1e-12)
        assert paired.p_value == pytest.approx(wilcoxon(differences).pvalue, rel=1e-12)
    else:
        assert math.isnan(paired.ci_low) and math.isnan(paired.ci_high) and math.isnan(paired.p_value)


# ------------------------------------------------------------------------------------------- fold-mean table
def test_values_equal_hand_computed_mean_and_std(results, tmp_path):
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=tmp_path)
    assert comparison.dataset == DATASET
    assert comparison.classes == ["1", "2", "foreground_mean"]
    baseline, csse = comparison.trainers
    assert baseline.folds == ["0", "1", "2", "3", "4"] and csse.folds == ["0", "1", "2"]
    assert csse.missing == ["3", "4"]
    for t in comparison.trainers:
        for key in comparison.classes:
            mean, std, n = t.mean_std(key)
            e_mean, e_std, e_n = expected(t.name, key)
            assert n == e_n
            assert mean == pytest.approx(e_mean, abs=1e-12)
            assert std == pytest.approx(e_std, abs=1e-12)
    # hand check of one cell: label 1 of the baseline, fold means 0.85, 0.84, 0.89, 0.81, 0.86
    mean, std, n = baseline.mean_std("1")
    assert mean == pytest.approx(0.85) and n == 5
    assert std == pytest.approx(math.sqrt((0 + 0.01**2 + 0.04**2 + 0.04**2 + 0.01**2) / 4))
    assert csse.mean_std("2")[2] == 2  # the NaN fold does not count


def test_csv_contents(results, tmp_path):
    comparison = C.compare_trainers(DATASET, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=tmp_path)
    assert comparison.csv_path == tmp_path / f"compare_{DATASET}_{CONFIG}.csv"
    with open(comparison.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["trainer", "class", "mean", "std", "n_folds", "fold_0", "fold_1", "fold_2", "fold_3",
                             "fold_4", *PAIRED_COLUMNS]
    assert [(r["trainer"], r["class"]) for r in rows] == [
        (t, k) for t in ("nnUNetTrainer", "nnUNetTrainerCSSE") for k in ("1", "2", "foreground_mean")]
    assert all(r[c] == "" for r in rows[:3] for c in PAIRED_COLUMNS)  # the reference is not paired with itself
    csse_1 = rows[3]  # label 1 over the 6 cases of folds 0-2, hand-computed from DICE
    assert csse_1["reference"] == "nnUNetTrainer" and csse_1["n_paired"] == "6"
    assert float(csse_1["mean_difference"]) == pytest.approx((0.04 + 0.02 + 0.04 + 0.02 + 0.01 + 0.01) / 6)
    assert rows[4]["n_paired"] == "4" and rows[4]["ci_low"] == rows[4]["wilcoxon_p"] == ""  # below MIN_CASES
    for r in rows:
        e_mean, e_std, e_n = expected(r["trainer"], r["class"])
        assert float(r["mean"]) == pytest.approx(e_mean, abs=1e-12)
        assert float(r["std"]) == pytest.approx(e_std, abs=1e-12)
        assert int(r["n_folds"]) == e_n
        for f in range(5):
            value = r[f"fold_{f}"]
            if f not in DICE[r["trainer"]]:
                assert value == ""  # missing fold
            elif math.isnan(truth := fold_dice(r["trainer"], f, r["class"])):
                assert value == ""  # class absent in that fold
            else:
                assert float(value) == pytest.approx(truth, abs=1e-12)


def test_png_written(results, tmp_path):
    out = tmp_path / "new" / "dir"
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=out)
    assert comparison.png_path == out / f"compare_{DATASET}_{CONFIG}.png"
    assert comparison.paired_png_path == out / f"compare_{DATASET}_{CONFIG}_paired.png"
    for path in (comparison.png_path, comparison.paired_png_path):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli_table_and_missing_fold_warning(results, tmp_path, capsys):
    assert run_cli(["-d", "42", "-c", CONFIG, "-tr", "nnUNetTrainer", "nnUNetTrainerCSSE", "--out",
                    str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning: nnUNetTrainerCSSE: no validation/summary.json for fold(s) 3,4" in captured.err
    assert "warning: nnUNetTrainer:" not in captured.err
    out = captured.out
    mean, std, _ = expected("nnUNetTrainer", "1")
    assert f"{mean:.4f} ± {std:.4f} (5)" in out
    mean, std, _ = expected("nnUNetTrainerCSSE", "foreground_mean")
    assert f"{mean:.4f} ± {std:.4f} (2)" in out  # nnU-Net's foreground_mean is NaN in the fold without label 2
    assert "1 (liver)" in out and "2 (tumor)" in out and "foreground_mean" in out
    assert "5/5: 0,1,2,3,4" in out and "3/5: 0,1,2" in out
    for suffix in (".csv", ".md", ".png", "_paired.png"):
        assert (tmp_path / f"compare_{DATASET}_{CONFIG}{suffix}").is_file()
        assert f"wrote {tmp_path / f'compare_{DATASET}_{CONFIG}{suffix}'}" in out


def test_fold_subset_and_single_fold(results, tmp_path):
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainerCSSE"], folds=[0], out_dir=None)
    assert comparison.warnings == [] and comparison.csv_path is None
    assert comparison.paired == []  # nothing to compare against
    mean, std, n = comparison.trainers[0].mean_std("1")
    assert n == 1 and mean == pytest.approx(0.88) and math.isnan(std)


@pytest.mark.parametrize("flag", ["-f", "--folds"])
def test_cli_fold_subset_with_nnunets_short_flag(results, tmp_path, capsys, flag):
    assert run_cli(["-d", "42", "-c", CONFIG, "-tr", "nnUNetTrainer", "nnUNetTrainerCSSE", flag, "0", "1",
                    "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "2/2: 0,1" in captured.out and "5/5" not in captured.out
    assert "warning" not in captured.err  # folds 3 and 4, missing for CSSE, were not asked for


def test_single_fold_run_among_runs_with_std_has_no_error_bar(results):
    write_trainer(results, "nnUNetTrainerPDCR", {0: as_cases(DICE["nnUNetTrainer"][0], 0)})
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE", "nnUNetTrainerPDCR"],
                                    out_dir=None)
    figure = C.fold_mean_figure(comparison)
    ax = figure.axes[0]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 2  # the two runs with several folds
    single_fold_bars = [c for c in ax.containers if c.get_label() == "nnUNetTrainerPDCR (1 fold, no std)"][0]
    single_fold_x = {round(bar.get_x() + bar.get_width() / 2, 6) for bar in single_fold_bars}
    for container in errorbars:  # x of each error bar's vertical line
        xs = {round(float(segment[0][0]), 6) for lines in container.lines[2] for segment in lines.get_segments()}
        assert len(xs) == len(comparison.classes) and not xs & single_fold_x
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["nnUNetTrainer (5 folds)", "nnUNetTrainerCSSE (3 folds)", "nnUNetTrainerPDCR (1 fold, no std)"]
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    assert all(not legend.overlaps(bar.get_window_extent()) for bar in ax.patches)


def test_no_results_is_an_error_naming_the_path(results, tmp_path, capsys):
    with pytest.raises(ValueError) as info:
        C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerPDCR"], out_dir=tmp_path)
    expected_path = results / DATASET / f"nnUNetTrainerPDCR__nnUNetPlans__{CONFIG}" / "fold_0" / "validation"
    assert str(expected_path / "summary.json") in str(info.value)
    assert not list(tmp_path.glob("compare_*"))
    assert run_cli(["-d", "42", "-c", "2d", "-tr", "nnUNetTrainer", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results for trainer 'nnUNetTrainer'")
    assert "nnUNetTrainer__nnUNetPlans__2d" in err
    assert run_cli(["-d", "77", "-c", CONFIG, "-tr", "nnUNetTrainer"]) == 2
    assert "unknown dataset '77'" in capsys.readouterr().err


def test_other_plans_per_trainer_and_regions(nnunet_dirs, tmp_path):
    root = nnunet_dirs["nnUNet_results"]
    make_results(root, {"nnUNetTrainer": DICE["nnUNetTrainer"]})
    regions = {f: {(1, 2): (0.9, 0.8), 2: (0.5, 0.7), 10: (0.3, 0.4)} for f in range(5)}
    make_results(root, {"nnUNetTrainerCSSE": regions}, plans="nnUNetPlansFrac25",
                 labels={"background": 0, "whole": [1, 2], "core": 2, "x": 10})
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE__nnUNetPlansFrac25"],
                                    out_dir=tmp_path)
    assert comparison.classes == ["1", "2", "10", "(1, 2)", "foreground_mean"]
    csse = comparison.trainers[1]
    assert csse.folder.name == f"nnUNetTrainerCSSE__nnUNetPlansFrac25__{CONFIG}"
    assert csse.mean_std("(1, 2)")[0] == pytest.approx(0.85)
    assert csse.mean_std("1")[2] == 0  # the baseline's label 1 does not exist for this trainer
    assert "(1, 2) (whole)" in comparison.table()
    # paired only over the class both have; the foreground mean of a case over that class alone
    assert [p.key for p in comparison.paired] == ["2", "foreground_mean"]
    assert any("different classes" in w for w in comparison.warnings)
    reference = {case_name(f, c): {"2": DICE["nnUNetTrainer"][f][2][c]} for f in range(5) for c in range(2)}
    csse_cases = {case_name(f, c): {"2": regions[f][2][c]} for f in range(5) for c in range(2)}
    for paired in comparison.paired:
        assert_matches_oracle(paired, oracle_pairs(csse_cases, reference, "2"))
    with pytest.raises(ValueError, match="TRAINER__PLANS"):
        C.compare_trainers(42, CONFIG, ["a__b__c"], out_dir=None)


# ------------------------------------------------------------------------------------ paired, cross-validation
def random_runs(n_folds=5, n_cases=7, seed=3):
    """Two runs over the same cases: reference Dice in [0.5, 0.95], the other run a noisy shift of it; label 2
    NaN in both for some cases (absent from reference and both predictions) and NaN in one run only for one."""
    rng = np.random.default_rng(seed)
    reference, other = {}, {}
    for fold in range(n_folds):
        for c in range(n_cases):
            case = case_name(fold, c)
            ref = {1: float(rng.uniform(0.5, 0.95)), 2: float(rng.uniform(0.3, 0.9))}
            new = {k: float(np.clip(v + rng.normal(0.02, 0.05), 0, 1)) for k, v in ref.items()}
            if c == 0:
                ref[2] = new[2] = math.nan
            reference[case], other[case] = ref, new
    other[case_name(n_folds - 1, 1)][2] = math.nan  # NaN in one run only: the case is left out of label 2's pairs
    return reference, other


def by_fold(cases, n_folds=5, order=lambda names: sorted(names)):
    return {f: [(name, cases[name]) for name in order([n for n in cases if n.startswith(f"case_f{f}_")])]
            for f in range(n_folds)}


def test_paired_statistics_match_oracle_and_pair_by_reference_file(nnunet_dirs):
    root = nnunet_dirs["nnUNet_results"]
    reference, other = random_runs()
    write_trainer(root, "nnUNetTrainer", by_fold(reference))
    # the other run lists its cases in reverse order: pairing by position would mis-pair every case
    write_trainer(root, "nnUNetTrainerCSSE", by_fold(other, order=lambda names: sorted(names, reverse=True)))
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=None)
    assert comparison.warnings == []
    assert [(p.trainer, p.reference, p.key) for p in comparison.paired] == [
        ("nnUNetTrainerCSSE", "nnUNetTrainer", k) for k in ("1", "2", "foreground_mean")]
    as_str = {side: {case: {str(k): v for k, v in m.items()} for case, m in cases.items()}
              for side, cases in (("ref", reference), ("other", other))}
    for paired in comparison.paired:
        differences = oracle_pairs(as_str["other"], as_str["ref"], paired.key)
        assert_matches_oracle(paired, differences)
        assert len(differences) == {"1": 35, "2": 29, "foreground_mean": 35}[paired.key]
    # the fixture can tell right from wrong pairing: paired by list position (same mean, as every case is
    # shared) the label-1 differences have another spread, hence another p-value
    positional = [b[1] - a[1] for a, b in zip(
        [m for f, cases in by_fold(reference).items() for _, m in cases],
        [m for f, cases in by_fold(other, order=lambda n: sorted(n, reverse=True)).items() for _, m in cases])]
    assert abs(math.log10(wilcoxon(positional).pvalue / comparison.paired[0].p_value)) > 0.5


def test_partial_fold_overlap_pairs_shared_cases_and_warns(results):
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=None)
    warning = next(w for w in comparison.warnings if w.startswith("nnUNetTrainerCSSE vs nnUNetTrainer"))
    assert "the 6 case(s) both have" in warning and "fold(s) 3,4 only in nnUNetTrainer" in warning
    label1, label2, foreground = comparison.paired
    # label 1: folds 0-2, two cases each, by hand from DICE
    hand = [0.84 - 0.80, 0.92 - 0.90, 0.86 - 0.82, 0.88 - 0.86, 0.91 - 0.90, 0.89 - 0.88]
    assert label1.n == 6 and label1.mean == pytest.approx(sum(hand) / 6, abs=1e-12)
    assert (label1.wins, label1.losses, label1.ties) == (6, 0, 0)
    assert label1.p_value == pytest.approx(wilcoxon(hand).pvalue) and label1.ci_low > 0
    # label 2 is NaN for the fold-1 cases of CSSE: 4 pairs, below MIN_CASES -> n/a
    assert label2.n == 4 and math.isnan(label2.p_value) and math.isnan(label2.ci_low)
    assert label2.mean == pytest.approx((0.06 + 0.04 + 0.06 + 0.04) / 4, abs=1e-12)
    # foreground: per-case mean of the finite classes; in fold 1 CSSE has only label 1
    reference = {case_name(f, c): {k: DICE["nnUNetTrainer"][f][k][c] for k in (1, 2)} for f in range(5)
                 for c in range(2)}
    csse = {case_name(f, c): {k: DICE["nnUNetTrainerCSSE"][f][k][c] for k in (1, 2)} for f in range(3)
            for c in range(2)}
    assert_matches_oracle(foreground, oracle_pairs(csse, reference, "foreground_mean"))
    assert "n/a" in comparison.table()


def test_case_level_partial_overlap_and_no_shared_case(nnunet_dirs, tmp_path, capsys):
    root = nnunet_dirs["nnUNet_results"]
    reference, other = random_runs(n_folds=2, n_cases=6)
    write_trainer(root, "nnUNetTrainer", by_fold(reference, 2))
    partial = by_fold(other, 2)
    partial[1] = partial[1][:3]  # three cases of fold 1 missing in this summary
    write_trainer(root, "nnUNetTrainerCSSE", partial)
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=None)
    assert comparison.paired[0].n == 9
    assert comparison.paired[0].cases == sorted(n for f in partial.values() for n, _ in f)
    assert any("the 9 case(s) both have; left out 3 case(s) only in nnUNetTrainer (case_f1_3" in w
               for w in comparison.warnings)

    renamed = {f: [(name.replace("case", "other"), m) for name, m in cases] for f, cases in partial.items()}
    write_trainer(root, "nnUNetTrainerPDCR", renamed)
    with pytest.raises(ValueError, match="'nnUNetTrainerPDCR' and the reference 'nnUNetTrainer' share no case"):
        C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerPDCR"], folds=[0, 1], out_dir=tmp_path)
    assert run_cli(["-d", "42", "-c", CONFIG, "-tr", "nnUNetTrainer", "nnUNetTrainerPDCR", "--out",
                    str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'nnUNetTrainerPDCR' and the reference") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("compare_*"))


def test_case_in_two_folds_is_an_error(nnunet_dirs):
    root = nnunet_dirs["nnUNet_results"]
    cases = [("case_a.nii.gz", {1: 0.8}), ("case_b.nii.gz", {1: 0.7})]
    write_trainer(root, "nnUNetTrainer", {0: cases, "all": cases})
    with pytest.raises(ValueError, match="case case_a.nii.gz is in fold 0 and in fold all"):
        C.compare_trainers(42, CONFIG, ["nnUNetTrainer"], folds=[0, "all"], out_dir=None)


def test_single_case_and_all_ties(nnunet_dirs, tmp_path):
    root = nnunet_dirs["nnUNet_results"]
    write_trainer(root, "nnUNetTrainer", {0: [("only.nii.gz", {1: 0.70, 2: 0.5})]})
    write_trainer(root, "nnUNetTrainerCSSE", {0: [("only.nii.gz", {1: 0.75, 2: 0.5})]})
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], folds=[0], out_dir=tmp_path)
    label1 = comparison.paired[0]
    assert label1.n == 1 and label1.mean == pytest.approx(0.05)
    assert math.isnan(label1.ci_low) and math.isnan(label1.p_value)
    assert comparison.paired[1].ties == 1
    with open(comparison.csv_path, newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["trainer"] == "nnUNetTrainerCSSE" and r["class"] == "1")
    assert row["n_paired"] == "1" and float(row["mean_difference"]) == pytest.approx(0.05)
    assert row["ci_low"] == row["ci_high"] == row["wilcoxon_p"] == ""
    assert "+0.0500" in comparison.table() and "n/a" in comparison.table()
    # a single fold: no error bar in the fold-mean chart; the legend sits clear of the bars
    figure = C.fold_mean_figure(comparison)
    ax = figure.axes[0]
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    assert all(not legend.overlaps(bar.get_window_extent()) for bar in ax.patches)

    ties = [(f"t{i}.nii.gz", {1: 0.1 * i}) for i in range(1, 7)]
    write_trainer(root, "nnUNetTrainerUAFS", {0: ties})
    write_trainer(root, "nnUNetTrainerPDCR", {0: ties})
    tied = C.compare_trainers(42, CONFIG, ["nnUNetTrainerUAFS", "nnUNetTrainerPDCR"], folds=[0], out_dir=None)
    label1 = tied.paired[0]
    assert (label1.n, label1.ties, label1.wins, label1.losses) == (6, 6, 0, 0)
    assert label1.p_value == 1.0 and (label1.ci_low, label1.ci_high) == (0.0, 0.0)


def test_outputs_markdown_and_paired_columns(nnunet_dirs, tmp_path):
    root = nnunet_dirs["nnUNet_results"]
    reference, other = random_runs(n_folds=3, n_cases=4)
    write_trainer(root, "nnUNetTrainer", by_fold(reference, 3))
    write_trainer(root, "nnUNetTrainerCSSE", by_fold(other, 3))
    write_trainer(root, "nnUNetTrainerPDCR", by_fold(reference, 3))
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE", "nnUNetTrainerPDCR"],
                                    folds=[0, 1, 2], out_dir=tmp_path)
    with open(comparison.csv_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["trainer"] != "nnUNetTrainer"]
    assert [(r["trainer"], r["class"]) for r in rows] == [
        (t, k) for t in ("nnUNetTrainerCSSE", "nnUNetTrainerPDCR") for k in ("1", "2", "foreground_mean")]
    for row, paired in zip(rows, comparison.paired):
        assert float(row["mean_difference"]) == pytest.approx(paired.mean, abs=1e-12)
        assert float(row["ci_low"]) == pytest.approx(paired.ci_low, abs=1e-12)
        assert float(row["wilcoxon_p"]) == pytest.approx(paired.p_value, rel=1e-12)
        assert int(row["wins"]) + int(row["losses"]) + int(row["ties"]) == int(row["n_paired"]) == paired.n
    assert rows[3]["wilcoxon_p"] == "1.0" and rows[3]["ties"] == "12"  # PDCR is a copy of the reference
    markdown = comparison.md_path.read_text()
    csse_1 = comparison.paired[0]
    assert (f"| nnUNetTrainerCSSE | 1 (liver) | 12 | {csse_1.mean:+.4f} | [{csse_1.ci_low:+.4f}, "
            f"{csse_1.ci_high:+.4f}] | {T.format_p(csse_1.p_value)} | {csse_1.wins}/{csse_1.losses}/{csse_1.ties} |"
            ) in markdown
    mean, std, n = comparison.trainers[1].mean_std("1")
    assert f"| 1 (liver) | {comparison.trainers[0].mean_std('1')[0]:.4f} ± " in markdown
    assert f"{mean:.4f} ± {std:.4f} ({n})" in markdown and "10000 bootstrap resamples" in markdown


# ------------------------------------------------------------------------------------------------ test set
LABELS = {"background": 0, "liver": 1, "tumor": 2}
N_TEST_CASES = 6


def write_nifti(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def hand_dice(reference, prediction, label):
    ref, pred = reference == label, prediction == label
    if not ref.any() and not pred.any():
        return math.nan
    return 2 * np.sum(ref & pred) / (np.sum(ref) + np.sum(pred))


@pytest.fixture
def labelled_test_set(tmp_path):
    """8x8x8 labels (liver cube + tumor cube; case 5 without tumor) and two prediction folders: 'base' flips
    random voxels, 'better' flips fewer; 'better' lacks case 4 and has a prediction without a label."""
    rng = np.random.default_rng(7)
    folders = {name: tmp_path / name for name in ("labelsTs", "base", "better")}
    for folder in folders.values():
        folder.mkdir()
    arrays = {name: {} for name in folders}
    for i in range(N_TEST_CASES):
        label = np.zeros((8, 8, 8), dtype=np.uint8)
        label[1:6, 1:6, 1:6] = 1
        if i != 5:
            label[2:4, 2:4, 2 + i % 3:4 + i % 3] = 2
        case = f"case_{i:03d}.nii.gz"
        arrays["labelsTs"][case] = label
        for name, n_flips in (("base", 30), ("better", 12)):
            prediction = label.copy()
            flat = prediction.reshape(-1)
            flat[rng.choice(flat.size, n_flips, replace=False)] = rng.integers(0, 2, n_flips)  # labels 0/1 only
            arrays[name][case] = prediction
    del arrays["better"]["case_004.nii.gz"]
    arrays["better"]["case_999.nii.gz"] = arrays["base"]["case_000.nii.gz"]
    for name, cases in arrays.items():
        for case, array in cases.items():
            write_nifti(folders[name] / case, array)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"name": "Toy", "channel_names": {"0": "CT"}, "labels": LABELS,
                                        "numTraining": 6, "file_ending": ".nii.gz"}))
    return {"folders": folders, "arrays": arrays, "dataset_json": dataset_json}


def test_test_set_matches_hand_dice_and_pairs_shared_cases(labelled_test_set, tmp_path):
    folders, arrays = labelled_test_set["folders"], labelled_test_set["arrays"]
    comparison = C.compare_predictions(folders["labelsTs"], [("base", folders["base"]), ("better", folders["better"])],
                                       dataset_json=labelled_test_set["dataset_json"], out_dir=tmp_path / "out",
                                       num_processes=1)
    assert comparison.test_set and comparison.classes == ["1", "2", "foreground_mean"]
    hand = {name: {case: {str(k): hand_dice(arrays["labelsTs"][case], array, k) for k in (1, 2)}
                   for case, array in arrays[name].items() if case in arrays["labelsTs"]}
            for name in ("base", "better")}
    base, better = comparison.trainers
    for run in (base, better):
        assert run.cases.keys() == hand[run.name].keys()
        for case, metrics in run.cases.items():
            for key, value in metrics.items():
                truth = hand[run.name][case][key]
                assert (math.isnan(value) and math.isnan(truth)) or value == pytest.approx(truth, abs=1e-12)
    assert math.isnan(base.cases["case_005.nii.gz"]["2"])  # no tumor in the label, none predicted
    for paired in comparison.paired:
        assert_matches_oracle(paired, oracle_pairs(hand["better"], hand["base"], paired.key))
    assert comparison.paired[0].n == 5 and comparison.paired[1].n == 4  # case 4 missing; case 5 NaN for tumor
    assert any("better: no prediction for 1 of 6 label case(s) (case_004.nii.gz)" in w for w in comparison.warnings)
    assert any("1 prediction(s) without a label" in w and "case_999" in w for w in comparison.warnings)
    mean, std, n = base.case_mean_std("1")
    truth = [hand["base"][c]["1"] for c in sorted(hand["base"])]
    assert (mean, std, n) == pytest.approx((statistics.mean(truth), statistics.stdev(truth), 6), abs=1e-12)
    # named after dataset.json's "name" (its folder is no DatasetXXX_Name); no fold-mean chart on a test set
    assert comparison.written == [tmp_path / "out" / f"compare_Toy_labelsTs{suffix}"
                                  for suffix in (".csv", ".md", "_paired.png")]
    with open(comparison.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["trainer", "class", "mean", "std", "n_cases", *PAIRED_COLUMNS]
    assert float(rows[0]["mean"]) == pytest.approx(mean, abs=1e-12) and rows[0]["n_cases"] == "6"
    assert "cases found" in comparison.table() and "5/6" in comparison.table()


def test_test_set_cli_with_dataset_id(labelled_test_set, nnunet_dirs, tmp_path, capsys):
    raw = nnunet_dirs["nnUNet_raw"] / DATASET
    raw.mkdir()
    (raw / "dataset.json").write_text(labelled_test_set["dataset_json"].read_text())  # not preprocessed: raw is used
    folders = labelled_test_set["folders"]
    out = tmp_path / "cli"
    assert run_cli(["-d", "42", "--labels", str(folders["labelsTs"]), "--predictions", f"nnU-Net={folders['base']}",
                    str(folders["better"]), "-np", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: better: no prediction for 1 of 6" in captured.err
    assert f"{DATASET} labelsTs: test-set Dice, mean ± std over cases (n cases)" in captured.out
    assert "vs nnU-Net (reference)" in captured.out
    for suffix in (".csv", ".md", "_paired.png"):
        assert (out / f"compare_{DATASET}_labelsTs{suffix}").is_file()
    assert not (out / f"compare_{DATASET}_labelsTs.png").exists()  # no folds, no fold-mean chart


def test_test_set_regions_from_dataset_json(labelled_test_set, tmp_path):
    folders, arrays = labelled_test_set["folders"], labelled_test_set["arrays"]
    regions_json = tmp_path / "Dataset043_Regions" / "dataset.json"
    regions_json.parent.mkdir()
    regions_json.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "tumor": [2]},
                                        "regions_class_order": [1, 2], "file_ending": ".nii.gz"}))
    comparison = C.compare_predictions(folders["labelsTs"], [("base", folders["base"]), ("better", folders["better"])],
                                       dataset_json=regions_json, out_dir=None, num_processes=1)
    assert comparison.dataset == "Dataset043_Regions"
    assert comparison.classes == ["(1, 2)", "(2,)", "foreground_mean"]
    assert "(1, 2) (whole)" in comparison.table() and "(2,) (tumor)" in comparison.table()
    for run in comparison.trainers:
        for case, metrics in run.cases.items():
            reference, prediction = arrays["labelsTs"][case], arrays[run.name][case]
            whole = hand_dice(reference > 0, prediction > 0, True)
            assert metrics["(1, 2)"] == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["-d", "42", "-tr", "nnUNetTrainer"], "missing -c"),
    (["--labels", "{labels}", "--dataset-json", "{json}"], "needs both --labels FOLDER and --predictions"),
    (["--labels", "{labels}", "--predictions", "{base}", "-c", CONFIG, "--dataset-json", "{json}"],
     "-c belong to cross-validation results"),
    (["--labels", "{labels}", "--predictions", "{base}"], "give the dataset (-d DATASET"),
    (["--labels", "{labels}/nope", "--predictions", "{base}", "--dataset-json", "{json}"],
     "label folder {labels}/nope does not exist"),
    (["--labels", "{labels}", "--predictions", "a={base}", "a={better}", "--dataset-json", "{json}"],
     "prediction name given twice"),
    (["--labels", "{labels}", "--predictions", "{base}", "empty={empty}", "--dataset-json", "{json}"],
     "prediction folder {empty} (empty) has no .nii.gz file named like a label"),
    (["--labels", "{labels}", "--predictions", "{base}", "--dataset-json", "{bad_json}"],
     "is not a usable nnU-Net dataset.json"),
    (["--labels", "{labels}", "--predictions", "{base}", "--dataset-json", "{json}", "-d", "42"],
     "one of them"),
])
def test_cli_error_boundary(labelled_test_set, tmp_path, capsys, argv, message):
    folders = labelled_test_set["folders"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps({"labels": LABELS}))
    values = {"labels": folders["labelsTs"], "base": folders["base"], "better": folders["better"],
              "json": labelled_test_set["dataset_json"], "empty": tmp_path / "empty", "bad_json": tmp_path / "bad.json"}
    out = tmp_path / "out"
    assert run_cli([a.format(**values) for a in argv] + ["-np", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message.format(**values) in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


def test_mismatched_prediction_is_a_clear_error(labelled_test_set, tmp_path):
    folders = labelled_test_set["folders"]
    write_nifti(folders["base"] / "case_000.nii.gz", np.zeros((4, 8, 8)))  # wrong shape
    with pytest.raises(ValueError, match=r"nnU-Net's evaluator failed on .*base against .*labelsTs"):
        C.compare_predictions(folders["labelsTs"], [("base", folders["base"])],
                              dataset_json=labelled_test_set["dataset_json"], out_dir=tmp_path / "out", num_processes=1)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ training level
def test_mean_std_leaves_out_missing_values():
    """The one mean ± SD of compare and the accuracy benchmark: None and NaN do not count; one value has no SD."""
    assert T.mean_std([0.5, None, math.nan, 0.7]) == (pytest.approx(0.6), pytest.approx(statistics.stdev([0.5, 0.7])),
                                                       2)
    mean, sd, n = T.mean_std([0.4])
    assert (mean, n) == (0.4, 1) and math.isnan(sd)
    mean, sd, n = T.mean_std([None, math.nan])
    assert n == 0 and math.isnan(mean) and math.isnan(sd)


def test_pair_test_is_the_sign_test_below_six_nonzero_pairs_and_wilcoxon_from_six():
    # 3 pairs, all positive: exact sign test, p = 2 * (1/2)^3; two of three positive: p = 1
    assert T.pair_test([0.01, 0.02, 0.03]) == (pytest.approx(0.25, abs=1e-12), "sign test")
    assert T.pair_test([0.01, 0.02, -0.03]) == (pytest.approx(1.0, abs=1e-12), "sign test")
    # a tie is dropped: 5 positive of 5 non-zero, p = 2 / 32, still the sign test with 6 pairs
    assert T.pair_test([0.01, 0.02, 0.03, 0.04, 0.05, 0.0]) == (pytest.approx(0.0625, abs=1e-12), "sign test")
    assert T.pair_test([0.0, 0.0]) == (1.0, "sign test")
    # 6 pairs: exact signed-rank distribution of 2^6 sign patterns. All positive: only W- = 0, p = 2 / 64.
    assert T.pair_test([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == (pytest.approx(2 / 64, abs=1e-12), "Wilcoxon")
    # ranks 1..5 positive, 6 negative: W- = 6; subsets of {1..6} with sum <= 6: 1+1+1+2+2+3+4 = 14, p = 2 * 14 / 64
    assert T.pair_test([0.01, 0.02, 0.03, 0.04, 0.05, -0.06]) == (pytest.approx(28 / 64, abs=1e-12), "Wilcoxon")
    assert math.isnan(T.pair_test([])[0])


def test_clopper_pearson_interval_of_stalled_trainings():
    assert T.stall_interval(3, 12) == pytest.approx((0.0549, 0.5719), abs=5e-5)
    low, high = T.stall_interval(0, 5)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 5), abs=1e-9)  # 0.5218
    assert all(math.isnan(x) for x in T.stall_interval(0, 0))


def training(key, per_class, shift=0.0):
    """A training from {class: [Dice per case]}, every Dice + shift."""
    n = len(next(iter(per_class.values())))
    return T.Training.from_cases(key, {f"c{i}": {k: v[i] + shift for k, v in per_class.items()} for i in range(n)},
                                 list(per_class))


def test_training_dice_is_mean_over_classes_of_class_means_and_the_stall_rule():
    t = training("fold 0", {"1": [0.8, 0.9, math.nan], "2": [0.05, 0.12, 0.10]})
    assert t.class_dice == pytest.approx({"1": 0.85, "2": 0.09})
    assert t.foreground == pytest.approx((0.85 + 0.09) / 2)
    assert t.stalled and t.stalled_classes == ["2"]
    assert not training("f", {"1": [0.8], "2": [0.1]}).stalled  # 0.1 itself is not below 0.1
    assert not training("f", {"1": [0.8], "2": [math.nan]}).stalled  # a class absent from every case is no stall
    assert training("f", {"1": [0.8], "2": [math.nan]}).foreground == pytest.approx(0.8)
    # nnU-Net's foreground_mean when every class occurs: the summary of write_summary
    t = T.Training.from_cases("f", dict(as_cases(DICE["nnUNetTrainer"][0], 0)), [1, 2])
    assert t.foreground == pytest.approx(fold_dice("nnUNetTrainer", 0, "foreground_mean"), abs=1e-12)


def test_hierarchical_bootstrap_without_cases_is_the_bootstrap_of_the_pair_differences():
    differences = [0.04, 0.16, 0.03, -0.01, 0.02]
    pairs = [(T.Training(f"f{i}", {"1": 0.7 + d}), T.Training(f"f{i}", {"1": 0.7})) for i, d in enumerate(differences)]
    low, high = T.hierarchical_bootstrap_ci(pairs, n_resamples=2000)
    assert (low, high) == pytest.approx(oracle_bootstrap(differences, n_resamples=2000), abs=1e-12)
    assert low < sum(differences) / len(differences) < high
    same = [(T.Training(f"f{i}", {"1": 0.9}), T.Training(f"f{i}", {"1": 0.85})) for i in range(4)]
    assert T.hierarchical_bootstrap_ci(same) == pytest.approx((0.05, 0.05), abs=1e-12)
    assert all(math.isnan(x) for x in T.hierarchical_bootstrap_ci(pairs[:1]))  # one pair: no spread between pairs


def test_hierarchical_bootstrap_resamples_the_cases_inside_each_pair():
    rng = np.random.default_rng(5)
    references = [training(f"fold {f}", {"1": list(rng.uniform(0.5, 0.9, 30)), "2": list(rng.uniform(0.3, 0.9, 30))})
                  for f in range(4)]
    shifted = [T.Training(r.key, {k: v + 0.03 for k, v in r.class_dice.items()}, r.cases + 0.03, r.case_names)
               for r in references]
    # the same cases shifted by 0.03 in every pair: one case draw for both trainings, every resample differs by 0.03
    assert T.hierarchical_bootstrap_ci(list(zip(shifted, references))) == pytest.approx((0.03, 0.03), abs=1e-12)
    # noisy per-case differences that average to the same per-pair value: the case level widens the interval
    noisy = []
    for r in references:
        noise = rng.normal(0, 0.1, r.cases.shape)
        noise -= noise.mean(axis=0)  # class means unchanged: each training's Dice is exactly shifted by 0.03
        noisy.append(T.Training(r.key, {k: v + 0.03 for k, v in r.class_dice.items()}, r.cases + 0.03 + noise,
                                r.case_names))
    assert noisy[0].foreground == pytest.approx(references[0].foreground + 0.03, abs=1e-12)
    low, high = T.hierarchical_bootstrap_ci(list(zip(noisy, references)))
    assert low < 0.03 < high and high - low > 0.01
    assert T.hierarchical_bootstrap_ci(list(zip(noisy, references))) == (low, high)  # seeded


def test_compare_reports_trainings_per_fold_paired_by_fold(results, tmp_path):
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], out_dir=tmp_path)
    baseline, csse = comparison.trainings
    assert (baseline.n, csse.n) == (5, 3) and baseline.reference is None and csse.reference == "nnUNetTrainer"
    # hand-computed from DICE; fold 1 of CSSE has no label 2 at all: its Dice is label 1's, 0.87
    assert [t.foreground for t in baseline.trainings] == pytest.approx([0.75, 0.71, 0.785, 0.705, 0.755])
    assert [t.foreground for t in csse.trainings] == pytest.approx([0.79, 0.87, 0.815])
    assert [t.key for t in csse.trainings] == ["fold 0", "fold 1", "fold 2"]
    assert [r.key for _, r in csse.pairs] == ["fold 0", "fold 1", "fold 2"]
    assert csse.difference == pytest.approx((0.04 + 0.16 + 0.03) / 3)
    assert (csse.p_value, csse.test) == (pytest.approx(0.25), "sign test")  # 3 positive pairs
    assert csse.difference_ci[0] < csse.difference < csse.difference_ci[1]
    assert csse.sd == pytest.approx(statistics.stdev([0.79, 0.87, 0.815]))
    assert (csse.stalled, baseline.stalled) == (0, 0)
    text = comparison.table()
    assert "+0.0767 [" in text and "0.2500 (sign test)" in text and "0/5 [0.000, 0.522]" in text
    assert "fold 1: 0.8700" in text and "validation cases pooled over 3 trainings, folds 0,1,2" in text
    markdown = comparison.md_path.read_text()
    assert "| nnUNetTrainerCSSE | 3 | 0/3 [0.000, 0.708] | 0.8250 ± 0.0409 [" in markdown
    assert "## Training level (one fold = one training; pairs: same fold)" in markdown
    assert "stalled: some foreground class" in markdown
    single = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], folds=[0], out_dir=None)
    assert "validation cases within one training, fold 0" in single.table()
    assert "0.7900 (one training)" in single.table() and "+0.0400 n/a" in single.table()


def test_compare_counts_stalled_folds(nnunet_dirs):
    root = nnunet_dirs["nnUNet_results"]
    write_trainer(root, "nnUNetTrainer", {f: as_cases(DICE["nnUNetTrainer"][f], f) for f in range(3)})
    stalled = {f: as_cases(DICE["nnUNetTrainer"][f], f) for f in range(3)}
    stalled[1] = as_cases({1: (0.8, 0.9), 2: (0.0, 0.15)}, 1)  # tumor mean 0.075 < 0.1
    write_trainer(root, "nnUNetTrainerCSSE", stalled)
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainer", "nnUNetTrainerCSSE"], folds=[0, 1, 2],
                                    out_dir=None)
    csse = comparison.trainings[1]
    assert csse.stalled == 1 and csse.trainings[1].stalled_classes == ["2 (tumor)"]
    assert csse.stall_ci == pytest.approx(T.stall_interval(1, 3))
    assert csse.differences == pytest.approx([0.0, (0.85 + 0.075) / 2 - 0.71, 0.0])
    assert "fold 1: 0.4625 (stalled: 2 (tumor) 0.075)" in comparison.table()
    assert "1/3 [0.008, 0.906]" in comparison.table()


def test_trainings_figure_has_a_dot_per_training_and_the_mean_with_its_ci():
    references = [T.Training(f"fold {f}", {"1": 0.8 + 0.01 * f, "2": 0.7}) for f in range(4)]
    others = [T.Training(f"fold {f}", {"1": 0.85, "2": 0.05 if f == 0 else 0.75}) for f in range(3)]
    groups = [("20x50", T.summarize_trainings({"baseline": references, "CSSE": others}, "baseline")),
              ("80x50", T.summarize_trainings({"baseline": references[:2]}, "baseline"))]
    figure = T.trainings_figure(groups, "title")
    assert len(figure.axes) == 2 and [ax.get_title() for ax in figure.axes] == ["20x50", "80x50"]
    ax = figure.axes[0]
    dots = [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]  # dots, then crosses
    assert dots == [4, 0, 2, 1]
    whiskers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    csse = groups[0][1][1]
    assert float(whiskers[1].lines[0].get_ydata()[0]) == pytest.approx(csse.mean)
    segment = whiskers[1].lines[2][0].get_segments()[0]
    assert (segment[0][1], segment[1][1]) == pytest.approx(csse.mean_ci)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline\nn=4, stalled 0", "CSSE\nn=3, stalled 1"]
    figure.savefig(io.BytesIO(), format="png")
