"""End to end through nnU-Net's own console scripts on a tiny generated dataset (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_csse.cli import trainers_path
from nnunet_csse.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.e2e
BIN = os.path.dirname(sys.executable)


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    exe = os.path.join(BIN, cmd[0])
    proc = subprocess.run([exe if os.path.exists(exe) else cmd[0], *cmd[1:]], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def nnunet_env(root) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_extTrainer=trainers_path(), nnUNet_compile="false", nnUNet_def_n_proc="1")
    return env


@pytest.fixture(scope="module", params=[3, 2], ids=["3d_fullres", "2d"])
def planned(request, tmp_path_factory):
    """A planned and preprocessed synthetic dataset (3D -> 3d_fullres, 2D -> 2d)."""
    dim = request.param
    root = tmp_path_factory.mktemp(f"e2e{dim}d")
    env = nnunet_env(root)
    dataset_id = 900 + dim
    size = 32 if dim == 3 else 64
    write_synthetic_dataset(root / "nnUNet_raw", dataset_id, dim=dim, num_cases=6, size=size, num_classes=3,
                            num_test_cases=2, seed=dim)
    config = "3d_fullres" if dim == 3 else "2d"
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", config, "-np", "1",
         "--verify_dataset_integrity"], env)
    return {"root": root, "env": env, "id": dataset_id, "config": config, "dim": dim}


def raw_dataset(planned):
    return next((planned["root"] / "nnUNet_raw").glob(f"Dataset{planned['id']}_*"))


@pytest.mark.parametrize("trainer", ["nnUNetTrainerUAFS_2epochs_10iters", "nnUNetTrainerCSSE_2epochs_10iters"])
def test_train_predict_reload(planned, trainer, tmp_path):
    env, config, dataset_id = planned["env"], planned["config"], str(planned["id"])
    # data augmentation in the main process: fast start on small CPU machines (nnU-Net's planner needs n_proc > 0)
    run(["nnUNetv2_train", dataset_id, config, "0", "-tr", trainer, "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"))
    model_dir = next((planned["root"] / "nnUNet_results").glob(f"Dataset{dataset_id}_*")) / \
        f"{trainer}__nnUNetPlans__{config}"
    fold = model_dir / "fold_0"
    assert (fold / "checkpoint_final.pth").exists()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])
    log = next(fold.glob("training_log_*.txt")).read_text()
    if "CSSE" in trainer:
        assert "pdcr_encoder" in log and "pdcr_cross" in log
        assert "receptive field" in log

    raw = raw_dataset(planned)
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", dataset_id, "-c", config,
         "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    for image in images:
        pred_file = out / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_file.exists(), f"missing prediction {pred_file}"
        pred, img = sitk.ReadImage(str(pred_file)), sitk.ReadImage(str(image))
        assert pred.GetSize() == img.GetSize() and pred.GetSpacing() == pytest.approx(img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}

    # the checkpoint reloads into nnU-Net's predictor with the CSSE network (deep supervision off)
    code = (
        "import torch, sys\n"
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
        "from nnunet_csse.network import CSSEUNet\n"
        "p = nnUNetPredictor(device=torch.device('cpu'), use_mirroring=False)\n"
        f"p.initialize_from_trained_model_folder({str(model_dir)!r}, use_folds=(0,))\n"
        "assert isinstance(p.network, CSSEUNet), type(p.network)\n"
        "assert p.network.decoder_uafs is not None and not p.network.decoder.deep_supervision\n"
        "print('reloaded', type(p.network).__name__)\n"
    )
    assert "reloaded CSSEUNet" in run([sys.executable, "-c", code], env).stdout
