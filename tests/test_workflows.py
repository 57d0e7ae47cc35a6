"""nnU-Net workflows beyond one 3d_fullres fold, with nnUNetTrainerCSSE, through nnU-Net's console scripts (CPU).

One anisotropic 3D dataset (spacing 4 x 1 x 1 mm, one foreground class, one training case without any
foreground) is planned with nnU-Net's ResEnc M planner. A small GPU-memory target makes the patch small
enough for nnU-Net to add 3d_lowres and the cascade. Two folds of 3d_lowres (so every case gets a
next-stage prediction) and fold 0 of 3d_cascade_fullres are trained, then used for find_best_configuration,
export / install from zip, and cascade prediction from the installed model.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_csse.environment import trainers_path
from nnunet_csse.network import CSSEUNet
from tests.console import logged_pdcr, nnunet_env, run

pytestmark = pytest.mark.e2e
DATASET_ID = "920"
SOURCE_PLANS = "nnUNetResEncUNetMPlans_small"
PLANS = f"{SOURCE_PLANS}CSSE_cpu_tiny"
TRAINER = "nnUNetTrainerCSSE_2epochs_10iters"
CASCADE = ("3d_lowres", "3d_cascade_fullres")


def model_folder(root, config: str):
    return next((root / "nnUNet_results").glob(f"Dataset{DATASET_ID}_*")) / f"{TRAINER}__{PLANS}__{config}"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflows")
    env = nnunet_env(root)
    raw = run(["nnunet-csse", "synth", "-d", DATASET_ID, "--dim", "3", "--size", "20", "80", "80", "--spacing",
               "4", "1", "1", "--classes", "2", "--cases", "4", "--test-cases", "1", "--seed", "4"], env)
    raw = root / "nnUNet_raw" / raw.stdout.strip().splitlines()[-1].split("/")[-1]
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").glob("*.nii.gz"))
    # a training case of fold 0 without any foreground: all of its patches are background only
    empty = sitk.ReadImage(str(raw / "labelsTr" / f"{cases[-1]}.nii.gz"))
    blank = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(empty)))
    blank.CopyInformation(empty)
    sitk.WriteImage(blank, str(raw / "labelsTr" / f"{cases[-1]}.nii.gz"))

    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-pl", "nnUNetPlannerResEncM", "-gpu_memory_target",
         "0.05", "-overwrite_plans_name", SOURCE_PLANS, "-c", "3d_lowres", "3d_fullres", "-np", "1", "1",
         "-npfp", "1"], env)
    run(["nnunet-csse", "plans", "apply", "cpu_tiny", "-d", DATASET_ID, "--source-plans", SOURCE_PLANS], env)
    pre = next((root / "nnUNet_preprocessed").glob(f"Dataset{DATASET_ID}_*"))
    # a user-defined two-fold split (nnU-Net's documented way): two lowres trainings cover every case
    (pre / "splits_final.json").write_text(json.dumps([{"train": cases[2:], "val": cases[:2]},
                                                       {"train": cases[:2], "val": cases[2:]}]))
    for fold in ("0", "1"):
        run(["nnUNetv2_train", DATASET_ID, "3d_lowres", fold, "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
             "--npz"], dict(env, nnUNet_n_proc_DA="0"))
    # data augmentation in a worker process: the trainer's loaders and transforms are pickled to it
    run(["nnUNetv2_train", DATASET_ID, "3d_cascade_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
         "--npz"], dict(env, nnUNet_n_proc_DA="1"))
    return {"root": root, "env": env, "raw": raw, "pre": pre, "cases": cases}


def test_resenc_anisotropic_lowres_and_cascade_train(workflow, monkeypatch):
    plans = json.loads((workflow["pre"] / f"{PLANS}.json").read_text())
    configs = plans["configurations"]
    assert configs["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert configs["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    fullres = configs["3d_fullres"]["architecture"]
    assert fullres["network_class_name"].endswith("ResidualEncoderUNet")
    assert fullres["arch_kwargs"]["strides"][1][0] == 1 and fullres["arch_kwargs"]["kernel_sizes"][0][0] == 1

    for config in CASCADE:
        fold = model_folder(workflow["root"], config) / "fold_0"
        log = next(fold.glob("training_log_*.txt")).read_text()
        for term in ("encoder", "cross"):
            values = logged_pdcr(log, term)
            assert len(values) == 2 and all(np.isfinite(values)), values
        assert "non-finite" not in log
        # anisotropic receptive fields: the 4 mm axis grows slower than the in-plane ones
        fields = [tuple(map(int, f)) for f in re.findall(r"exact receptive field \[(\d+), (\d+), (\d+)\]", log)]
        assert fields and all(f[0] < f[1] == f[2] for f in fields), fields
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        assert np.isfinite(summary["foreground_mean"]["Dice"])
    next_stage = model_folder(workflow["root"], "3d_lowres") / "predicted_next_stage" / "3d_cascade_fullres"
    assert sorted(p.name.split(".")[0] for p in next_stage.iterdir()) == workflow["cases"]

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(model_folder(workflow["root"], "3d_cascade_fullres")),
                                                   use_folds=(0,))
    network = predictor.network
    assert isinstance(network, CSSEUNet) and type(network.encoder).__name__ == "ResidualEncoder"
    assert network.pdcr_projections is not None and network.decoder_uafs is not None
    # cascade input: the image plus the one-hot lowres segmentation of the single foreground class
    assert network.encoder.stem.convs[0].conv.in_channels == 2


def test_find_best_configuration(workflow):
    proc = run(["nnUNetv2_find_best_configuration", DATASET_ID, "-c", *CASCADE, "-tr", TRAINER, "-p", PLANS,
                "-f", "0", "-np", "1"], workflow["env"])
    results = next((workflow["root"] / "nnUNet_results").glob(f"Dataset{DATASET_ID}_*"))
    info = json.loads((results / "inference_information.json").read_text())
    assert {f"{TRAINER}__{PLANS}__{c}" for c in CASCADE} <= set(info["all_results"])
    assert all(np.isfinite(v) for v in info["all_results"].values())
    assert info["best_model_or_ensemble"]["selected_model_or_models"]
    assert "nnUNetv2_predict" in proc.stdout and (results / "inference_instructions.txt").exists()


def test_export_install_and_cascade_prediction(workflow, tmp_path):
    archive = tmp_path / "model.zip"
    run(["nnUNetv2_export_model_to_zip", "-d", DATASET_ID, "-o", str(archive), "-c", *CASCADE, "-tr", TRAINER,
         "-p", PLANS, "-f", "0"], workflow["env"])
    fresh = nnunet_env(tmp_path)  # another machine: empty nnU-Net folders
    run(["nnUNetv2_install_pretrained_model_from_zip", str(archive)], fresh)
    for config in CASCADE:
        original = model_folder(workflow["root"], config) / "fold_0" / "checkpoint_final.pth"
        installed = model_folder(tmp_path, config) / "fold_0" / "checkpoint_final.pth"
        assert hashlib.sha256(installed.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()

    images, out = workflow["raw"] / "imagesTs", tmp_path / "pred"
    common = ["-i", str(images), "-d", DATASET_ID, "-p", PLANS, "-tr", TRAINER, "-f", "0", "-device", "cpu",
              "--disable_tta", "-npp", "1", "-nps", "1"]
    run(["nnUNetv2_predict", *common, "-c", "3d_lowres", "-o", str(out / "lowres")], fresh)
    run(["nnUNetv2_predict", *common, "-c", "3d_cascade_fullres", "-o", str(out / "cascade"),
         "-prev_stage_predictions", str(out / "lowres")], fresh)
    for image in images.glob("*_0000.nii.gz"):
        reference = sitk.ReadImage(str(image))
        for stage in ("lowres", "cascade"):
            pred = sitk.ReadImage(str(out / stage / image.name.replace("_0000", "")))
            assert pred.GetSize() == reference.GetSize()
            assert pred.GetSpacing() == pytest.approx(reference.GetSpacing())
            assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}
