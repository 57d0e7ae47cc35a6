"""Shared fixtures and helpers: nnU-Net architecture kwargs as the planners write them, tiny sizes, and running
nnU-Net's console scripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_csse.environment import trainers_path

# the benchmarks package (its PDCR loop reference is the tests' oracle too) lives next to tests/
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the toy architectures (nnU-Net plans format) are the benchmark plans' own; re-exported for the tests
from benchmarks.plans import PLAIN, REQ_IMPORT, RESENC, arch_kwargs  # noqa: E402, F401

BIN = os.path.dirname(sys.executable)
PLANS = "nnUNetPlansCSSE_cpu_tiny"


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    exe = os.path.join(BIN, cmd[0])
    proc = subprocess.run([exe if os.path.exists(exe) else cmd[0], *cmd[1:]], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def logged_pdcr(log: str, term: str) -> list[float]:
    """The per-epoch values of one PDCR term in an nnU-Net training log (``...: pdcr_encoder 4.1234``)."""
    return [float(v) for v in re.findall(rf": pdcr_{term} (-?\d+\.\d+|nan|-?inf)", log)]


def nnunet_env(root) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        env[name] = str(root / name)
    # one worker everywhere: these machines have 2 cores, and nnU-Net spawns a fresh interpreter per worker
    env.update(nnUNet_extTrainer=trainers_path(), nnUNet_compile="false", nnUNet_def_n_proc="1")
    return env


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread avoids thread-pool overhead on busy 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders in the environment."""
    dirs = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    return dirs


def write_plans(preprocessed, dataset="Dataset042_Toy"):
    """nnU-Net-format plans (2d, 3d_fullres and a cascade entry, patch 32) in ``preprocessed/dataset``."""
    folder = preprocessed / dataset
    folder.mkdir(parents=True)
    configurations = {}
    for dim, name in ((2, "2d"), (3, "3d_fullres")):
        configurations[name] = {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
            "patch_size": [32] * dim, "spacing": [1.0] * dim, "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
            "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
            "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch_kwargs(dim, PLAIN, features=32),
                             "_kw_requires_import": REQ_IMPORT},
        }
    configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_fullres"}
    plans = {"dataset_name": dataset, "plans_name": "nnUNetPlans", "configurations": configurations,
             "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [32, 32, 32],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=4))
    return folder


TOY_DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4,
                    "file_ending": ".nii.gz"}


def write_toy_dataset(preprocessed):
    """What nnUNetv2_train reads before loading any data: ``write_plans``, dataset.json and, per configuration,
    an empty ``.b2nd`` file in its data folder (``initialize()`` only infers the dataset class from file endings)."""
    folder = write_plans(preprocessed)
    (folder / "dataset.json").write_text(json.dumps(TOY_DATASET_JSON))
    for configuration in ("2d", "3d_fullres"):
        (folder / f"nnUNetPlans_{configuration}").mkdir()
        (folder / f"nnUNetPlans_{configuration}" / "case.b2nd").touch()
    return folder
