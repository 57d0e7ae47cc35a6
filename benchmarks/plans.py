"""What every benchmark part runs on: plans (``FULL``, ``SMALL``, ``TINY``), sizes, synthetic batches, timers, and
nnU-Net trainers (with benchmark-only variants) built from a plan without a dataset: docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
from collections import namedtuple
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nnunet_csse.config import PLANS_KEY
from nnunet_csse.environment import scoped_environ
from tests.toy_plans import PLAIN, REQ_IMPORT, arch_kwargs

DATASET_NAME, CONFIGURATION = "Dataset999_CSSEBench", "3d_fullres"


class BenchPlan(NamedTuple):
    """A 3D PlainConvUNet plan (nnU-Net default planner layout: 2 convs per stage, stride 2 after stage 0)."""

    name: str
    patch: tuple[int, int, int]
    batch_size: int
    features: tuple[int, ...]
    num_classes: int = 4

    def arch_kwargs(self) -> dict:
        """``arch_kwargs`` exactly as nnU-Net's planner writes them (strings for the imported ops)."""
        return arch_kwargs(3, PLAIN, n_stages=len(self.features), features=self.features)

    def plans_dict(self) -> dict:
        """Plans with one configuration: what a trainer's ``__init__``, ``initialize()`` and ``train_step`` read."""
        architecture = {"network_class_name": PLAIN, "arch_kwargs": self.arch_kwargs(),
                        "_kw_requires_import": list(REQ_IMPORT)}
        return {"dataset_name": DATASET_NAME, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
                "transpose_backward": [0, 1, 2], "configurations": {CONFIGURATION: {
                    "data_identifier": f"nnUNetPlans_{CONFIGURATION}", "batch_size": self.batch_size,
                    "patch_size": list(self.patch), "spacing": [1.0, 1.0, 1.0], "batch_dice": False,
                    "architecture": architecture}}}

    def dataset_json(self) -> dict:
        return {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"class{k}": k for k in
                range(1, self.num_classes)}}, "numTraining": 1, "file_ending": ".nii.gz", "name": DATASET_NAME}

    def describe(self) -> str:
        return (f"{self.name}: patch {'x'.join(map(str, self.patch))}, batch {self.batch_size}, {len(self.features)} "
                f"stages, features {','.join(map(str, self.features))}, {self.num_classes} classes")


FULL = BenchPlan("3d_fullres default", (128, 128, 128), 2, (32, 64, 128, 256, 320, 320))  # the authors' 3D setting
SMALL = BenchPlan("3d_fullres-like small", (64, 64, 64), 2, (16, 32, 64, 128, 256))  # seconds per step on 2 cores
TINY = BenchPlan("3d tiny", (32, 32, 32), 2, (8, 16, 32, 64))  # smoke test
PLANS = {"full": FULL, "small": SMALL, "tiny": TINY}


