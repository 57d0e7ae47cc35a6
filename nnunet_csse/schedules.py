"""Trainer variants that differ from the trainers of :mod:`nnunet_csse.training` only in their schedule.

Short schedules (nnU-Net's ``nnUNetTrainer_5epochs`` style), for trying things out and for the tests:

    nnUNetTrainer{UAFS,PDCR,CSSE,CSSE_HPDCR}_5epochs          5 epochs x 250 iterations
    nnUNetTrainer{,UAFS,PDCR,CSSE,CSSE_HPDCR,CSSE_authors}_2epochs_10iters  2 epochs x 10 iterations, a checkpoint
                                                                every epoch
    nnUNetTrainer{,CSSE}_demo                                   ``nnunet-csse demo``'s budget and seed

Trainers for the accuracy benchmark (``python -m benchmarks accuracy``): explicit budget, fixed seed and an
optional limited-data fraction, the same for every trainer.

    nnUNetTrainer_benchmark         plain nnU-Net
    nnUNetTrainerUAFS_benchmark     UAFS only (ablation)
    nnUNetTrainerPDCR_benchmark     PDCR only (ablation)
    nnUNetTrainerCSSE_benchmark     UAFS + PDCR: the paper's method
    nnUNetTrainerCSSE_authors_benchmark  the same with the authors' 3D loss and modules

Each is its trainer from :mod:`nnunet_csse.training` plus :class:`_BenchmarkSchedule`. ``nnUNetv2_train`` has no
option for the budget or the seed, so they come from environment variables that the benchmark sets for its
``nnUNetv2_train`` processes (nnU-Net's defaults where a variable is unset):

    nnUNet_csse_benchmark_epochs          epochs (nnU-Net: 1000)
    nnUNet_csse_benchmark_iterations      training iterations per epoch (nnU-Net: 250)
    nnUNet_csse_benchmark_val_iterations  validation iterations per epoch, for the pseudo Dice (nnU-Net: 50)
    nnUNet_csse_benchmark_seed            seed of python ``random``, numpy and torch (default 0)
    nnUNet_csse_benchmark_save_every      checkpoint_latest.pth every N epochs, for ``--c`` (nnU-Net: 50)
    nnUNet_csse_benchmark_threads         torch CPU threads (``nnUNetv2_train -device cpu`` takes all cores)

Seed: nnU-Net does not fix one. The mixin seeds ``random``, numpy and torch right before the network is built
(``initialize``) and again right before the data loaders are created (``get_dataloaders``). nnU-Net builds the
plain U-Net first and the CSSE trainers add their modules after it, so with one seed every trainer starts from
the same U-Net weights, and the data stream starts from the same state. Not bit-deterministic even so: with
``nnUNet_n_proc_DA`` > 0, nnU-Net's augmentation workers (``NonDetMultiThreadedAugmenter``, ``seeds=None``) draw
from unseeded generators and deliver batches in arrival order, cuDNN runs with ``benchmark=True``, and CSSE's
extra modules consume random numbers that the baseline does not. Repeat runs with ``--seeds`` to see the spread.

Limited data: a plans configuration may hold ``"training_fraction": f`` (0 < f <= 1) and
``"training_fraction_seed": s`` (default :data:`TRAINING_SUBSET_SEED`). ``do_split`` then takes nnU-Net's split of
the fold, keeps its validation cases and trains on ``round(f * n_train)`` (at least 1) of its training cases, chosen
by :func:`training_subset` from ``s`` and the fold only, never from the run seed, so every trainer and every seed
gets the same subset; the same subset as ``nnunet-csse split --fraction f --seed s``. ``splits_final.json`` is not
changed. The trainer logs the subset.

The classes live here (not in ``trainers/``) so that they can be pickled after nnU-Net's external trainer lookup
drops the modules it imported from ``nnUNet_extTrainer``; ``ext_trainers/nnunet_csse_trainers.py`` re-exports them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_csse.tools.splits import limited_size
from nnunet_csse.training import (
    nnUNetTrainerCSSE,
    nnUNetTrainerCSSE_authors,
    nnUNetTrainerCSSE_HPDCR,
    nnUNetTrainerPDCR,
    nnUNetTrainerUAFS,
)

FRACTION_KEY = "training_fraction"
FRACTION_SEED_KEY = "training_fraction_seed"
#: seed of the limited-data subsets, independent of the run seed (same as ``nnunet-csse split``'s default)
TRAINING_SUBSET_SEED = 0

ENV_PREFIX = "nnUNet_csse_benchmark_"
ENV_EPOCHS = ENV_PREFIX + "epochs"
ENV_ITERATIONS = ENV_PREFIX + "iterations"
ENV_VAL_ITERATIONS = ENV_PREFIX + "val_iterations"
ENV_SEED = ENV_PREFIX + "seed"
ENV_SAVE_EVERY = ENV_PREFIX + "save_every"
ENV_THREADS = ENV_PREFIX + "threads"

#: the line the trainer writes to its training log; the benchmark parses it back
BUDGET_LOG_PREFIX = "benchmark budget:"
SUBSET_LOG_PREFIX = "benchmark training fraction"


def check_training_fraction(fraction: object, source: str = "training fraction") -> float:
    """``fraction`` as a float in (0, 1]; a ValueError naming ``source`` otherwise (NaN, bools and text too)."""
    if isinstance(fraction, bool):
        raise ValueError(f"{source} must be a number in (0, 1], got {fraction!r}")
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a number in (0, 1], got {fraction!r}") from None
    if not 0.0 < value <= 1.0:  # also rejects nan
        raise ValueError(f"{source} must be in (0, 1], got {fraction!r}")
    return value


def training_subset(train_keys: Sequence[str], fraction: float, fold: int,
                    subset_seed: int = TRAINING_SUBSET_SEED) -> list[str]:
    """The ``limited_size(fraction, n)`` training cases of ``fold`` kept for a limited-data run, in their order.

    The candidates are sorted, permuted with ``numpy.random.RandomState([subset_seed, fold])`` and the first
    ones kept (what ``nnunet-csse split`` does per fold), so the subset depends on the fold's cases, the
    fraction, the fold index and ``subset_seed`` only. A smaller fraction gives a subset of a larger one.
    """
    fraction = check_training_fraction(fraction)
    candidates = sorted(str(k) for k in train_keys)
    if not candidates:
        raise ValueError(f"fold {fold} has no training cases to subsample")
    order = np.random.RandomState([int(subset_seed) % 2**32, int(fold)]).permutation(len(candidates))
    keep = {candidates[i] for i in order[: limited_size(fraction, len(candidates))]}
    return [str(k) for k in train_keys if str(k) in keep]


def fraction_of_configuration(configuration: Mapping) -> tuple[float | None, int]:
    """(training fraction or None, subset seed) of a plans configuration dict; validated."""
    if FRACTION_KEY not in configuration:
        return None, TRAINING_SUBSET_SEED
    fraction = check_training_fraction(configuration[FRACTION_KEY], f"plans key '{FRACTION_KEY}'")
    seed = configuration.get(FRACTION_SEED_KEY, TRAINING_SUBSET_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"plans key '{FRACTION_SEED_KEY}' must be a non-negative integer, got {seed!r}")
    return fraction, seed


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


class _BenchmarkSchedule:
    """Budget and seed from the environment, limited-data fraction from the plans (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        # everything is checked before nnU-Net's __init__ creates the output folder
        self.benchmark_fraction, self.benchmark_subset_seed = fraction_of_configuration(
            PlansManager(plans).get_configuration(configuration).configuration)
        if self.benchmark_fraction is not None and fold == "all":
            raise ValueError(f"plans key '{FRACTION_KEY}' needs a numbered fold; fold 'all' trains and validates on "
                             f"every case")
        epochs = _env_int(ENV_EPOCHS, 1000, 1)
        iterations = _env_int(ENV_ITERATIONS, 250, 1)
        val_iterations = _env_int(ENV_VAL_ITERATIONS, 50, 1)
        self.benchmark_seed = _env_int(ENV_SEED, 0, 0)
        save_every = _env_int(ENV_SAVE_EVERY, 50, 1)
        threads = _env_int(ENV_THREADS, 0, 0)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = \
            epochs, iterations, val_iterations
        self.save_every = save_every
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)  # after nnUNetv2_train's torch.set_num_threads(cpu_count())
        self.print_to_log_file(
            f"{BUDGET_LOG_PREFIX} {epochs} epochs x {iterations} iterations per epoch, {val_iterations} validation "
            f"iterations per epoch, seed {self.benchmark_seed}, torch threads {torch.get_num_threads()}, "
            f"checkpoint every {save_every} epochs")

    def initialize(self) -> None:
        if not self.was_initialized:
            seed_everything(self.benchmark_seed)  # before the network is built
        super().initialize()

    def get_dataloaders(self):
        seed_everything(self.benchmark_seed)  # the sampling stream starts from the same state in every trainer
        return super().get_dataloaders()

    def do_split(self) -> tuple[list[str], list[str]]:
        tr_keys, val_keys = super().do_split()
        if self.benchmark_fraction is None:
            return tr_keys, val_keys
        subset = training_subset(tr_keys, self.benchmark_fraction, self.fold, self.benchmark_subset_seed)
        self.print_to_log_file(
            f"{SUBSET_LOG_PREFIX} {self.benchmark_fraction:g}: training on {len(subset)} of {len(tr_keys)} training "
            f"cases of fold {self.fold} (subset seed {self.benchmark_subset_seed}), the {len(val_keys)} validation "
            f"cases unchanged; training cases: {', '.join(subset)}")
        return subset, list(val_keys)


