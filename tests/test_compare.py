"""``nnunet-csse compare`` on fake nnU-Net results folders (summary.json written by nnU-Net's own writer)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics

import numpy as np
import pytest
from nnunetv2.evaluation.evaluate_predictions import save_summary_json

from nnunet_csse import compare as C

DATASET = "Dataset042_Toy"
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


def write_summary(path, per_class):
    """summary.json exactly as nnU-Net's compute_metrics_on_folder builds it (two validation cases)."""
    keys = list(per_class)
    cases = []
    for c in range(2):
        metrics = {}
        for k in keys:
            dice = per_class[k][c]
            metrics[k] = {"Dice": dice, "IoU": dice / (2 - dice) if not math.isnan(dice) else dice,
                          "FP": 3, "TP": 40, "FN": 5, "TN": 1000, "n_pred": 43, "n_ref": 45}
        cases.append({"reference_file": f"/gt/case_{c}.nii.gz", "prediction_file": f"/pred/case_{c}.nii.gz",
                      "metrics": metrics})
    metric_list = list(cases[0]["metrics"][keys[0]])
    with _nowarn():
        means = {k: {m: float(np.nanmean([c["metrics"][k][m] for c in cases])) for m in metric_list} for k in keys}
    foreground = {m: float(np.mean([means[k][m] for k in keys if k != 0])) for m in metric_list}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_summary_json({"metric_per_case": cases, "mean": means, "foreground_mean": foreground}, str(path))


class _nowarn:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN, as in nnU-Net

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def make_results(root, dice=DICE, plans="nnUNetPlans", labels=None):
    for trainer, folds in dice.items():
        folder = root / DATASET / f"{trainer}__{plans}__{CONFIG}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(
            {"labels": labels or {"background": 0, "liver": 1, "tumor": 2}, "file_ending": ".nii.gz"}))
        for fold, per_class in folds.items():
            write_summary(folder / f"fold_{fold}" / "validation" / "summary.json", per_class)
            (folder / f"fold_{fold}" / "checkpoint_final.pth").touch()


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
    parser = argparse.ArgumentParser(prog="nnunet-csse")
    C.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *argv])
    return args.func(args)


@pytest.fixture
def results(nnunet_dirs):
    make_results(nnunet_dirs["nnUNet_results"])
    return nnunet_dirs["nnUNet_results"]


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
                             "fold_4"]
    assert [(r["trainer"], r["class"]) for r in rows] == [
        (t, k) for t in ("nnUNetTrainer", "nnUNetTrainerCSSE") for k in ("1", "2", "foreground_mean")]
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
    data = comparison.png_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli_table_and_missing_fold_warning(results, tmp_path, capsys):
    assert run_cli(["-d", "42", "-c", CONFIG, "-tr", "nnUNetTrainer", "nnUNetTrainerCSSE", "--out",
                    str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning: nnUNetTrainerCSSE: no validation/summary.json for fold(s) 3,4" in captured.err
    assert "nnUNetTrainer:" not in captured.err
    out = captured.out
    mean, std, _ = expected("nnUNetTrainer", "1")
    assert f"{mean:.4f} ± {std:.4f} (5)" in out
    mean, std, _ = expected("nnUNetTrainerCSSE", "foreground_mean")
    assert f"{mean:.4f} ± {std:.4f} (2)" in out  # nnU-Net's foreground_mean is NaN in the fold without label 2
    assert "1 (liver)" in out and "2 (tumor)" in out and "foreground_mean" in out
    assert "5/5: 0,1,2,3,4" in out and "3/5: 0,1,2" in out
    assert (tmp_path / f"compare_{DATASET}_{CONFIG}.csv").is_file()
    assert (tmp_path / f"compare_{DATASET}_{CONFIG}.png").is_file()


def test_fold_subset_and_single_fold(results, tmp_path):
    comparison = C.compare_trainers(42, CONFIG, ["nnUNetTrainerCSSE"], folds=[0], out_dir=None)
    assert comparison.warnings == [] and comparison.csv_path is None
    mean, std, n = comparison.trainers[0].mean_std("1")
    assert n == 1 and mean == pytest.approx(0.88) and math.isnan(std)


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
    with pytest.raises(ValueError, match="TRAINER__PLANS"):
        C.compare_trainers(42, CONFIG, ["a__b__c"], out_dir=None)
