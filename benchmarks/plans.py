"""Benchmark plans: nnU-Net 3d_fullres-style plans, dataset.json and synthetic label maps.

Every part of the benchmark derives its network from one :class:`BenchPlan`, written in nnU-Net's own plans
format (``architecture`` with ``arch_kwargs``), so the baseline and the CSSE trainers get the very same
architecture kwargs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
DATASET_NAME = "Dataset999_CSSEBench"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class BenchPlan:
    """A 3D PlainConvUNet plan (nnU-Net default planner layout: 2 convs per stage, stride 2 after stage 0)."""

    name: str
    patch: tuple[int, int, int]
    batch_size: int
    features: tuple[int, ...]
    num_classes: int = 4
    num_input_channels: int = 1
    notes: str = field(default="", compare=False)

    @property
    def n_stages(self) -> int:
        return len(self.features)

    def arch_kwargs(self) -> dict:
        """``arch_kwargs`` exactly as nnU-Net's planner writes them (strings for the imported ops)."""
        n = self.n_stages
        return {
            "n_stages": n,
            "features_per_stage": list(self.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }

    def plans_dict(self) -> dict:
        """A complete nnU-Net v2 plans dict with one configuration, ``3d_fullres``."""
        spacing = [1.0, 1.0, 1.0]
        return {
            "dataset_name": DATASET_NAME,
            "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": spacing,
            "original_median_shape_after_transp": [2 * p for p in self.patch],
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {
                str(c): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                         "percentile_99_5": 1.0, "std": 1.0}
                for c in range(self.num_input_channels)
            },
            "configurations": {
                CONFIGURATION: {
                    "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
                    "preprocessor_name": "DefaultPreprocessor",
                    "batch_size": self.batch_size,
                    "patch_size": list(self.patch),
                    "median_image_size_in_voxels": [2 * p for p in self.patch],
                    "spacing": spacing,
                    "normalization_schemes": ["ZScoreNormalization"] * self.num_input_channels,
                    "use_mask_for_norm": [False] * self.num_input_channels,
                    "resampling_fn_data": "resample_data_or_seg_to_shape",
                    "resampling_fn_seg": "resample_data_or_seg_to_shape",
                    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                  "force_separate_z": None},
                    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                                 "force_separate_z": None},
                    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                           "force_separate_z": None},
                    "architecture": {
                        "network_class_name": PLAIN_UNET,
                        "arch_kwargs": self.arch_kwargs(),
                        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                    },
                    "batch_dice": False,
                },
            },
        }

    def dataset_json(self) -> dict:
        labels = {"background": 0, **{f"class{k}": k for k in range(1, self.num_classes)}}
        return {
            "channel_names": {str(c): "CT" if c == 0 else f"ch{c}" for c in range(self.num_input_channels)},
            "labels": labels,
            "numTraining": 1,
            "file_ending": ".nii.gz",
            "name": DATASET_NAME,
        }

    def describe(self) -> str:
        return (f"{self.name}: patch {'x'.join(map(str, self.patch))}, batch {self.batch_size}, "
                f"{self.n_stages} stages, features {','.join(map(str, self.features))}, {self.num_classes} classes")


# nnU-Net's default 3D plan for a large isotropic dataset (the authors' 3D setting).
FULL = BenchPlan("3d_fullres default", (128, 128, 128), 2, (32, 64, 128, 256, 320, 320),
                 notes="nnU-Net default 3d_fullres: patch 128^3, batch 2, 6 stages")
# A smaller 3d_fullres-like plan that a 2-core CPU trains in seconds per step.
SMALL = BenchPlan("3d_fullres-like small", (64, 64, 64), 2, (16, 32, 64, 128, 256),
                  notes="CPU-sized 3d_fullres-like plan")
TINY = BenchPlan("3d tiny", (32, 32, 32), 2, (8, 16, 32, 64), notes="smoke-test size")

PLANS = {"full": FULL, "small": SMALL, "tiny": TINY}


def synthetic_labels(batch: int, patch: tuple[int, ...], num_classes: int, seed: int = 0,
                     block: int = 8) -> torch.Tensor:
    """(B, 1, *patch) float32 class ids in [0, num_classes): random blocks of ``block`` voxels with a random
    per-voxel sprinkle, so windows hold mixed, uneven class compositions (nnU-Net passes targets as float)."""
    g = torch.Generator().manual_seed(seed)
    coarse_shape = tuple(math.ceil(p / block) for p in patch)
    coarse = torch.randint(0, num_classes, (batch, 1, *coarse_shape), generator=g).float()
    labels = F.interpolate(coarse, scale_factor=block, mode="nearest")[(..., *(slice(0, p) for p in patch))]
    sprinkle = torch.rand(labels.shape, generator=g) < 0.05
    noise = torch.randint(0, num_classes, labels.shape, generator=g).float()
    return torch.where(sprinkle, noise, labels).contiguous()


def synthetic_batch(plan: BenchPlan, ds_scales: list[list[float]] | None, seed: int = 0,
                    pin: bool = False) -> dict:
    """One training batch in nnU-Net's format: ``data`` (B, C, *patch) float32 and ``target`` a list of label
    maps, one per deep-supervision scale (nearest-neighbour downsampling, as nnU-Net's DS transform), on CPU
    as nnU-Net's data loader delivers them (pinned if ``pin``)."""
    g = torch.Generator().manual_seed(seed + 1)
    data = torch.randn((plan.batch_size, plan.num_input_channels, *plan.patch), generator=g)
    labels = synthetic_labels(plan.batch_size, plan.patch, plan.num_classes, seed)
    if ds_scales is None:
        target: torch.Tensor | list[torch.Tensor] = labels
    else:
        target = []
        for scale in ds_scales:
            size = tuple(max(1, round(p * s)) for p, s in zip(plan.patch, scale))
            target.append(labels if size == tuple(plan.patch) else
                          F.interpolate(labels, size=size, mode="nearest-exact"))
    if pin:
        data = data.pin_memory()
        target = [t.pin_memory() for t in target] if isinstance(target, list) else target.pin_memory()
    return {"data": data, "target": target}
