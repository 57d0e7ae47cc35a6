"""The accuracy benchmark (``python -m benchmarks accuracy``) and its trainers (``nnunet_csse.schedules``).

Unit tests drive the trainers in process through nnU-Net's ``get_trainer_from_args`` on the toy dataset of
``tests/toy_plans.py``; the end-to-end test runs the benchmark entry on a small generated dataset through nnU-Net's
console scripts on CPU, twice (the second invocation reuses the finished runs).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.utilities.crossval_split import generate_crossval_split
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_csse import schedules
from nnunet_csse.environment import trainers_path
from nnunet_csse.subsets import training_subset
from nnunet_csse.tools import splits
from nnunet_csse.tools.synthetic import write_synthetic_dataset
from tests.toy_plans import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import accuracy, records  # noqa: E402
from benchmarks.__main__ import main as main_benchmarks  # noqa: E402
from nnunet_csse.tools import trainings  # noqa: E402

BENCHMARK_TRAINERS = ("nnUNetTrainer_benchmark", "nnUNetTrainerUAFS_benchmark", "nnUNetTrainerPDCR_benchmark",
                      "nnUNetTrainerCSSE_benchmark", "nnUNetTrainerCSSE_authors_benchmark")


def oracle_subset(train_keys: list[str], fraction: float, fold: int, seed: int = 0) -> list[str]:
    """The expected training subset, computed here independently of the trainer: round half up, at least 1, drawn
    from the sorted keys by RandomState([seed, fold]), kept in the split's order."""
    n = len(train_keys)
    size = min(n, max(1, int(np.floor(fraction * n + 0.5))))
    candidates = sorted(train_keys)
    chosen = {candidates[i] for i in np.random.RandomState([seed, fold]).permutation(n)[:size]}
    return [k for k in train_keys if k in chosen]


# ----------------------------------------------------------------------------------------------- trainers
def test_benchmark_trainers_are_found_by_nnunet_and_picklable(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    for name in BENCHMARK_TRAINERS:
        cls = getattr(schedules, name)
        assert recursive_find_trainer_class_by_name(name) is cls
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert set(records.TRAINER_ALIASES.values()) == set(BENCHMARK_TRAINERS)


@pytest.fixture
def toy(nnunet_dirs, monkeypatch):
    """Dataset042_Toy with nnU-Net's 13-case split."""
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    folder = write_toy_dataset(nnunet_dirs["nnUNet_preprocessed"])
    cases = [f"case_{i:02d}" for i in range(13)]
    for case in cases:  # the cases nnunet-csse split checks the split against (empty files)
        (folder / "nnUNetPlans_3d_fullres" / f"{case}.b2nd").touch()
    splits = generate_crossval_split(cases, seed=12345, n_splits=5)
    (folder / "splits_final.json").write_text(json.dumps(splits))
    return {"folder": folder, "splits": splits, "dirs": nnunet_dirs}


def start(trainer: str, plans: str = "nnUNetPlans", fold: int = 1):
    """What ``nnUNetv2_train 42 3d_fullres FOLD -tr TRAINER -p PLANS -device cpu`` builds first."""
    return get_trainer_from_args("42", "3d_fullres", fold, trainer, plans, device=torch.device("cpu"))


@pytest.mark.parametrize("trainer", ["nnUNetTrainer", "nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark"])
def test_every_trainer_trains_on_the_installed_limited_split(toy, trainer):
    """The one limited-data path: ``nnunet-csse split --install`` changes what nnU-Net's own do_split reads, so the
    plain nnUNetTrainer gets the same subset as the benchmark trainers, whatever their run seed."""
    fold = 1
    full = toy["splits"][fold]
    expected = oracle_subset(full["train"], 0.25, fold)
    assert len(expected) == 3 and len(full["train"]) == 10  # round(0.25 * 10) = 2.5 -> 3 (half up)
    splits.make_limited_split(42, 0.25, seed=0, install=True)
    try:
        t = start(trainer, fold=fold)
        tr, val = t.do_split()
        assert (tr, val) == (expected, full["val"]) and t.do_split() == (tr, val)
        assert training_subset(full["train"], 0.25, fold) == expected
        if trainer.endswith("_benchmark"):  # what the benchmark reads back
            schedule = json.loads((Path(t.output_folder) / schedules.SCHEDULE_FILE).read_text())
            assert (schedule["train_cases"], schedule["val_cases"]) == (expected, full["val"])
    finally:
        splits.restore_full_split(42)
    assert start(trainer, fold=fold).do_split() == (full["train"], full["val"])  # restored: nnU-Net's split


def test_runs_are_listed_grouped_by_trainer_fraction_and_seed_with_their_folds():
    runs = [records.Run(t, f, fold, seed, "P") for seed in (0, 1) for f in (1.0, 0.25) for fold in (0, 1, 2)
            for t in ("A", "B") if not (t == "B" and seed == 1)]
    runs.append(records.Run("A", 1.0, 4, 0, "P"))  # a late fold joins its group, not a new one
    assert records.describe_runs(runs) == (
        "A, fraction 1, seed 0, folds 0, 1, 2, 4; B, fraction 1, seed 0, folds 0, 1, 2; "
        "A, fraction 0.25, seed 0, folds 0, 1, 2; B, fraction 0.25, seed 0, folds 0, 1, 2; "
        "A, fraction 1, seed 1, folds 0, 1, 2; A, fraction 0.25, seed 1, folds 0, 1, 2")
    assert records.describe_runs(runs[:1]) == "A, fraction 1, seed 0, fold 0"
    assert records.describe_runs([]) == ""


def test_same_seed_gives_the_same_unet_weights_in_baseline_and_csse(toy, monkeypatch):
    """Seeded before the network is built: the U-Net part starts identical in every trainer; another seed differs."""
    def unet_weights(trainer: str, seed: int) -> dict[str, torch.Tensor]:
        monkeypatch.setenv(schedules.ENV_SEED, str(seed))
        t = start(trainer, "nnUNetPlans", 0)
        t.initialize()
        return {k: v for k, v in t.network.state_dict().items() if k.startswith(("encoder.", "decoder."))}

    baseline, csse, other = (unet_weights("nnUNetTrainer_benchmark", 5), unet_weights("nnUNetTrainerCSSE_benchmark", 5),
                             unet_weights("nnUNetTrainer_benchmark", 6))
    assert baseline.keys() == csse.keys() and len(baseline) > 10
    assert all(torch.equal(baseline[k], csse[k]) for k in baseline)
    assert not all(torch.equal(baseline[k], other[k]) for k in baseline)


def test_budget_and_threads_come_from_the_environment_and_are_written_next_to_the_log(toy, monkeypatch):
    for name, value in ((schedules.ENV_EPOCHS, "3"), (schedules.ENV_ITERATIONS, "4"),
                        (schedules.ENV_VAL_ITERATIONS, "2"), (schedules.ENV_SAVE_EVERY, "1"),
                        (schedules.ENV_THREADS, "1"), (schedules.ENV_SEED, "7")):
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    try:
        t = start("nnUNetTrainerPDCR_benchmark")
        assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.save_every) == (3, 4, 2, 1)
        assert torch.get_num_threads() == 1
        assert json.loads((Path(t.log_file).parent / schedules.SCHEDULE_FILE).read_text()) == {
            "epochs": 3, "iterations": 4, "val_iterations": 2, "seed": 7, "torch_threads": 1, "save_every": 1}
    finally:
        torch.set_num_threads(threads)


