"""The demo at a reduced budget: it runs end to end, prints finite Dice for both trainers, and resumes; its figure
(colorbar, class legend, Dice in the titles) on fake inputs, without touching process-wide state."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import SimpleITK as sitk

import nnunet_csse.uncertainty
from nnunet_csse.environment import trainers_path
from nnunet_csse.tools import demo as D


def demo(workdir, *extra: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-csse")
    cmd = [exe, "demo", "--workdir", str(workdir), "--epochs", "1", "--iterations", "3", "--cases", "5",
           "--test-cases", "2", "--size", "48", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.e2e
def test_demo_runs_reports_and_resumes(tmp_path, monkeypatch):
    # the demo never uses the user's nnU-Net folders, even when they are set
    user = tmp_path / "user_nnunet"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (user / name).mkdir(parents=True)
        monkeypatch.setenv(name, str(user / name))
    workdir = tmp_path / "demo"
    out = demo(workdir)
    for stage in ("[dataset]", "[plan]", "[train]", "[predict]", "[evaluate]"):
        assert stage in out
    rows = dict(re.findall(r"^(structure_\d|mean \(fg\))\s+(.+)$", out, re.M))
    assert set(rows) == {"structure_1", "structure_2", "structure_3", "mean (fg)"}
    for values in rows.values():
        numbers = [float(v) for v in values.split()]
        assert len(numbers) == 2 and all(math.isfinite(v) and 0 <= v <= 1 for v in numbers)
    assert (workdir / "demo_figure.png").stat().st_size > 10_000
    assert not any(p for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
                   for p in (user / name).iterdir())

    assert "1 epochs x 3 iterations, seed 0, device cpu" in out
    assert "perform_everything_on_device" not in out and "FutureWarning" not in out  # nnU-Net's and torch's noise

    again = demo(workdir)  # every finished stage is reused
    assert again.count("reusing") >= 6 and "nnUNetv2_train" not in again
    assert re.search(r"^mean \(fg\)\s+(.+)$", again, re.M).group(1) == rows["mean (fg)"]

    # another budget and seed in the same folder: refused before anything is written, not relabelled
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-csse")
    other = subprocess.run([exe, "demo", "--workdir", str(workdir), "--epochs", "2", "--iterations", "3", "--cases",
                            "5", "--test-cases", "2", "--size", "48", "--seed", "7"], capture_output=True, text=True,
                           timeout=900)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "holds a demo made with other settings" in other.stderr and "--reset" in other.stderr
    assert "dataset_seed 0 -> 7" in other.stderr
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------------------- reuse
def finished_demo(workdir, **settings) -> D.Demo:
    """The records and outputs a finished demo leaves (no training: only what the reuse checks read)."""
    made = D.Demo(D.DemoSettings(workdir=workdir, **settings))
    for stage, output in made.stage_outputs().items():
        output.mkdir(parents=True, exist_ok=True)
        made.start_stage(stage)
    return made


@pytest.mark.parametrize("change, differences", [
    ({"epochs": 3, "iterations": 5}, ["train_baseline:", "epochs 10 -> 3", "iterations 40 -> 5"]),
    ({"seed": 7}, ["dataset:", "dataset_seed 0 -> 7"]),
    ({"cases": 8}, ["dataset:", "cases 16 -> 8"]),
    ({"size": 64}, ["dataset:", "size 96 -> 64"]),
    ({"dim": "3d"}, ["dataset:", "dim 2d -> 3d"]),
])
def test_a_demo_with_other_settings_is_refused_before_anything_is_written(tmp_path, capsys, change, differences):
    from nnunet_csse.tools.cli import main

    workdir = tmp_path / "demo"
    finished_demo(workdir)
    before = {p: p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")}
    argv = ["demo", "--workdir", str(workdir), "--device", "cpu"]
    for key, value in change.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {workdir.resolve()} holds a demo made with other settings (") and \
        err.count("\n") == 1
    for text in differences:
        assert text in err
    assert "Run with --reset to replace it, or give another --workdir" in err
    assert {p: p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")} == before


def test_demo_outputs_without_a_record_are_not_reused(tmp_path, capsys):
    """A workdir of a demo that kept no records (or of something else): its settings are unknown."""
    from nnunet_csse.tools.cli import main

    made = finished_demo(tmp_path / "demo")
    made.record_path("train_CSSE").unlink()
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "without a record of the settings they were made with" in err and "--reset" in err
    assert "nnUNetTrainerCSSE_demo__" in err


def test_the_report_labels_come_from_the_records_of_the_models(tmp_path):
    made = finished_demo(tmp_path / "demo", epochs=3, iterations=5, seed=7)
    assert D.Demo(D.DemoSettings(workdir=tmp_path / "demo", epochs=3, iterations=5, seed=7)).check_reusable() is None
    trained = made.trained_with()
    assert (trained["epochs"], trained["iterations"], trained["seed"]) == (3, 5, 7)
    record = made.record_path("train_CSSE")
    record.write_text(record.read_text().replace('"epochs": 3', '"epochs": 4'))
    with pytest.raises(ValueError, match="no matching records"):
        made.trained_with()


# ------------------------------------------------------------------------------------------- the figure
NAMES = {1: "structure_1", 2: "structure_2", 3: "structure_3"}


def label_map(seed: int, shape=(1, 24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


def test_figure_has_colorbar_class_legend_and_dice_titles():
    image = np.random.default_rng(0).normal(size=(1, 24, 32)).astype(np.float32)
    predictions = {"baseline": (label_map(1), {1: 0.85, 2: 0.7, 3: 0.0}),
                   "CSSE": (label_map(2), {1: 0.9, 2: 0.6, 3: math.nan})}
    fig = D.demo_figure(image, label_map(0), predictions, np.full(image.shape, 0.5), NAMES, "demo")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["image", "ground truth"]
    assert titles[2] == "baseline prediction\nDice 0.85 / 0.70 / 0.00, mean 0.52"
    assert titles[3] == "CSSE prediction\nDice 0.90 / 0.60 / n/a, mean 0.75"  # n/a: absent from truth and prediction
    assert "UAFS uncertainty H" in titles[4]
    # the uncertainty panel has a colorbar from 0 to 1 that says what H is
    colorbars = [im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None]
    assert len(colorbars) == 1 and colorbars[0].mappable.get_clim() == (0, 1)
    assert "normalized entropy" in colorbars[0].ax.get_ylabel() and "0 = certain" in colorbars[0].ax.get_ylabel()
    # one legend for the class colours, matching the colours drawn
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["0: background", "1: structure_1", "2: structure_2",
                                                          "3: structure_3"]
    truth_rgb = fig.axes[1].images[0].get_array()
    assert np.allclose(truth_rgb[label_map(0)[0] == 2][0], legend.legend_handles[2].get_facecolor()[:3])
    assert "Dice" in fig.get_suptitle()


def write_nifti(array: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


class FakePredictor:
    """Records nnUNet_extTrainer at the trainer lookup; the real lookup needs a trained model."""

    ext_trainer_at_lookup: list = []

    def __init__(self, **kwargs) -> None:
        pass

    def initialize_from_trained_model_folder(self, folder, use_folds):
        FakePredictor.ext_trainer_at_lookup.append(os.environ.get("nnUNet_extTrainer"))


def test_demo_figure_leaves_process_state_alone(tmp_path, monkeypatch):
    """Demo.figure from the demo's files (predictor faked): nnUNet_extTrainer set only during the trainer lookup,
    no pyplot and no backend switch, and the per-case Dice of nnU-Net's summary.json in the titles."""
    demo = D.Demo(D.DemoSettings(workdir=tmp_path))
    for label in D.TRAINERS:
        demo.start_stage(f"train_{label}")  # the figure's title comes from what the models were trained with
    write_nifti(np.zeros((1, 24, 32), np.float32), demo.dataset_folder / "imagesTs" / "case_0000.nii.gz")
    write_nifti(label_map(0), demo.dataset_folder / "labelsTs" / "case.nii.gz")
    (demo.dataset_folder / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, **{name: v for v, name in NAMES.items()}}, "file_ending": ".nii.gz"}))
    for i, label in enumerate(D.TRAINERS):
        folder = tmp_path / "predictions" / label
        write_nifti(label_map(i + 1), folder / "case.nii.gz")
        metrics = {str(v): {"Dice": 0.5 + 0.1 * i + 0.01 * v} for v in NAMES}
        (folder / "summary.json").write_text(json.dumps({
            "mean": metrics, "foreground_mean": {"Dice": 0.5}, "metric_per_case": [
                {"prediction_file": str(folder / "other.nii.gz"), "reference_file": "labelsTs/other.nii.gz",
                 "metrics": {"1": {"Dice": 0.0}}},
                {"prediction_file": str(folder / "case.nii.gz"), "reference_file": "labelsTs/case.nii.gz",
                 "metrics": metrics}]}))
    import nnunetv2.inference.predict_from_raw_data as predict_module

    monkeypatch.setattr(predict_module, "nnUNetPredictor", FakePredictor)
    monkeypatch.setattr(nnunet_csse.uncertainty, "preprocess_case",
                        lambda predictor, files: (np.ones((1, 1, 24, 32), np.float32), None, {}))
    monkeypatch.setattr(nnunet_csse.uncertainty, "predict_uncertainty", lambda predictor, data: None)
    monkeypatch.setattr(nnunet_csse.uncertainty, "to_input_geometry",
                        lambda maps, predictor, properties: np.full((1, 1, 24, 32), 0.3, np.float32))
    figures, real_figure = [], D.demo_figure
    monkeypatch.setattr(D, "demo_figure", lambda *args: figures.append(real_figure(*args)) or figures[-1])
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("matplotlib.use called"))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing pyplot fails
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    FakePredictor.ext_trainer_at_lookup = []
    before = dict(os.environ)

    path = demo.figure()

    assert dict(os.environ) == before
    assert FakePredictor.ext_trainer_at_lookup == [trainers_path()]
    assert path == tmp_path / "demo_figure.png" and path.read_bytes()[:4] == b"\x89PNG"
    titles = [ax.get_title() for ax in figures[0].axes]
    assert "baseline prediction\nDice 0.51 / 0.52 / 0.53, mean 0.52" in titles
    assert "CSSE prediction\nDice 0.61 / 0.62 / 0.63, mean 0.62" in titles



@pytest.mark.parametrize("option, value, message", [
    ("--cases", "4", "--cases must be >= 5 (nnU-Net's 5-fold"), ("--epochs", "0", "--epochs must be >= 1"),
    ("--test-cases", "0", "--test-cases must be >= 1"), ("--size", "8", "--size must be >= 16"),
])
def test_bad_demo_settings_are_one_error_line_before_anything_is_written(tmp_path, capsys, option, value, message):
    from nnunet_csse.tools.cli import main

    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--device", "cpu", option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not workdir.exists()
