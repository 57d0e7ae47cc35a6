"""End to end through nnU-Net's own console scripts on tiny generated datasets (CPU).

Each dataset is planned and preprocessed once (module fixture); training uses the ``cpu_tiny`` plans preset
(``nnunet-csse plans apply``) and the ``_2epochs_10iters`` trainers, prediction runs without mirroring.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_csse.environment import trainers_path
from nnunet_csse.network import CSSEUNet
from tests.console import BIN, PLANS, logged_pdcr, nnunet_env, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=[3, 2], ids=["3d_fullres", "2d"])
def planned(request, tmp_path_factory):
    """A synthetic dataset planned and preprocessed by nnU-Net, plus the cpu_tiny plans preset."""
    dim = request.param
    root = tmp_path_factory.mktemp(f"e2e{dim}d")
    env = nnunet_env(root)
    dataset_id = str(900 + dim)
    config = "3d_fullres" if dim == 3 else "2d"
    run(["nnunet-csse", "synth", "-d", dataset_id, "--dim", str(dim), "--cases", "6", "--test-cases", "2",
         "--size", "32" if dim == 3 else "64", "--seed", str(dim)], env)
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", config, "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)
    run(["nnunet-csse", "plans", "apply", "cpu_tiny", "-d", dataset_id], env)
    return {"root": root, "env": env, "id": dataset_id, "config": config, "dim": dim}


def trained(planned, trainer: str):
    """Train once per dataset and trainer (tests of one module share the models)."""
    cache = planned.setdefault("models", {})
    if trainer not in cache:
        cache[trainer] = _train(planned, trainer)
    return cache[trainer]


def _train(planned, trainer: str):
    env, config, dataset_id = planned["env"], planned["config"], planned["id"]
    # data augmentation in the main process: quick start on small CPU machines
    run(["nnUNetv2_train", dataset_id, config, "0", "-tr", trainer, "-p", PLANS, "-device", "cpu"],
        dict(env, nnUNet_n_proc_DA="0"))
    results = next((planned["root"] / "nnUNet_results").glob(f"Dataset{dataset_id}_*"))
    return results / f"{trainer}__{PLANS}__{config}"


@pytest.mark.parametrize("trainer,dims", [("nnUNetTrainerUAFS_2epochs_10iters", {3}),
                                          ("nnUNetTrainerCSSE_2epochs_10iters", {2, 3}),
                                          ("nnUNetTrainerCSSE_authors_2epochs_10iters", {3})])
def test_train_predict_reload(planned, trainer, dims, tmp_path, monkeypatch):
    if planned["dim"] not in dims:
        pytest.skip("covered in the other dimension")
    model_dir = trained(planned, trainer)
    fold = model_dir / "fold_0"
    assert (fold / "checkpoint_final.pth").exists()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])
    log = next(fold.glob("training_log_*.txt")).read_text()
    if "CSSE" in trainer:  # PDCR terms logged next to nnU-Net's losses
        for term in ("encoder", "cross"):
            values = logged_pdcr(log, term)
            assert len(values) == 2 and np.isfinite(values).all()  # one line per epoch
        assert "exact receptive field [23, 23, 23]" in log if planned["dim"] == 3 else "exact receptive field" in log
        assert "PDCR anchor grid of the patch" in log
        # nnU-Net's progress plot stays as it is; the PDCR curves get their own small plot
        assert plt.imread(fold / "progress.png").shape[:2] == (5400, 3000)
        assert plt.imread(fold / "progress_pdcr.png").shape[:2] == (500, 1200)

    raw = next((planned["root"] / "nnUNet_raw").glob(f"Dataset{planned['id']}_*"))
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", planned["id"], "-c",
         planned["config"], "-p", PLANS, "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta",
         "-npp", "1", "-nps", "1"], planned["env"])
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    for image in images:
        pred_file = out / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_file.exists(), f"missing prediction {pred_file}"
        pred, img = sitk.ReadImage(str(pred_file)), sitk.ReadImage(str(image))
        assert pred.GetSize() == img.GetSize() and pred.GetSpacing() == pytest.approx(img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}

    # UAFS uncertainty maps through nnU-Net's predictor, in the input's geometry
    unc = tmp_path / "uncertainty"
    run(["nnunet-csse", "uncertainty", "-i", str(raw / "imagesTs"), "-o", str(unc), "-m", str(model_dir), "-f", "0",
         "-device", "cpu", "--disable_tta"], planned["env"])
    for image in images:
        case = image.name.replace("_0000.nii.gz", "")
        h, img = sitk.ReadImage(str(unc / f"{case}_uncertainty.nii.gz")), sitk.ReadImage(str(image))
        assert h.GetSize() == img.GetSize() and h.GetOrigin() == pytest.approx(img.GetOrigin())
        assert h.GetSpacing() == pytest.approx(img.GetSpacing()) and h.GetDirection() == img.GetDirection()
        values = sitk.GetArrayFromImage(h)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1 and values.std() > 0
        assert (unc / f"{case}_overlay.png").stat().st_size > 0
        same = sitk.GetArrayFromImage(sitk.ReadImage(str(unc / f"{case}.nii.gz")))
        np.testing.assert_array_equal(same, sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))))

    # the checkpoint reloads into nnU-Net's predictor as the CSSE network, deep supervision off
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    assert isinstance(predictor.network, CSSEUNet)
    assert predictor.network.decoder_uafs is not None and not predictor.network.decoder.deep_supervision
    assert (predictor.network.pdcr_projections is not None) == ("CSSE" in trainer)


def test_compare_and_split_on_real_trainings(planned, tmp_path):
    """compare reads the summaries nnU-Net wrote; split keeps the validation folds of nnU-Net's own split."""
    if planned["dim"] != 3:
        pytest.skip("one dataset is enough")
    trainers = ["nnUNetTrainerUAFS_2epochs_10iters", "nnUNetTrainerCSSE_2epochs_10iters"]
    for trainer in trainers:
        trained(planned, trainer)
    proc = run(["nnunet-csse", "compare", "-d", planned["id"], "-c", planned["config"], "-p", PLANS, "-tr",
                *trainers, "--folds", "0", "--out", str(tmp_path)], planned["env"])
    csv_file = next(tmp_path.glob("compare_*.csv"))
    assert next(tmp_path.glob("compare_*.png")).stat().st_size > 0
    rows = csv_file.read_text().splitlines()
    for trainer in trainers:
        model = next((planned["root"] / "nnUNet_results").glob("Dataset*")) / f"{trainer}__{PLANS}__3d_fullres"
        summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
        dice = summary["mean"]["1"]["Dice"]
        row = next(r for r in rows if r.startswith(f"{trainer},1,"))
        assert float(row.split(",")[2]) == pytest.approx(dice, abs=1e-6)
        assert trainer in proc.stdout

    pre = next((planned["root"] / "nnUNet_preprocessed").glob("Dataset*"))
    original = json.loads((pre / "splits_final.json").read_text())  # written by nnUNetv2_train
    run(["nnunet-csse", "split", "-d", planned["id"], "--fraction", "0.5", "--seed", "1"], planned["env"])
    limited = json.loads((pre / "splits_final_frac50_seed1.json").read_text())
    assert json.loads((pre / "splits_final.json").read_text()) == original  # untouched
    for full, part in zip(original, limited):
        assert part["val"] == full["val"] and set(part["train"]) < set(full["train"])
        assert len(part["train"]) == -(-len(full["train"]) // 2)


def test_validation_only_with_npz(planned):
    """`nnUNetv2_train ... --val --npz` reloads the CSSE checkpoint and re-runs nnU-Net's validation."""
    if planned["dim"] != 2:
        pytest.skip("one dataset is enough")
    trainer = "nnUNetTrainerCSSE_2epochs_10iters"
    fold = trained(planned, trainer) / "fold_0"
    summary_before = json.loads((fold / "validation" / "summary.json").read_text())
    run(["nnUNetv2_train", planned["id"], planned["config"], "0", "-tr", trainer, "-p", PLANS, "-device", "cpu",
         "--val", "--npz"], planned["env"])
    assert sorted(fold.glob("validation/*.npz")), "no probabilities exported by --npz"
    summary_after = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary_after["foreground_mean"]["Dice"] == pytest.approx(summary_before["foreground_mean"]["Dice"])


def test_resume_after_interruption(planned, tmp_path, monkeypatch):
    """A CSSE training killed in epoch 1 continues with ``--c`` from checkpoint_latest: same network (UAFS and
    projection heads included), optimizer state, PDCR logs and epoch."""
    if planned["dim"] != 2:
        pytest.skip("one dataset is enough")
    trainer, env = "nnUNetTrainerCSSE_2epochs_10iters", dict(planned["env"], nnUNet_n_proc_DA="0")
    cmd = [os.path.join(BIN, "nnUNetv2_train"), planned["id"], planned["config"], "1", "-tr", trainer, "-p", PLANS,
           "-device", "cpu"]
    results = planned["root"] / "nnUNet_results"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    logs = "*/*/fold_1/training_log_*"
    while not any(re.search(r": Epoch 1 ?$", log.read_text(), re.M) for log in results.glob(logs)):
        assert proc.poll() is None and time.time() < deadline, "the training ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the interruption: no clean shutdown
    proc.wait()
    fold = next(results.glob(f"*/{trainer}__{PLANS}__{planned['config']}")) / "fold_1"
    assert (fold / "checkpoint_latest.pth").exists() and not (fold / "checkpoint_final.pth").exists()
    latest = shutil.copy(fold / "checkpoint_latest.pth", tmp_path / "latest.pth")  # --c deletes it when done
    logs_before = set(fold.glob("training_log_*.txt"))

    run(["nnUNetv2_train", *cmd[1:], "--c"], env)
    new_logs = set(fold.glob("training_log_*.txt")) - logs_before
    assert len(new_logs) == 1
    new_log = new_logs.pop().read_text()
    assert re.search(r": Epoch 1 ?$", new_log, re.M) and not re.search(r": Epoch 0 ?$", new_log, re.M)
    assert len(logged_pdcr(new_log, "encoder")) == 1
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert len(final["logging"]["pdcr_encoder"]) == 2 and np.isfinite(final["logging"]["pdcr_encoder"]).all()

    # what --c restored (nnU-Net's own loading path, in process)
    from nnunetv2.run.run_training import get_trainer_from_args

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    resumed = get_trainer_from_args(planned["id"], planned["config"], 1, trainer, PLANS, continue_training=True,
                                    device=torch.device("cpu"))
    resumed.load_checkpoint(str(latest))
    assert resumed.current_epoch == saved["current_epoch"] == 1
    state = resumed.network.state_dict()
    assert state.keys() == saved["network_weights"].keys()
    assert any(k.startswith("pdcr_projections.") for k in state) and any(k.startswith("decoder_uafs.") for k in state)
    for key, value in saved["network_weights"].items():
        assert torch.equal(state[key], value), key
    # every parameter was being optimized (UAFS and projection heads included) and gets its momentum back;
    # only the lowest-resolution segmentation head has none: nnU-Net weights that output 0 outside DDP
    optimizer_state = resumed.optimizer.state_dict()["state"]
    names = [name for name, _ in resumed.network.named_parameters()]
    assert {names[i] for i in range(len(names)) if i not in optimizer_state} == \
        {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}
    assert optimizer_state.keys() == saved["optimizer_state"]["state"].keys()
    for index, buffers in saved["optimizer_state"]["state"].items():
        assert torch.equal(optimizer_state[index]["momentum_buffer"], buffers["momentum_buffer"]), names[index]
    assert resumed.logger.local_logger.my_fantastic_logging["pdcr_encoder"] == saved["logging"]["pdcr_encoder"]
    assert any(not torch.equal(final["network_weights"][k], v) for k, v in saved["network_weights"].items())
