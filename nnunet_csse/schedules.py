"""Trainer variants that differ from the trainers of :mod:`nnunet_csse.training` only in their schedule.

* ``*_5epochs``, ``*_2epochs_10iters``: nnU-Net-style short schedules, fixed in the class;
* ``*_demo`` (``nnunet-csse demo``) and ``*_benchmark`` (``python -m benchmarks accuracy``): budget, seed,
  checkpoint interval and torch threads from the ``nnUNet_csse_schedule_*`` environment variables (nnUNetv2_train
  has no option for them), written to ``schedule.json`` in the fold folder.

Limited data goes through the split file (``nnunet-csse split``), for every trainer. The classes live here, not in
``ext_trainers/``, so that they stay picklable after nnU-Net's external trainer lookup. See docs/.
"""

from __future__ import annotations

import json
import os
import random
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_csse.training import (
    nnUNetTrainerCSSE,
    nnUNetTrainerCSSE_authors,
    nnUNetTrainerCSSE_HPDCR,
    nnUNetTrainerPDCR,
    nnUNetTrainerUAFS,
)

ENV_PREFIX = "nnUNet_csse_schedule_"
ENV_EPOCHS = ENV_PREFIX + "epochs"  # epochs
ENV_ITERATIONS = ENV_PREFIX + "iterations"  # training iterations per epoch
ENV_VAL_ITERATIONS = ENV_PREFIX + "val_iterations"  # validation iterations per epoch (pseudo Dice)
ENV_SEED = ENV_PREFIX + "seed"  # seed of python random, numpy and torch
ENV_SAVE_EVERY = ENV_PREFIX + "save_every"  # checkpoint_latest.pth every N epochs (for --c)
ENV_THREADS = ENV_PREFIX + "threads"  # torch CPU threads on -device cpu (0: nnUNetv2_train's, all cores)
SCHEDULE_FILE = "schedule.json"  # in the fold folder, next to nnU-Net's training log


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def env_int(name: str, default: int, minimum: int) -> int:
    """The integer in environment variable ``name`` (``default`` when unset or empty); ValueError naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer: set a whole number >= {minimum} "
                         f"or unset it (default {default})") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}: set it higher or unset it "
                         f"(default {default})")
    return value


class _ShortSchedule:
    """A budget fixed in the class: (epochs, training iterations, validation iterations) per epoch."""

    schedule: ClassVar[tuple[int, int, int]]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule


class _NoTestTimeMirroring:
    """Prediction without test-time mirroring (tests and demos: it only costs time there)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes


class _FiveEpochs(_ShortSchedule):
    schedule = (5, 250, 50)


class _TwoEpochsTenIterations(_NoTestTimeMirroring, _ShortSchedule):
    """Tests: a checkpoint after every epoch, so that ``--c`` can resume an interrupted run."""

    schedule = (2, 10, 2)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1


class _EnvironmentSchedule:
    """Budget, seed, checkpoint interval and torch threads from the ``nnUNet_csse_schedule_*`` variables
    (``defaults`` where unset), checked before nnU-Net creates the output folder and written to ``schedule.json``.
    Seeded right before the network is built and right before the data loaders are created, so with one seed
    every trainer starts from the same U-Net weights and the same data stream (not bit-deterministic: see docs/)."""

    # name -> (environment variable, default, minimum)
    defaults: ClassVar[dict[str, tuple[str, int, int]]] = {
        "epochs": (ENV_EPOCHS, 1000, 1), "iterations": (ENV_ITERATIONS, 250, 1),
        "val_iterations": (ENV_VAL_ITERATIONS, 50, 1), "seed": (ENV_SEED, 0, 0),
        "save_every": (ENV_SAVE_EVERY, 50, 1), "threads": (ENV_THREADS, 0, 0)}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        values = {name: env_int(*spec) for name, spec in self.defaults.items()}
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = \
            values["epochs"], values["iterations"], values["val_iterations"]
        self.schedule_seed, self.save_every = values["seed"], values["save_every"]
        if values["threads"] and self.device.type == "cpu":
            torch.set_num_threads(values["threads"])  # after nnUNetv2_train's torch.set_num_threads(cpu_count())
        self.schedule_record = {"epochs": self.num_epochs, "iterations": self.num_iterations_per_epoch,
                                "val_iterations": self.num_val_iterations_per_epoch, "seed": self.schedule_seed,
                                "torch_threads": torch.get_num_threads(), "save_every": self.save_every}
        self._write_schedule()

    def _write_schedule(self) -> None:
        if self.local_rank == 0:
            os.makedirs(self.output_folder, exist_ok=True)
            with open(os.path.join(self.output_folder, SCHEDULE_FILE), "w") as handle:
                json.dump(self.schedule_record, handle, indent=1)

    def initialize(self) -> None:
        if not self.was_initialized:
            seed_everything(self.schedule_seed)  # before the network is built
        super().initialize()

    def get_dataloaders(self):
        seed_everything(self.schedule_seed)  # the sampling stream starts from the same state in every trainer
        return super().get_dataloaders()

    def do_split(self) -> tuple[list[str], list[str]]:
        train, val = super().do_split()
        self.schedule_record.update(train_cases=[str(k) for k in train], val_cases=[str(k) for k in val])
        self._write_schedule()
        return train, val