class nnUNetTrainer_benchmark(_BenchmarkSchedule, nnUNetTrainer):
    """Plain nnU-Net with the benchmark's budget, seed and training fraction (the baseline)."""


class nnUNetTrainerUAFS_benchmark(_BenchmarkSchedule, nnUNetTrainerUAFS):
    """UAFS only, with the benchmark's budget, seed and training fraction (ablation)."""


class nnUNetTrainerPDCR_benchmark(_BenchmarkSchedule, nnUNetTrainerPDCR):
    """PDCR only, with the benchmark's budget, seed and training fraction (ablation)."""


class nnUNetTrainerCSSE_benchmark(_BenchmarkSchedule, nnUNetTrainerCSSE):
    """UAFS + PDCR (the paper's method) with the benchmark's budget, seed and training fraction."""


class nnUNetTrainerCSSE_authors_benchmark(_BenchmarkSchedule, nnUNetTrainerCSSE_authors):
    """CSSE with the authors' 3D loss, projection heads and UAFS branch norm, on the benchmark's schedule."""


class _ShortSchedule:
    """Mixin for short schedules (nnU-Net's ``nnUNetTrainer_5epochs`` style): (epochs, iterations, val iterations)."""

    schedule: ClassVar[tuple[int, int, int]]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule


class _FiveEpochs(_ShortSchedule):
    schedule = (5, 250, 50)


class _TwoEpochsTenIterations(_ShortSchedule):
    """Tests and demos: a checkpoint after every epoch (so ``--c`` can resume an interrupted run) and
    prediction without test-time mirroring (it only costs time there)."""

    schedule = (2, 10, 2)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes


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


class _DemoSchedule(_TwoEpochsTenIterations):
    """``nnunet-csse demo``: schedule and seed from the environment (nnUNetv2_train has no epoch option), so the
    baseline and CSSE runs get the same budget and seed. Variables: nnUNet_csse_demo_epochs (default 10),
    nnUNet_csse_demo_iterations (default 50), nnUNet_csse_demo_seed (default 0)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        seed_everything(int(os.environ.get("nnUNet_csse_demo_seed", 0)))
        self.schedule = (int(os.environ.get("nnUNet_csse_demo_epochs", 10)),
                         int(os.environ.get("nnUNet_csse_demo_iterations", 50)), 4)
        super().__init__(plans, configuration, fold, dataset_json, device)


class nnUNetTrainer_demo(_DemoSchedule, nnUNetTrainer):
    """Plain nnU-Net on the demo's schedule (the demo's baseline)."""


class nnUNetTrainerCSSE_demo(_DemoSchedule, nnUNetTrainerCSSE):
    pass
