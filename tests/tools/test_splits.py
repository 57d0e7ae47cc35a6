"""``nnunet-csse split``: limited-data splits on a fake preprocessed dataset (file names only, no training)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.crossval_split import generate_crossval_split

from nnunet_csse.subsets import training_subset
from nnunet_csse.tools import splits as S
from nnunet_csse.tools.cli import main

DATASET = "Dataset042_Toy"
CASES = [f"toy_{i:03d}" for i in range(20)]


def make_preprocessed(root, cases=CASES, dataset=DATASET, data_identifiers=("nnUNetPlans_3d_fullres",)):
    """A preprocessed dataset as nnUNetv2_plan_and_preprocess leaves it (blosc2 layout; files are empty)."""
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0, "a": 1},
                                                     "channel_names": {"0": "CT"}, "numTraining": len(cases)}))
    (folder / "nnUNetPlans.json").write_text(json.dumps({"dataset_name": dataset, "plans_name": "nnUNetPlans"}))
    gt = folder / "gt_segmentations"
    gt.mkdir()
    for data_identifier in data_identifiers:
        (folder / data_identifier).mkdir()
    for case in cases:
        (gt / f"{case}.nii.gz").touch()
        for data_identifier in data_identifiers:
            for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
                (folder / data_identifier / f"{case}{suffix}").touch()
    return folder


def nnunet_default(folder):
    """What nnUNetTrainer.do_split writes when splits_final.json is missing (run on a stand-in trainer)."""
    logged = []
    fake = SimpleNamespace(dataset_class=None, fold=0, preprocessed_dataset_folder_base=str(folder),
                           preprocessed_dataset_folder=str(folder / "nnUNetPlans_3d_fullres"),
                           folder_with_segs_from_previous_stage=None,
                           print_to_log_file=lambda *a, **k: logged.append(a))
    nnUNetTrainer.do_split(fake)
    return json.loads((folder / "splits_final.json").read_text())


@pytest.fixture
def prep(nnunet_dirs):
    folder = make_preprocessed(nnunet_dirs["nnUNet_preprocessed"])
    splits = generate_crossval_split(CASES, seed=12345, n_splits=5)
    splits = [{"train": [str(k) for k in s["train"]], "val": [str(k) for k in s["val"]]} for s in splits]
    # a user's file, formatted unlike json.dump's defaults, so byte-exact restores are really tested
    (folder / "splits_final.json").write_text(json.dumps(splits, indent=1) + "\n\n")
    return folder


def run_cli(argv):
    return main(["split", *argv])


def test_limited_split_keeps_validation_and_subsamples_training(prep):
    original = (prep / "splits_final.json").read_bytes()
    full = json.loads(original)
    result = S.make_limited_split(42, 0.25, seed=0)
    assert result.path == prep / "splits_final_frac25_seed0.json"
    assert (prep / "splits_final.json").read_bytes() == original  # untouched
    written = json.loads(result.path.read_text())
    assert written == result.splits and len(written) == 5
    for fold_full, fold in zip(full, written):
        assert fold["val"] == fold_full["val"]
        assert len(fold["train"]) == round(0.25 * 16) == 4
        assert set(fold["train"]) <= set(fold_full["train"])
        assert not set(fold["train"]) & set(fold["val"])
        assert fold["csse_limited"] == {"fraction": 0.25, "seed": 0, "num_train_full": 16}


def test_subsample_uses_the_one_subset_function():
    full = [{"train": CASES[:16], "val": CASES[16:]}, {"train": CASES[4:], "val": CASES[:4]}]
    limited = S.subsample_splits(full, 0.25, 3)
    assert [fold["train"] for fold in limited] == [training_subset(fold["train"], 0.25, i, 3)
                                                   for i, fold in enumerate(full)]
    assert S.subsample_splits(full, 1.0, 3)[0]["train"] == CASES[:16]
    assert len(S.subsample_splits(full, 0.001, 3)[0]["train"]) == 1


def test_deterministic_per_seed_different_across_seeds_and_nested(prep):
    a = S.make_limited_split(42, 0.25, seed=1).path.read_bytes()
    b = S.make_limited_split(42, 0.25, seed=1).path.read_bytes()
    assert a == b
    other = json.loads(S.make_limited_split(42, 0.25, seed=2).path.read_text())
    assert [f["train"] for f in other] != [f["train"] for f in json.loads(a)]
    half = json.loads(S.make_limited_split(42, 0.5, seed=1).path.read_text())
    for quarter_fold, half_fold in zip(json.loads(a), half):
        assert set(quarter_fold["train"]) <= set(half_fold["train"])


def test_filenames():
    assert S.limited_split_filename(0.25, 0) == "splits_final_frac25_seed0.json"
    assert S.limited_split_filename(0.05, 7) == "splits_final_frac05_seed7.json"
    assert S.limited_split_filename(1, 0) == "splits_final_frac100_seed0.json"
    assert S.limited_split_filename(0.125, 0) == "splits_final_frac12p5_seed0.json"


def test_missing_split_uses_nnunet_default(nnunet_dirs):
    folder = make_preprocessed(nnunet_dirs["nnUNet_preprocessed"])
    result = S.make_limited_split(DATASET, 0.5, seed=0)
    assert not (folder / "splits_final.json").exists()  # not created by the default mode
    assert any("does not exist yet" in w for w in result.warnings)
    expected = nnunet_default(folder)  # nnU-Net's own do_split now creates it
    for fold_full, fold in zip(expected, result.splits):
        assert fold["val"] == fold_full["val"]
        assert set(fold["train"]) <= set(fold_full["train"]) and len(fold["train"]) == 8


def test_identifiers_from_the_preprocessed_data(nnunet_dirs):
    folder = make_preprocessed(nnunet_dirs["nnUNet_preprocessed"], data_identifiers=("nnUNetPlans_3d_fullres",
                                                                                     "nnUNetPlans_2d"))
    assert S.dataset_identifiers(folder) == (CASES, "preprocessed folder(s) nnUNetPlans_2d, nnUNetPlans_3d_fullres")
    for data_identifier in ("nnUNetPlans_3d_fullres", "nnUNetPlans_2d"):
        for f in (folder / data_identifier).iterdir():
            f.unlink()
    assert S.dataset_identifiers(folder) == ([], "")
    with pytest.raises(ValueError, match="run nnUNetv2_plan_and_preprocess first"):
        S.make_limited_split(42, 0.25)


def test_install_restore_round_trip_is_byte_exact(prep):
    original = (prep / "splits_final.json").read_bytes()
    result = S.make_limited_split(42, 0.25, seed=0, install=True)
    assert result.installed and result.path == prep / "splits_final.json"
    assert (prep / "splits_final.full.json").read_bytes() == original
    installed = json.loads((prep / "splits_final.json").read_text())
    assert installed == S.subsample_splits(json.loads(original), 0.25, 0)
    assert not list(prep.glob("splits_final_frac*"))

    # installing another fraction derives it from the backup, which stays the full split
    S.make_limited_split(42, 0.5, seed=3, install=True)
    assert (prep / "splits_final.full.json").read_bytes() == original
    assert all(len(f["train"]) == 8 for f in json.loads((prep / "splits_final.json").read_text()))
    # the default mode also starts from the backup while a limited split is installed
    quarter = S.make_limited_split(42, 0.25, seed=0)
    assert quarter.splits == installed

    assert S.restore_full_split(42) == prep / "splits_final.json"
    assert (prep / "splits_final.json").read_bytes() == original
    assert not (prep / "splits_final.full.json").exists()


def test_install_without_split_backs_up_nnunet_default(nnunet_dirs):
    folder = make_preprocessed(nnunet_dirs["nnUNet_preprocessed"])
    S.make_limited_split(42, 0.25, seed=0, install=True)
    backup = json.loads((folder / "splits_final.full.json").read_text())
    S.restore_full_split(42)
    (folder / "splits_final.json").rename(folder / "ours.json")
    assert nnunet_default(folder) == backup == json.loads((folder / "ours.json").read_text())


def test_cli_split_install_restore(prep, capsys):
    original = (prep / "splits_final.json").read_bytes()
    assert run_cli(["-d", "42", "--fraction", "0.25"]) == 0
    assert "splits_final_frac25_seed0.json" in capsys.readouterr().out
    assert run_cli(["-d", DATASET, "--fraction", "0.25", "--seed", "5", "--install"]) == 0
    assert "fold 0: 4 of 16 training cases" in capsys.readouterr().out
    assert run_cli(["-d", "42", "--restore"]) == 0
    assert (prep / "splits_final.json").read_bytes() == original
    out = prep.parent / "elsewhere" / "mine.json"
    assert run_cli(["-d", "42", "--fraction", "0.5", "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())[0]["train"]) == 8


def test_help_documents_install_and_restore(capsys):
    with pytest.raises(SystemExit):
        run_cli(["--help"])
    text = capsys.readouterr().out
    assert "splits_final.full.json" in text and "--install" in text and "--restore" in text
    assert "another id" in text and "plain ``nnUNetTrainer``" in S.__doc__


@pytest.mark.parametrize("fraction", [0.0, -0.25, 1.5, float("nan")])
def test_refuses_bad_fraction(prep, fraction, capsys):
    with pytest.raises(ValueError, match="fraction"):
        S.make_limited_split(42, fraction)
    assert run_cli(["-d", "42", "--fraction", str(fraction)]) == 2
    assert "error: --fraction must be in (0, 1]" in capsys.readouterr().err


def test_refuses_unknown_dataset(prep, capsys):
    for dataset in ("99", "Dataset099_Nope", "toy"):
        with pytest.raises(ValueError, match="dataset"):
            S.make_limited_split(dataset, 0.25)
    assert run_cli(["-d", "99", "--fraction", "0.25"]) == 2
    assert "error: unknown dataset '99'" in capsys.readouterr().err


def test_refuses_missing_env(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert run_cli(["-d", "42", "--fraction", "0.25"]) == 2
    assert "nnUNet_preprocessed is not set" in capsys.readouterr().err


def test_refuses_to_lose_a_modified_split(prep, capsys):
    S.make_limited_split(42, 0.25, seed=0, install=True)
    edited = json.loads((prep / "splits_final.json").read_text())
    edited[0]["train"] = edited[0]["train"][:2]  # a user edit: still marked, but not what we wrote
    (prep / "splits_final.json").write_text(json.dumps(edited))
    user_bytes = (prep / "splits_final.json").read_bytes()
    with pytest.raises(ValueError, match="differs from the backup"):
        S.make_limited_split(42, 0.5, seed=0, install=True)
    assert run_cli(["-d", "42", "--restore"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (prep / "splits_final.json").read_bytes() == user_bytes

    (prep / "splits_final.json").write_text(json.dumps([{"train": CASES[:10], "val": CASES[10:]}]))
    with pytest.raises(ValueError, match="differs from the backup"):
        S.make_limited_split(42, 0.5, seed=0, install=True)


def test_refuses_limited_split_without_backup(prep):
    S.make_limited_split(42, 0.25, seed=0, install=True)
    (prep / "splits_final.full.json").unlink()
    with pytest.raises(ValueError, match="backup"):
        S.make_limited_split(42, 0.25, seed=0, install=True)
    with pytest.raises(ValueError, match="no backup"):
        S.restore_full_split(42)


def test_refuses_unknown_case_ids(prep):
    splits = json.loads((prep / "splits_final.json").read_text())
    splits[2]["val"].append("not_a_case")
    (prep / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match="not_a_case"):
        S.make_limited_split(42, 0.25)


def test_refuses_output_over_nnunet_files_and_foreign_files(prep, capsys):
    with pytest.raises(ValueError, match="--install"):
        S.make_limited_split(42, 0.25, output=prep / "splits_final.json")
    foreign = prep / "notes.json"
    foreign.write_text("{}")
    with pytest.raises(ValueError, match="not a limited split"):
        S.make_limited_split(42, 0.25, output=foreign)
    assert foreign.read_text() == "{}"
    assert run_cli(["-d", "42", "--restore", "--fraction", "0.25"]) == 2
    assert run_cli(["-d", "42"]) == 2
    assert "--fraction is required" in capsys.readouterr().err