def synthetic_labels(batch: int, patch: tuple[int, ...], num_classes: int, seed: int = 0) -> torch.Tensor:
    """(B, 1, *patch) float32 class ids (as nnU-Net's targets): random 8-voxel blocks with a 5 % per-voxel sprinkle,
    so windows hold mixed, uneven class compositions."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (batch, 1, *(math.ceil(p / 8) for p in patch)), generator=g).float()
    labels = F.interpolate(coarse, scale_factor=8, mode="nearest")[(..., *(slice(0, p) for p in patch))]
    sprinkle = torch.rand(labels.shape, generator=g) < 0.05
    return torch.where(sprinkle, torch.randint(0, num_classes, labels.shape, generator=g).float(), labels).contiguous()


def synthetic_batch(plan: BenchPlan, ds_scales: list[list[float]], pin: bool = False) -> dict:
    """One batch as nnU-Net's data loader delivers it (CPU, pinned if ``pin``): ``data`` (B, 1, *patch) float32,
    ``target`` one label map per deep-supervision scale (nearest-neighbour downsampled, as nnU-Net's transform)."""
    data = torch.randn((plan.batch_size, 1, *plan.patch), generator=torch.Generator().manual_seed(1))
    labels = synthetic_labels(plan.batch_size, plan.patch, plan.num_classes)
    sizes = [tuple(max(1, round(p * s)) for p, s in zip(plan.patch, scale)) for scale in ds_scales]
    target = [labels if size == plan.patch else F.interpolate(labels, size=size, mode="nearest-exact")
              for size in sizes]
    return {"data": data.pin_memory(), "target": [t.pin_memory() for t in target]} if pin else \
        {"data": data, "target": target}


# --- sizes: which plan, how many repetitions and which sweep points each part uses

SpeedSettings = namedtuple("SpeedSettings", "reps_vectorized reps_loop warmup_loop")  # part A; loop warm-up untimed
StepSettings = namedtuple("StepSettings", "warmup steps memory_steps memory_parallel")  # B; CPU memory: processes
Profile = namedtuple("Profile", "pdcr_plan speed step_plan step scaling_plan spacings sides classes scaling_reps")


def profile(size: str, device: str) -> Profile:
    """``tiny``: smoke test (< 1 min on 2 CPU cores). ``small`` (CPU default): PDCR at 2 x 128^3, steps on a
    CPU-sized 3d_fullres-like plan. ``full`` (CUDA default): everything at nnU-Net's default 3D plan."""
    gpu = device == "cuda"
    if size == "tiny":
        return Profile(TINY, SpeedSettings(3, 1, 0), TINY, StepSettings(1, 2, 1, 2), TINY, (16, 8, 4), (16, 32),
                       (2, 4, 8), 1)
    if size == "small":
        return Profile(FULL, SpeedSettings(10, 3, 1) if gpu else SpeedSettings(3, 2, 0),
                       SMALL, StepSettings(3, 10, 1, 1) if gpu else StepSettings(1, 3, 1, 2), FULL,
                       (64, 32, 16, 8) if gpu else (64, 32, 16), (32, 64, 96, 128),
                       (2, 4, 8, 16) if gpu else (2, 4, 8), 5 if gpu else 2)
    return Profile(FULL, SpeedSettings(20, 5, 2) if gpu else SpeedSettings(3, 2, 0),  # full (argparse's choices)
                   FULL, StepSettings(5, 20, 1, 1) if gpu else StepSettings(1, 3, 1, 1), FULL,
                   (64, 32, 16, 8), (32, 64, 96, 128, 160, 192), (2, 4, 8, 16, 32), 10 if gpu else 2)


# --- timers: wall clock with device synchronization

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``, device work included."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_repeated(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """``warmup`` untimed calls, then the wall seconds of ``reps`` timed calls."""
    for _ in range(warmup):
        fn()
    return [time_once(fn, device)[0] for _ in range(reps)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- trainers: nnU-Net's real classes and benchmark-only variants of the CSSE trainer

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerUAFS", "nnUNetTrainerPDCR", "nnUNetTrainerCSSE")
BASELINE = "nnUNetTrainer"
HOW = ("nnU-Net's trainer classes built from an in-memory plans dict, initialize()d, fed one synthetic batch "
       "(docs/benchmarks.md)")


def nnunet_folders(root: Path) -> dict[str, str]:
    """nnU-Net's three folders created under ``root``, by variable name, with the marker file ``initialize()`` looks
    for; the environment is left alone (:func:`make_trainer` sets them for the construction only)."""
    dirs = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    config_folder = dirs["nnUNet_preprocessed"] / DATASET_NAME / f"nnUNetPlans_{CONFIGURATION}"
    for path in (*dirs.values(), config_folder):
        path.mkdir(parents=True, exist_ok=True)
    (config_folder / "marker.b2nd").touch()
    return {name: str(path) for name, path in dirs.items()}


def uafs_blocks(network: torch.nn.Module) -> list:
    from nnunet_csse.method.uafs import UAFSBlock

    return [m for m in network.modules() if isinstance(m, UAFSBlock)]


def _with_module_instance_norm(network: torch.nn.Module) -> torch.nn.Module:
    """Put ``nn.InstanceNormNd`` back into every UAFS branch (same parameters)."""
    from nnunet_csse.method.uafs import InstanceNormByStatistics

    for block in uafs_blocks(network):
        for i, layer in enumerate(block.branch):
            if isinstance(layer, InstanceNormByStatistics):
                block.branch[i] = getattr(torch.nn, f"InstanceNorm{len(block.kernel_size)}d")(
                    layer.num_features, eps=layer.eps, affine=layer.weight is not None)
                block.branch[i].load_state_dict(layer.state_dict())
    return network


def _without_full_resolution_uafs(network: torch.nn.Module) -> torch.nn.Module:
    network.decoder_uafs[-1] = torch.nn.Identity()
    return network


class Variant(NamedTuple):
    """A benchmark-only variant of ``base``: plans ``"csse"`` settings or, where no setting does it, one change to
    the built network; timed against the shipped trainer in the same run."""

    differs: str
    settings: Mapping[str, object] = {}
    network_change: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    base: str = "nnUNetTrainerCSSE"


VARIANTS = {
    "nnUNetTrainerCSSE[uafs-k1]": Variant("UAFS branch conv 1 x 1 instead of the authors' 3 x 3 (x 3) (method "
                                          "departure)", {"uafs_kernel_size": 1}),
    "nnUNetTrainerCSSE[no-full-res-UAFS]": Variant("no UAFS block after the full-resolution decoder stage (method "
                                                   "departure)", network_change=_without_full_resolution_uafs),
    "nnUNetTrainerCSSE[batch-pairs]": Variant('pdcr_pairs "batch": cross-image anchor pairs', {"pdcr_pairs": "batch"}),
    "nnUNetTrainerCSSE[cudnn-IN]": Variant("UAFS branches normalize with nn.InstanceNormNd (cuDNN batch norm), as "
                                           "before InstanceNormByStatistics",
                                           network_change=_with_module_instance_norm),
}


def trainer_class(name: str) -> type:
    """The trainer class of ``name`` (a variant: its base, with its network change if it has one)."""
    if name not in VARIANTS:
        import nnunet_csse.training as training  # nnUNetTrainer included: the CSSE trainers import it

        if not hasattr(training, name):
            raise ValueError(f"unknown trainer {name!r}; choose from {TRAINERS} or {tuple(VARIANTS)}")
        return getattr(training, name)
    base, change = trainer_class(VARIANTS[name].base), VARIANTS[name].network_change
    if change is None:
        return base

    class Changed(base):
        @classmethod
        def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            # nnU-Net inspects this signature for 'plans_manager'
            return change(super().build_network_architecture(plans_manager, configuration_manager,
                                                             num_input_channels, num_output_channels,
                                                             enable_deep_supervision))

    Changed.__name__ = Changed.__qualname__ = name
    return Changed


def trainer_plans(name: str, plan: BenchPlan) -> dict:
    """``plan``'s plans dict as ``nnUNetv2_train`` passes it, with a variant's ``"csse"`` settings."""
    plans = dict(plan.plans_dict(), continue_training=False)
    if name in VARIANTS and VARIANTS[name].settings:
        plans["configurations"][CONFIGURATION][PLANS_KEY] = dict(VARIANTS[name].settings)
    return plans


def make_trainer(name: str, plan: BenchPlan, device: torch.device, compile_network: bool, folders: Mapping[str, str]):
    """An initialized trainer (network, optimizer, loss, grad scaler as nnU-Net makes them). nnU-Net reads its
    folders and ``nnUNet_compile`` from the environment in ``__init__`` and ``initialize()`` only: both see
    ``folders`` and ``compile_network`` there, and the caller's environment is restored afterwards."""
    # the same seed for every trainer: its U-Net (built before any CSSE module) starts from the same weights, so
    # step times do not differ by initialization (on CPU, e.g., by how many denormal values a network produces)
    torch.manual_seed(0)
    with scoped_environ({**folders, "nnUNet_compile": "true" if compile_network else "false"}), \
            contextlib.redirect_stdout(io.StringIO()):
        trainer = trainer_class(name)(trainer_plans(name, plan), CONFIGURATION, 0, plan.dataset_json(), device)
        trainer.initialize()
    return trainer


def deep_supervision_scales(trainer) -> list[list[float]]:
    return [list(map(float, s)) for s in trainer._get_deep_supervision_scales()]