class _DemoSchedule(_NoTestTimeMirroring, _EnvironmentSchedule):
    """``nnunet-csse demo``: 10 epochs x 50 iterations, seed 0, a checkpoint every epoch unless set."""

    defaults = dict(_EnvironmentSchedule.defaults, epochs=(ENV_EPOCHS, 10, 1), iterations=(ENV_ITERATIONS, 50, 1),
                    val_iterations=(ENV_VAL_ITERATIONS, 4, 1), save_every=(ENV_SAVE_EVERY, 1, 1))


class nnUNetTrainer_benchmark(_EnvironmentSchedule, nnUNetTrainer):
    """Plain nnU-Net on the benchmark's schedule (the baseline)."""


class nnUNetTrainerUAFS_benchmark(_EnvironmentSchedule, nnUNetTrainerUAFS):
    """UAFS only, on the benchmark's schedule (ablation)."""


class nnUNetTrainerPDCR_benchmark(_EnvironmentSchedule, nnUNetTrainerPDCR):
    """PDCR only, on the benchmark's schedule (ablation)."""


class nnUNetTrainerCSSE_benchmark(_EnvironmentSchedule, nnUNetTrainerCSSE):
    """UAFS + PDCR (the paper's method) on the benchmark's schedule."""


class nnUNetTrainerCSSE_authors_benchmark(_EnvironmentSchedule, nnUNetTrainerCSSE_authors):
    """CSSE with the authors' 3D loss, projection heads and UAFS branch norm, on the benchmark's schedule."""


class nnUNetTrainer_demo(_DemoSchedule, nnUNetTrainer):
    """Plain nnU-Net on the demo's schedule (the demo's baseline)."""


class nnUNetTrainerCSSE_demo(_DemoSchedule, nnUNetTrainerCSSE):
    """CSSE on the demo's schedule."""


class nnUNetTrainerUAFS_5epochs(_FiveEpochs, nnUNetTrainerUAFS):
    pass


class nnUNetTrainerPDCR_5epochs(_FiveEpochs, nnUNetTrainerPDCR):
    pass


class nnUNetTrainerCSSE_5epochs(_FiveEpochs, nnUNetTrainerCSSE):
    pass


class nnUNetTrainerCSSE_HPDCR_5epochs(_FiveEpochs, nnUNetTrainerCSSE_HPDCR):
    pass


class nnUNetTrainer_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainer):
    """Plain nnU-Net on the tests' schedule, the baseline for side-by-side runs."""


class nnUNetTrainerUAFS_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainerUAFS):
    pass


class nnUNetTrainerPDCR_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainerPDCR):
    pass


class nnUNetTrainerCSSE_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainerCSSE):
    pass


class nnUNetTrainerCSSE_authors_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainerCSSE_authors):
    pass


class nnUNetTrainerCSSE_HPDCR_2epochs_10iters(_TwoEpochsTenIterations, nnUNetTrainerCSSE_HPDCR):
    pass
