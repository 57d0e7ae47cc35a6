"""compare's messages and bar chart: a class with Dice 0 is labelled "0.000" (a bar of height 0 is invisible), a
misspelt configuration is named with the configurations that have results."""

from __future__ import annotations

import json

from nnunet_csse.tools import compare as C


def write_run(results, trainer: str, dice: dict[str, float]) -> None:
    folder = results / "Dataset042_Toy" / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0" / "validation").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2},
                                                     "file_ending": ".nii.gz"}))
    metrics = {k: {"Dice": v} for k, v in dice.items()}
    finite = [v for v in dice.values() if v == v]
    (folder / "fold_0" / "validation" / "summary.json").write_text(json.dumps({
        "mean": metrics, "foreground_mean": {"Dice": sum(finite) / len(finite)},
        "metric_per_case": [{"reference_file": "gt/case.nii.gz", "prediction_file": "case.nii.gz",
                             "metrics": metrics}]}))


def test_a_dice_of_zero_is_labelled(nnunet_dirs):
    results = nnunet_dirs["nnUNet_results"]
    write_run(results, "nnUNetTrainer", {"1": 0.8, "2": 0.0})
    write_run(results, "nnUNetTrainerCSSE", {"1": 0.9, "2": 0.5})
    comparison = C.compare_trainers(42, "3d_fullres", ["nnUNetTrainer", "nnUNetTrainerCSSE"], folds=[0],
                                    out_dir=None)
    ax = C.fold_mean_figure(comparison).axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("0.000") == 1 and "0.800" in labels and "0.500" in labels


def test_a_misspelt_configuration_names_those_with_results(nnunet_dirs, tmp_path, capsys):
    from nnunet_csse.tools.cli import main

    write_run(nnunet_dirs["nnUNet_results"], "nnUNetTrainer", {"1": 0.8, "2": 0.6})
    assert main(["compare", "-d", "42", "-c", "3d_fulres", "-tr", "nnUNetTrainer", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Configurations with results: ['3d_fullres']; check -c" in err and "nnUNetv2_train" not in err