def test_demo_trainers_read_the_same_variables_with_their_own_defaults(toy, monkeypatch):
    for name in (schedules.ENV_EPOCHS, schedules.ENV_ITERATIONS, schedules.ENV_SEED, schedules.ENV_SAVE_EVERY):
        monkeypatch.delenv(name, raising=False)
    demo = start("nnUNetTrainer_demo")
    assert (demo.num_epochs, demo.num_iterations_per_epoch, demo.num_val_iterations_per_epoch, demo.save_every,
            demo.schedule_seed) == (10, 50, 4, 1, 0)
    benchmark = start("nnUNetTrainer_benchmark")
    assert (benchmark.num_epochs, benchmark.num_iterations_per_epoch, benchmark.save_every) == (1000, 250, 50)
    monkeypatch.setenv(schedules.ENV_EPOCHS, "2")
    assert start("nnUNetTrainerCSSE_demo").num_epochs == 2


@pytest.mark.parametrize(("value", "message"), [("ten", "is not an integer"), ("0", "must be >= 1"),
                                                ("1.5", "is not an integer")])
def test_bad_schedule_variable_is_refused_naming_it_before_anything_is_written(toy, monkeypatch, value, message):
    monkeypatch.setenv(schedules.ENV_EPOCHS, value)
    for trainer in ("nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_demo"):
        with pytest.raises(ValueError, match=rf"^environment variable {schedules.ENV_EPOCHS}=.* {message}"):
            start(trainer)
    assert not any(toy["dirs"]["nnUNet_results"].iterdir())


