"""Toy nnU-Net plans for the tests and the benchmarks: architecture kwargs as nnU-Net's planners write them, and
plans / dataset.json files of a tiny dataset that nnUNetv2_train accepts without preprocessed data."""

from __future__ import annotations

import json
from collections.abc import Sequence

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def arch_kwargs(dim: int, arch: str, n_stages: int = 4, features: int | Sequence[int] = 4, strides=None,
                kernels=None) -> dict:
    """Architecture kwargs in nnU-Net plans format (default planner / ResEnc planner layout: strings for the
    imported ops, stride 2 after stage 0).

    Args:
        features: the width of every stage, or (the tests' toy networks) the first stage's width, doubled per stage
            up to 64.
    """
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    strides = strides or [[1] * dim] + [[2] * dim] * (n_stages - 1)
    kernels = kernels or [[3] * dim] * n_stages
    if isinstance(features, Sequence):
        if len(features) != n_stages:
            raise ValueError(f"{len(features)} stage widths for {n_stages} stages")
        widths = list(features)
    else:
        widths = [min(features * 2**i, 64) for i in range(n_stages)]
    kw = dict(
        n_stages=n_stages, features_per_stage=widths, conv_op=conv,
        kernel_sizes=kernels, strides=strides, n_conv_per_stage_decoder=[1 if arch == RESENC else 2] * (n_stages - 1),
        conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True},
    )
    if arch == RESENC:
        kw["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6, 6][:n_stages]
    else:
        kw["n_conv_per_stage"] = [2] * n_stages
    return kw


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