@pytest.mark.parametrize("value", [0, 1.5, -0.25, "nan", "a quarter", True])
def test_invalid_fraction_is_refused_before_anything_is_written(value, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        accuracy.check_fractions([value])
    # the benchmark entry: exit code 2, the message, and no work folder
    workdir = tmp_path / "never"
    assert accuracy.main(["--fractions", "1.0", str(value), "--workdir", str(workdir), "--device", "cpu"]) == 2
    assert "--fractions" in capsys.readouterr().err and not workdir.exists()


def test_absent_data_says_what_to_pass_in_one_line(tmp_path, capsys):
    workdir = tmp_path / "work"
    assert accuracy.main(["--workdir", str(workdir), "--device", "cpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--convert-from DIR" in err and "images/NAME.nii.gz" in err
    assert not workdir.exists()


def test_report_only_without_preprocessed_data_says_to_train_first(tmp_path, capsys):
    workdir = tmp_path / "work"
    write_synthetic_dataset(workdir / "nnUNet_raw", 906, "ReportToy", dim=3, num_cases=5, size=16, seed=0)
    before = sorted(workdir.rglob("*"))
    assert accuracy.main(["-d", "906", "--workdir", str(workdir), "--device", "cpu", "--report-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--report-only" in err and "not preprocessed" in err
    assert sorted(workdir.rglob("*")) == before  # nothing planned or preprocessed


def test_convert_from_writes_nnunet_raw_format(tmp_path):
    source = tmp_path / "copy"
    for sub in ("images", "labels"):
        (source / sub).mkdir(parents=True)
    for name in ("hippocampus_001", "hippocampus_007"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(source / "images" /
                                                                                     f"{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(source / "labels" / f"{name}.nii.gz"))
    (source / "images" / "._hippocampus_001.nii.gz").write_bytes(b"")  # macOS resource fork: ignored
    raw = tmp_path / "nnUNet_raw"
    raw.mkdir()
    folder = accuracy.convert_hippocampus(source, raw, 4)
    assert folder.name == "Dataset004_Hippocampus"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["hippocampus_001_0000.nii.gz",
                                                                        "hippocampus_007_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["hippocampus_001.nii.gz",
                                                                        "hippocampus_007.nii.gz"]
    assert sitk.ReadImage(str(folder / "imagesTr" / "hippocampus_007_0000.nii.gz")).GetSize() == (6, 5, 4)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["numTraining"] == 2
    assert dataset["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert dataset["file_ending"] == ".nii.gz"
    assert accuracy.convert_hippocampus(source, raw, 4) == folder  # reused
    (source / "labels" / "hippocampus_007.nii.gz").unlink()
    with pytest.raises(ValueError, match="without a label"):
        accuracy.convert_hippocampus(source, raw, 4)


# ----------------------------------------------------------------------------------------------- end to end
def _benchmark_env() -> dict[str, str]:
    """The environment of a benchmark subprocess: this checkout importable, one export / evaluation worker (these
    machines have 2 cores)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
                nnUNet_def_n_proc="1")


def _benchmark(workdir: Path, out: Path, *extra: str, folds: tuple[str, ...] = ("0",)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks", "accuracy", "-d", "905", "-c", "3d_fullres", "--preset", "cpu_tiny",
           "--trainers", "nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark", "--folds", *folds,
           "--fractions", "1.0", "0.5", "--epochs", "1", "--iterations", "2", "--val-iterations", "1",
           "--device", "cpu", "--threads", "1", "--workdir", str(workdir), "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=_benchmark_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.e2e
def test_benchmark_trains_compares_and_reuses_finished_runs(tmp_path):
    workdir, out = tmp_path / "work", tmp_path / "out"
    # 5 cases: nnU-Net's 5-fold split gives fold 0 four training cases and one validation case
    write_synthetic_dataset(workdir / "nnUNet_raw", 905, "AccuracyToy", dim=3, num_cases=5, size=32, seed=3)
    first = _benchmark(workdir, out).stdout
    budget = "budget: 1 epochs x 2 iterations (+ 1 validation iterations per epoch) | patch [32, 32, 32] | batch 2"
    assert budget in first and "device cpu | torch threads 1" in first
    assert "[run 4/4] nnUNetTrainerCSSE_benchmark, fraction 0.5, fold 0, seed 0: done in" in first
    assert "[split] training on the limited split of fraction 0.5 (subset seed 0)" in first

    results = out / "Dataset905_AccuracyToy__nnUNetPlansCSSE_cpu_tiny__3d_fullres__e1x2_val1"
    preprocessed = workdir / "nnUNet_preprocessed" / "Dataset905_AccuracyToy"
    splits_file = json.loads((preprocessed / "splits_final.json").read_text())
    ids = sorted(f"accuracytoy_{i:03d}" for i in range(5))
    assert splits_file == generate_crossval_split(ids, seed=12345, n_splits=5)  # the full split restored after the runs
    assert not (preprocessed / splits.BACKUP_FILE).exists()
    full_train, val = splits_file[0]["train"], splits_file[0]["val"]
    expected_subset = oracle_subset(full_train, 0.5, 0)
    assert len(full_train) == 4 and len(expected_subset) == 2
    derived = json.loads((preprocessed / "nnUNetPlansCSSE_cpu_tiny_frac50.json").read_text())
    assert derived["plans_name"] == "nnUNetPlansCSSE_cpu_tiny_frac50"
    assert "training_fraction" not in json.dumps(derived)  # the split file chooses the cases, not the plans

    recorded = {}
    for trainer in ("nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark"):
        for plans, fraction in (("nnUNetPlansCSSE_cpu_tiny", 1.0), ("nnUNetPlansCSSE_cpu_tiny_frac50", 0.5)):
            r = json.loads((results / "runs" / f"{trainer}__{plans}__fold0__seed0.json").read_text())
            recorded[trainer, fraction] = r
            assert (r["trainer"], r["fraction"], r["fold"], r["seed"], r["plans"]) == (trainer, fraction, 0, 0, plans)
            b = r["budget"]
            assert (b["epochs"], b["iterations_per_epoch"], b["val_iterations_per_epoch"]) == (1, 2, 1)
            assert (b["patch_size"], b["batch_size"], b["features"], b["device"], b["torch_threads"]) == \
                ([32, 32, 32], 2, [4, 8, 16, 32], "cpu", 1)
            assert r["wall_s"] > 0 and r["warnings"] == [] and r["val_cases"] == len(val) == 1
            assert set(r["validation"]["dice"]) == {"structure_1", "structure_2"}
            assert r["validation"]["cases"] == 1
            c = r["curves"]  # nnU-Net's per-epoch logging
            assert len(c["train_losses"]) == len(c["val_losses"]) == len(c["ema_fg_dice"]) == 1
            assert len(c["dice_per_class_or_region"][0]) == 2 and np.isfinite(c["train_losses"][0])
            assert ("pdcr_encoder" in c) == ("CSSE" in trainer)
            # the run trained on what nnU-Net's do_split read: the installed limited split for 0.5
            schedule = json.loads((workdir / r["fold_folder"] / schedules.SCHEDULE_FILE).read_text())
            assert (schedule["epochs"], schedule["iterations"], schedule["val_iterations"], schedule["seed"]) == \
                (1, 2, 1, 0)
            assert r["train_cases_full_split"] == 4 and schedule["val_cases"] == val
            if fraction == 1.0:
                assert r["train_cases"] == 4 and r["training_subset"] is None and schedule["train_cases"] == full_train
            else:
                assert r["train_cases"] == 2 and r["training_subset"] == expected_subset == schedule["train_cases"]
                log = "".join(p.read_text() for p in (workdir / r["fold_folder"]).glob("training_log_*.txt"))
                assert log.count("This split has 2 training and 1 validation cases.") == 2  # training, validation
            assert not any(p.suffix == ".pth" for p in results.rglob("*"))
            # nnU-Net's per-case summary of the run, kept next to its record
            per_case = results / "runs" / f"{trainer}__{plans}__fold0__seed0{records.PER_CASE_SUFFIX}"
            assert per_case.read_bytes() == (workdir / r["fold_folder"] / "validation" / "summary.json").read_bytes()

    csv_name = "compare_Dataset905_AccuracyToy_3d_fullres.csv"
    for tag in ("frac100", "frac50"):
        folder = results / "compare" / f"seed0_{tag}_folds0"  # named by the folds it rests on
        text = (folder / "compare.txt").read_text()
        assert "nnUNetTrainer_benchmark" in text and "nnUNetTrainerCSSE_benchmark" in text and budget in text
        assert "2 runs" in text and "folds found" in text
        fg = {row["trainer"]: float(row["mean"]) for row in csv.DictReader(open(folder / csv_name))
              if row["class"] == "foreground_mean"}
        fraction = 1.0 if tag == "frac100" else 0.5
        for trainer, value in fg.items():
            assert value == pytest.approx(recorded[trainer, fraction]["validation"]["foreground_mean_dice"])
        assert (folder / "compare_Dataset905_AccuracyToy_3d_fullres.png").stat().st_size > 0
    # the limited-data question: both trainers at 0.5 against the reference trainer at 1.0, in one table
    folder = results / "compare" / "seed0_frac50_vs_frac100_folds0"
    fg = {row["trainer"]: float(row["mean"]) for row in csv.DictReader(open(folder / csv_name))
          if row["class"] == "foreground_mean"}
    expected = {"nnUNetTrainer_benchmark__nnUNetPlansCSSE_cpu_tiny": ("nnUNetTrainer_benchmark", 1.0),
                "nnUNetTrainer_benchmark__nnUNetPlansCSSE_cpu_tiny_frac50": ("nnUNetTrainer_benchmark", 0.5),
                "nnUNetTrainerCSSE_benchmark__nnUNetPlansCSSE_cpu_tiny_frac50": ("nnUNetTrainerCSSE_benchmark", 0.5)}
    assert list(fg) == list(expected)  # the reference (full data) first
    for name, key in expected.items():
        assert fg[name] == pytest.approx(recorded[key]["validation"]["foreground_mean_dice"])
    assert "3 runs" in (folder / "compare.txt").read_text()
    summary = (results / "summary.md").read_text()
    assert budget in summary and "4 of 4 runs finished (0 reused" in summary and str(workdir) not in summary
    assert summary.count("Rests on 2 runs") == 2 and "Rests on 3 runs" in summary
    # the summary and the console lead with the training level: one (fold, seed) run per trainer and fraction
    assert [line for line in summary.splitlines() if line.startswith("## ")][0] == \
        "## Trainings: one (fold, seed) run is one training"
    for fraction in ("1", "0.5"):
        assert f"| 1x2 | {fraction} | baseline | 1 | 0/1 [0.000, 0.975] |" in summary or \
            f"| 1x2 | {fraction} | baseline | 1 | 1/1 [0.025, 1.000] |" in summary
        row = next(line for line in summary.splitlines() if line.startswith(f"| 1x2 | {fraction} | CSSE | 1 |"))
        fg = recorded["nnUNetTrainerCSSE_benchmark", float(fraction)]["validation"]["foreground_mean_dice"]
        assert f"| {fg:.4f} (one training) |" in row and row.endswith("| 1 | 1.0000 (sign test) |")
    assert "[trainings] one (fold, seed) run = one training; reference baseline" in first
    assert (results / "trainings.png").stat().st_size > 0

    # second invocation: everything reused, nothing trained, outputs written again, the split left alone
    logs_before = sorted(workdir.rglob("training_log_*.txt"))
    sessions_before = [p.read_text() for p in sorted(workdir.rglob(accuracy.SESSIONS_FILE))]
    split_before = (preprocessed / "splits_final.json").read_bytes()
    started = time.perf_counter()
    second = _benchmark(workdir, out).stdout
    took = time.perf_counter() - started
    assert second.count("finished before, skipped") == 4 and "training (" not in second and "[split]" not in second
    assert "0 runs trained, 4 reused, 0 failed" in second and budget in second
    assert sorted(workdir.rglob("training_log_*.txt")) == logs_before
    assert [p.read_text() for p in sorted(workdir.rglob(accuracy.SESSIONS_FILE))] == sessions_before
    assert (preprocessed / "splits_final.json").read_bytes() == split_before
    again = json.loads((results / "runs" / "nnUNetTrainer_benchmark__nnUNetPlansCSSE_cpu_tiny__fold0__seed0.json")
                       .read_text())
    assert again["reused_in_this_invocation"] and again["wall_s"] == recorded["nnUNetTrainer_benchmark", 1.0]["wall_s"]
    assert "4 of 4 runs finished (4 reused" in (results / "summary.md").read_text()
    assert took < sum(r["wall_s"] for r in recorded.values())  # no training: faster than the runs themselves

    # --report-only over a larger grid: the finished runs are reported, the others left out, nothing trained
    third = _benchmark(workdir, out, "--report-only", folds=("0", "1")).stdout
    assert third.count("finished before, skipped") == 4 and third.count("not finished, left out (--report-only)") == 4
    assert "training (" not in third and "0 runs trained, 4 reused, 0 failed" in third
    assert sorted(workdir.rglob("training_log_*.txt")) == logs_before
    summary = (results / "summary.md").read_text()
    assert "4 of 8 runs finished (4 reused" in summary
    assert "Not finished yet (--report-only): nnUNetTrainer_benchmark, fraction 1, seed 0, fold 1; " \
           "nnUNetTrainerCSSE_benchmark, fraction 1, seed 0, fold 1;" in summary
    compared = list(csv.DictReader(open(results / "compare" / "seed0_frac100_folds0" / csv_name)))
    assert {row["n_folds"] for row in compared if row["class"] == "foreground_mean"} == {"1"}
    assert sorted(p.name for p in (results / "compare").iterdir()) == \
        ["seed0_frac100_folds0", "seed0_frac50_folds0", "seed0_frac50_vs_frac100_folds0"]
    report = (results / "compare" / "seed0_frac100_folds0" / "compare_Dataset905_AccuracyToy_3d_fullres.md").read_text()
    assert str(workdir) not in report

    # a new checkout: the work folder's results are gone, the output folder is committed, and one record lacks its
    # per-case summary. Nothing is trained again; the trainings table rests on the records
    shutil.rmtree(workdir / "e1x2_val1")
    (results / "runs" / f"nnUNetTrainerCSSE_benchmark__nnUNetPlansCSSE_cpu_tiny_frac50__fold0__seed0"
                        f"{records.PER_CASE_SUFFIX}").unlink()
    for folder in (results / "compare").iterdir():  # so what the next invocation writes is new, not left over
        (folder / csv_name).unlink()
    fourth = _benchmark(workdir, out).stdout
    assert fourth.count("recorded before, skipped") == 4 and "training (" not in fourth
    assert "0 runs trained, 4 reused, 0 failed" in fourth
    assert not list((workdir / "e1x2_val1").rglob("fold_0"))
    summary = (results / "summary.md").read_text()
    assert "4 of 4 runs finished (4 reused" in summary
    assert "| 1x2 | 0.5 | CSSE | 1 |" in summary  # still a training: its record holds its Dice
    for tag, fraction in (("frac100", 1.0), ("frac50_vs_frac100", None)):
        fg = {row["trainer"]: float(row["mean"]) for row in csv.DictReader(open(results / "compare" /
                                                                                f"seed0_{tag}_folds0" / csv_name))
              if row["class"] == "foreground_mean"}
        if fraction is None:  # the baseline at 1.0 and at 0.5; CSSE at 0.5 has no per-case summary any more
            assert fg == {f"nnUNetTrainer_benchmark__{p}": pytest.approx(recorded["nnUNetTrainer_benchmark", f][
                "validation"]["foreground_mean_dice"]) for p, f in (("nnUNetPlansCSSE_cpu_tiny", 1.0),
                                                                    ("nnUNetPlansCSSE_cpu_tiny_frac50", 0.5))}
        else:
            assert fg == {t: pytest.approx(recorded[t, fraction]["validation"]["foreground_mean_dice"])
                          for t in ("nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark")}
    assert "Left out, no per-case summary in runs/: nnUNetTrainerCSSE_benchmark, fraction 0.5, seed 0, fold 0." \
        in summary
    # at 0.5 only the reference is left: nothing is paired, and the earlier comparison there is not overwritten
    assert "only the reference nnUNetTrainer_benchmark at fraction 0.5 has a finished run with per-case results" \
        in summary
    assert not (results / "compare" / "seed0_frac50_folds0" / csv_name).exists()
    assert "### seed 0, fraction 0.5 (not compared)" in summary and "(`compare/seed0_frac50_folds0`)" not in summary
    assert "Per-case Dice (`runs/*.validation_summary.json`, resampled in the CIs) for 3 of 4 trainings." in summary


def test_committed_records_are_read_and_their_runs_reused(tmp_path, capsys):
    """The records committed under benchmarks/results/accuracy name their runs as this benchmark does: with the
    work folder empty, --report-only reuses every one of them and trains nothing."""
    if not COMMITTED.is_dir():
        pytest.skip("the committed 20x50 results are not in this checkout")
    out = tmp_path / "out"
    shutil.copytree(COMMITTED, out / COMMITTED.name)
    recorded = [r for r, _ in records.read_budget_folder(COMMITTED)]
    grid = {key: sorted({str(r[key]) for r in recorded}) for key in ("fraction", "fold", "seed", "trainer")}
    settings = accuracy.parse_args(["--workdir", str(tmp_path / "work"), "--out", str(out), "--device", "cpu",
                                    "--preset", "half_width", "--fractions", *grid["fraction"], "--folds",
                                    *grid["fold"], "--seeds", *grid["seed"], "--trainers", *grid["trainer"]])
    bench = accuracy.Benchmark(settings)
    bench.dataset_name, bench.plans_identifier = "Dataset004_Hippocampus", "nnUNetPlansCSSE_half_width"
    assert bench.out_dir == out / COMMITTED.name
    for record in recorded:
        run = records.run_of(record)
        assert run in bench.runs() and bench.committed_record(run) is not None
    settings.report_only = True
    skipped, failed, pending = bench.train_all()
    assert len(skipped) == len(recorded) and not failed and "recorded before, skipped" in capsys.readouterr().out


def test_comparison_without_a_finished_reference_is_skipped_not_run_against_another_trainer(tmp_path):
    settings = accuracy.parse_args(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                                    "--device", "cpu", "--fractions", "1.0", "0.25"])
    bench = accuracy.Benchmark(settings)
    out = tmp_path / "out"
    bench.dataset_name = "Dataset004_Hippocampus"
    only_csse = [{"trainer": "nnUNetTrainerCSSE_benchmark", "fraction": 0.25, "fold": 0, "seed": 0,
                  "plans": "nnUNetPlans_frac25"}]
    per_case = bench.run_file(records.run_of(only_csse[0]), records.PER_CASE_SUFFIX)
    per_case.parent.mkdir(parents=True)
    per_case.write_text("{}")
    entry = bench._compare_group("seed0_frac25_vs_frac100", 0, "limited data", [
        ("nnUNetTrainer_benchmark", 1.0), ("nnUNetTrainerCSSE_benchmark", 0.25)], only_csse, out, tmp_path)
    assert entry["output"] == \
        "the reference nnUNetTrainer_benchmark at fraction 1 has no finished run with per-case results"
    assert list(entry["folds"]) == ["nnUNetTrainerCSSE_benchmark__nnUNetPlans_frac25"] and "compared" not in entry
    assert not (out / "compare").exists()  # nnunet-csse compare was not run
    assert bench._compare_group("seed0_frac100", 0, "none", [("nnUNetTrainer_benchmark", 1.0)], [], out,
                                tmp_path)["output"] == "no finished run with per-case results"


def test_recorded_run_of_another_budget_is_refused_with_what_to_do(tmp_path, capsys):
    settings = accuracy.parse_args(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                                    "--device", "cpu", "--epochs", "20", "--iterations", "50"])
    bench = accuracy.Benchmark(settings)
    bench.dataset_name = "Dataset004_Hippocampus"
    run = records.Run("nnUNetTrainer_benchmark", 1.0, 0, 0, "nnUNetPlans")
    assert bench.committed_record(run) is None  # nothing recorded: train it
    path = bench.run_file(run)
    path.parent.mkdir(parents=True)
    budget = {"epochs": 20, "iterations_per_epoch": 50, "val_iterations_per_epoch": 10}
    path.write_text(json.dumps({"seed": 0, "budget": budget}))
    assert bench.committed_record(run)["budget"] == budget  # no per-case summary next to it: still a finished run
    path.write_text(json.dumps({"seed": 0, "budget": dict(budget, epochs=5)}))
    with pytest.raises(ValueError, match=r"states budget and seed \(5, 50, 10, 0\), not \(20, 50, 10, 0\): move it"):
        bench.committed_record(run)


# ----------------------------------------------------------------------------------------------- trainings
COMMITTED = ROOT / "benchmarks" / "results" / "accuracy" / \
    "Dataset004_Hippocampus__nnUNetPlansCSSE_half_width__3d_fullres__e20x50_val10"
BASELINE, CSSE = "nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark"


def fake_run(folder: Path, trainer: str, fold: int, seed: int, dice: tuple[float, float], fraction: float = 1.0,
             epochs: int = 20, per_case: bool = False) -> dict:
    """A run record as the benchmark writes it (mean Dice of anterior, posterior), optionally with a per-case
    summary of three cases whose class means are ``dice``."""
    plans = "nnUNetPlansCSSE_half_width" + ("" if fraction == 1.0 else "_frac25")
    record = {"trainer": trainer, "fraction": fraction, "fold": fold, "seed": seed, "plans": plans,
              "dataset": "Dataset004_Hippocampus", "configuration": "3d_fullres",
              "budget": {"epochs": epochs, "iterations_per_epoch": 50, "val_iterations_per_epoch": 10},
              "validation": {"dice": {"anterior": dice[0], "posterior": dice[1]},
                             "foreground_mean_dice": sum(dice) / 2, "cases": 3}}
    run_id = f"{trainer}__{plans}__fold{fold}__seed{seed}"
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{run_id}.json").write_text(json.dumps(record))
    if per_case:
        cases = [{"reference_file": f"/gt/case_{fold}_{i}.nii.gz",
                  "metrics": {"1": {"Dice": dice[0] + d}, "2": {"Dice": dice[1] + d}}} for i, d in
                 enumerate((-0.05, 0.0, 0.05))]
        summary = {"mean": {"1": {"Dice": dice[0]}, "2": {"Dice": dice[1]}}, "foreground_mean": {"Dice": sum(dice) / 2},
                   "metric_per_case": cases}
        (folder / "runs" / f"{run_id}{records.PER_CASE_SUFFIX}").write_text(json.dumps(summary))
    return record


def two_budget_folders(root: Path) -> tuple[Path, Path]:
    """20x50: baseline 4 runs (one stalled), CSSE 5 (4 paired with the baseline), 1 pair at fraction 0.25; 80x50:
    6 pairs, CSSE - baseline = +0.01 ... +0.05 and -0.06."""
    short, long = root / "e20x50", root / "e80x50"
    for (fold, seed), base, csse in (((0, 0), (0.80, 0.70), (0.82, 0.74)), ((1, 0), (0.80, 0.05), (0.83, 0.77)),
                                     ((2, 0), (0.82, 0.74), (0.84, 0.78)), ((0, 1), (0.84, 0.76), (0.86, 0.80))):
        fake_run(short, BASELINE, fold, seed, base, per_case=seed == 1)
        fake_run(short, CSSE, fold, seed, csse, per_case=seed == 1)
    fake_run(short, CSSE, 1, 1, (0.85, 0.79))  # no baseline run to pair it with
    fake_run(short, BASELINE, 0, 0, (0.6, 0.5), fraction=0.25)
    fake_run(short, CSSE, 0, 0, (0.7, 0.6), fraction=0.25)
    for i, difference in enumerate((0.01, 0.02, 0.03, 0.04, 0.05, -0.06)):
        fake_run(long, BASELINE, i % 3, i // 3, (0.8, 0.8), epochs=80)
        fake_run(long, CSSE, i % 3, i // 3, (0.8 + difference, 0.8 + difference), epochs=80)
    return short, long


def test_trainings_command_over_two_budgets_matches_hand_computed_rows(tmp_path, capsys):
    short, long = two_budget_folders(tmp_path)
    out = tmp_path / "report"
    assert main_benchmarks(["trainings", str(short), str(long), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "trainings.md").read_text()
    low, high = trainings.stall_interval(1, 4)
    assert (low, high) == pytest.approx((0.0063, 0.8059), abs=1e-4)
    csse_short = [0.78, 0.80, 0.81, 0.83, 0.82]
    expected_rows = [
        f"| 20x50 | 1 | baseline | 4 | 1/4 [{low:.3f}, {high:.3f}] | "
        f"{np.mean([0.75, 0.425, 0.78, 0.80]):.4f} ± {np.std([0.75, 0.425, 0.78, 0.80], ddof=1):.4f} [",
        f"| 20x50 | 1 | CSSE | 5 | 0/5 [0.000, 0.522] | {np.mean(csse_short):.4f} ± {np.std(csse_short, ddof=1):.4f} [",
        "| 4 | 0.1250 (sign test) |",  # 4 positive pairs: 2 / 2^4
        "| 20x50 | 0.25 | CSSE | 1 | 0/1 [0.000, 0.975] | 0.6500 (one training) | +0.1000 n/a | 1 | "
        "1.0000 (sign test) |",
        "| 80x50 | 1 | CSSE | 6 | 0/6 [0.000, 0.459] |",
        "| +0.0150 [",  # (0.01 + 0.02 + 0.03 + 0.04 + 0.05 - 0.06) / 6
        "| 6 | 0.4375 (Wilcoxon) |",  # W- = 6 of the ranks 1..6: 2 * 14 / 64
        "| 20x50 | 1 | baseline | fold 0 seed 0: 0.7500; fold 0 seed 1: 0.8000; fold 1 seed 0: 0.4250 (stalled: "
        "posterior 0.050); fold 2 seed 0: 0.7800 |",
    ]
    for row in expected_rows:
        assert row in markdown
    difference = (0.03 + 0.375 + 0.03 + 0.03) / 4
    row = next(line for line in markdown.splitlines() if line.startswith("| 20x50 | 1 | CSSE | 5 |"))
    assert f"| {difference:+.4f} [" in row
    ci_low, ci_high = (float(x) for x in row.split(f"{difference:+.4f} [")[1].split("]")[0].split(", "))
    assert ci_low < difference < ci_high
    # group order: budgets in the order given, full data first
    assert [line.split(" | ")[0:2] for line in markdown.splitlines() if line.startswith("| ") and " | CSSE | " in line
            and "fold" not in line] == [["| 20x50", "1"], ["| 20x50", "0.25"], ["| 80x50", "1"]]
    assert "Per-case Dice (`runs/*.validation_summary.json`, resampled in the CIs) for 2 of 23 trainings." in markdown
    assert "stalled: some foreground class has mean validation Dice < 0.1" in markdown
    assert "20x50   1         CSSE      5          0/5 [0.000, 0.522]" in printed
    assert f"wrote {out / 'trainings.png'}" in printed
    assert (out / "trainings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainings_command_filters_folds_fractions_and_trainers(tmp_path, capsys):
    short, _ = two_budget_folders(tmp_path)
    out = tmp_path / "report"
    assert main_benchmarks(["trainings", str(short), "--folds", "0", "--fractions", "1", "--trainers", "CSSE",
                            "--out", str(out)]) == 0
    markdown = (out / "trainings.md").read_text()
    assert "| 20x50 | 1 | baseline | 2 |" in markdown and "| 20x50 | 1 | CSSE | 2 |" in markdown  # seeds 0 and 1
    assert "0.25" not in markdown.split("Each training")[0] and "fold 1" not in markdown
    assert main_benchmarks(["trainings", str(short), "--folds", "7", "--out", str(out)]) == 2
    assert "no run record matches" in capsys.readouterr().err


def test_trainings_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    short, _ = two_budget_folders(tmp_path)
    for argv, message in (
            ([str(tmp_path / "absent")], "has no runs/*.json records: give a folder written by python -m benchmarks"),
            ([str(short), "--reference", "PDCR"], "--reference PDCR: no run of it in"),
            ([str(short), str(short)], "is recorded in"),
    ):
        assert main_benchmarks(["trainings", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    (short / "runs" / "broken.json").write_text("{}")
    assert main_benchmarks(["trainings", str(short), "--out", str(tmp_path / "out")]) == 2
    assert "broken.json is not a run record" in capsys.readouterr().err
    (short / "runs" / "broken.json").unlink()
    # a per-case summary of another run next to a record
    run_id = f"{BASELINE}__nnUNetPlansCSSE_half_width__fold0__seed1"
    other = short / "runs" / f"{CSSE}__nnUNetPlansCSSE_half_width__fold0__seed1{records.PER_CASE_SUFFIX}"
    shutil.copyfile(other, short / "runs" / f"{run_id}{records.PER_CASE_SUFFIX}")
    assert main_benchmarks(["trainings", str(short), "--out", str(tmp_path / "out")]) == 2
    assert "belong to different runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="the committed 20x50 results are not in this checkout")
def test_trainings_of_the_committed_records_agree_with_the_records():
    recorded = records.read_budget_folder(COMMITTED)
    groups = records.training_groups(recorded, None, BASELINE)
    by_row = {(cells[1], s.name): s for cells, summaries in groups for s in summaries}
    for (fraction, name), summary in by_row.items():
        own = [r for r, _ in recorded
               if f"{r['fraction']:g}" == fraction and records.display_name(r["trainer"]) == name]
        assert summary.n == len(own)
        assert summary.mean == pytest.approx(np.mean([r["validation"]["foreground_mean_dice"] for r in own]), abs=1e-9)
        assert summary.stalled == sum(any(v < 0.1 for v in r["validation"]["dice"].values()) for r in own)
        if name != "baseline":
            reference = {(r["fold"], r["seed"]) for r, _ in recorded if r["trainer"] == BASELINE
                         and f"{r['fraction']:g}" == fraction}
            assert len(summary.pairs) == sum((r["fold"], r["seed"]) in reference for r in own)
    assert by_row["1", "CSSE"].test == "Wilcoxon" and by_row["1", "UAFS"].test == "sign test"


def test_summary_leads_with_the_trainings_table(tmp_path):
    short, _ = two_budget_folders(tmp_path / "records")
    settings = accuracy.parse_args(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                                    "--device", "cpu", "--seeds", "0", "1", "--fractions", "1.0", "0.25"])
    bench = accuracy.Benchmark(settings)
    bench.dataset_name = "Dataset004_Hippocampus"
    bench.plan_summary = {"patch_size": [40, 56, 40], "batch_size": 4, "features": [16, 32, 64, 128]}
    recorded = records.read_budget_folder(short)
    groups = records.training_groups(recorded, settings.trainers, settings.trainers[0])
    bench._write_summary([r for r, _ in recorded], [], [], [], tmp_path, groups)
    summary = (tmp_path / "summary.md").read_text()
    headings = [line for line in summary.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Trainings: one (fold, seed) run is one training"
    assert "| 20x50 | 1 | CSSE | 5 | 0/5 [0.000, 0.522] |" in summary and "| 4 | 0.1250 (sign test) |" in summary
    assert "- `trainings.png`:" in summary


def test_csse_authors_alias():
    assert accuracy.resolve_trainers(["CSSE_authors", "baseline"]) == ["nnUNetTrainerCSSE_authors_benchmark",
                                                                        "nnUNetTrainer_benchmark"]
    assert records.display_name("nnUNetTrainerCSSE_authors_benchmark") == "CSSE_authors"
    assert records.display_name("nnUNetTrainerOther") == "nnUNetTrainerOther"


def _gpu_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "accuracy_gpu.sh"), *args], cwd=ROOT,
                          env=_benchmark_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.e2e
def test_gpu_script_dry_run_trains_both_trainers_and_compares_on_cpu(tmp_path):
    # a Hippocampus-shaped copy (images/NAME.nii.gz, labels/NAME.nii.gz) made from a synthetic dataset
    synthetic = write_synthetic_dataset(tmp_path / "raw", 907, "Hippo", dim=3, num_cases=5, size=32, seed=1)
    source = tmp_path / "copy"
    for sub in ("images", "labels"):
        (source / sub).mkdir(parents=True)
    for label in sorted((synthetic / "labelsTr").iterdir()):
        name = label.name[: -len(".nii.gz")]
        (source / "labels" / label.name).symlink_to(label)
        (source / "images" / label.name).symlink_to(synthetic / "imagesTr" / f"{name}_0000.nii.gz")
    workdir, out = tmp_path / "work", tmp_path / "out"
    proc = _gpu_script("--data", str(source), "--workdir", str(workdir), "--out", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = out / "Dataset004_Hippocampus__nnUNetPlansCSSE_cpu_tiny__3d_fullres__e1x2_val1"
    for trainer in ("nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark"):
        record = json.loads((results / "runs" / f"{trainer}__nnUNetPlansCSSE_cpu_tiny__fold0__seed0.json").read_text())
        assert (record["budget"]["epochs"], record["budget"]["iterations_per_epoch"], record["seed"]) == (1, 2, 0)
        assert record["validation"]["foreground_mean_dice"] is not None
    compared = list(csv.DictReader(open(results / "compare" / "seed0_frac100_folds0" /
                                        "compare_Dataset004_Hippocampus_3d_fullres.csv")))
    assert {row["trainer"] for row in compared} == {"nnUNetTrainer_benchmark", "nnUNetTrainerCSSE_benchmark"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_script_without_cuda_or_data_refuses_in_one_line_before_writing(tmp_path):
    out = tmp_path / "out"
    no_data = _gpu_script("--out", str(out))
    assert no_data.returncode == 2 and no_data.stderr.strip().splitlines() == [
        "error: pass --data DIR, a Hippocampus copy with images/NAME.nii.gz and labels/NAME.nii.gz"]
    no_cuda = _gpu_script("--data", str(tmp_path), "--workdir", str(tmp_path / "work"), "--out", str(out))
    assert no_cuda.returncode == 2 and no_cuda.stderr.strip().splitlines() == [
        "error: torch sees no CUDA device; use --dry-run for the CPU check"]
    assert not out.exists() and not (tmp_path / "work").exists()
