"""Real nnU-Net trainers, initialized on a benchmark plan without a preprocessed dataset.

``nnUNetTrainer.__init__`` needs ``nnUNet_results`` (log and output folders) and ``nnUNet_preprocessed``; its
``initialize()`` builds the network, optimizer and loss exactly as in training and then only *infers the dataset
class from the file endings* in the preprocessed configuration folder. :func:`prepare_nnunet_folders` therefore
creates temporary folders and one empty marker file ``<folder>/nnUNetPlans_3d_fullres/marker.b2nd`` that is never
read: the benchmark feeds synthetic batches straight into ``train_step`` and never builds a data loader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from pathlib import Path

import torch

from benchmarks.plans import CONFIGURATION, DATASET_NAME, BenchPlan

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerUAFS", "nnUNetTrainerPDCR", "nnUNetTrainerCSSE")
BASELINE = "nnUNetTrainer"
HOW = ("trainers are nnU-Net's real classes, constructed from an in-memory plans dict and initialize()d; "
       "nnUNet_results/nnUNet_preprocessed point to a temporary folder whose preprocessed configuration folder "
       "holds one empty '.b2nd' marker file (initialize() only infers the dataset class from file endings); no "
       "data loader is built: train_step(batch) gets the same synthetic batch (random image, block labels, "
       "nearest-downsampled deep-supervision targets) every step")


def prepare_nnunet_folders(root: Path) -> dict[str, str]:
    """Create the nnU-Net folders under ``root``, export them in ``os.environ`` and return them."""
    dirs = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    config_folder = dirs["nnUNet_preprocessed"] / DATASET_NAME / f"nnUNetPlans_{CONFIGURATION}"
    config_folder.mkdir(parents=True, exist_ok=True)
    (config_folder / "marker.b2nd").touch()
    env = {name: str(path) for name, path in dirs.items()}
    os.environ.update(env)
    return env


def uafs_blocks(network: torch.nn.Module) -> list:
    """The network's UAFS blocks (encoder and decoder), in module order."""
    from nnunet_csse.method.uafs import UAFSBlock

    return [m for m in network.modules() if isinstance(m, UAFSBlock)]


def _with_module_instance_norm(network: torch.nn.Module) -> torch.nn.Module:
    """Put ``nn.InstanceNormNd`` back into every UAFS branch (same parameters)."""
    from nnunet_csse.method.uafs import InstanceNormByStatistics

    for block in uafs_blocks(network):
        for i, layer in enumerate(block.branch):
            if isinstance(layer, InstanceNormByStatistics):
                norm_class = {1: torch.nn.InstanceNorm1d, 2: torch.nn.InstanceNorm2d,
                              3: torch.nn.InstanceNorm3d}[len(block.kernel_size)]
                norm = norm_class(layer.num_features, eps=layer.eps, affine=layer.weight is not None)
                norm.load_state_dict(layer.state_dict())
                block.branch[i] = norm
    return network


class _ChannelsLastInput(torch.nn.Module):
    """Runs ``conv`` on a channels-last copy of its input (cuDNN's native layout for half-precision convs)."""

    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        return self.conv(x.contiguous(memory_format=layout))


def _with_channels_last_branch_conv(network: torch.nn.Module) -> torch.nn.Module:
    for block in uafs_blocks(network):
        block.branch[0] = _ChannelsLastInput(block.branch[0])
    return network


def _with_pointwise_branch_conv(network: torch.nn.Module) -> torch.nn.Module:
    """The first UAFS branch conv as 1 x 1 (what ``"uafs_kernel_size": 1`` in a plan builds; fresh weights)."""
    for block in uafs_blocks(network):
        conv = block.branch[0]
        block.branch[0] = type(conv)(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None).to(
            device=conv.weight.device, dtype=conv.weight.dtype)
    return network


def _without_full_resolution_uafs(network: torch.nn.Module) -> torch.nn.Module:
    """No UAFS block after the last (full-resolution) decoder stage."""
    network.decoder_uafs[-1] = torch.nn.Identity()
    return network


def _with_eager_pdcr(loss: torch.nn.Module) -> torch.nn.Module:
    if hasattr(getattr(loss, "pdcr", None), "_orig_mod"):
        loss.pdcr = loss.pdcr._orig_mod
    return loss


def _with_batch_pairs(loss: torch.nn.Module) -> torch.nn.Module:
    pdcr = getattr(loss.pdcr, "_orig_mod", loss.pdcr)
    pdcr.config = dataclasses.replace(pdcr.config, pdcr_pairs="batch")
    return loss


def _unchanged(obj):
    return obj


# Benchmark-only variants: the shipped trainer with one optimization undone (or one candidate applied), so
# before/after come from one run. name: (base trainer, what differs, network modifier, loss modifier)
VARIANTS = {
    "nnUNetTrainerCSSE[cudnn-IN]": ("nnUNetTrainerCSSE", "UAFS branches normalize with nn.InstanceNormNd (cuDNN "
                                    "batch norm), as before InstanceNormByStatistics",
                                    _with_module_instance_norm, _unchanged),
    "nnUNetTrainerCSSE[eager-PDCR]": ("nnUNetTrainerCSSE", "PDCRLoss left uncompiled when nnU-Net compiles",
                                      _unchanged, _with_eager_pdcr),
    "nnUNetTrainerCSSE[channels-last-UAFS]": ("nnUNetTrainerCSSE", "the UAFS branch conv runs on a channels-last "
                                              "copy of its input (tried, not adopted)",
                                              _with_channels_last_branch_conv, _unchanged),
    # method departures, measured so their price and gain are known (not the authors' design: docs/method.md section 1)
    "nnUNetTrainerCSSE[uafs-k1]": ("nnUNetTrainerCSSE", "UAFS branch conv 1 x 1 instead of the authors' 3 x 3 (x 3) "
                                   "(method departure)", _with_pointwise_branch_conv, _unchanged),
    "nnUNetTrainerCSSE[no-full-res-UAFS]": ("nnUNetTrainerCSSE", "no UAFS block after the full-resolution decoder "
                                            "stage (method departure)", _without_full_resolution_uafs, _unchanged),
    # option beyond the authors: one anchor set over the batch, (B N)^2 pairs instead of B N^2
    "nnUNetTrainerCSSE[batch-pairs]": ("nnUNetTrainerCSSE", "pdcr_pairs \"batch\": cross-image anchor pairs",
                                       _unchanged, _with_batch_pairs),
}


def _variant_class(name: str) -> type:
    base_name, _, modify_network, modify_loss = VARIANTS[name]
    base = trainer_class(base_name)

    class Variant(base):
        @classmethod
        def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            # nnU-Net inspects this signature for 'plans_manager'
            return modify_network(super().build_network_architecture(
                plans_manager, configuration_manager, num_input_channels, num_output_channels,
                enable_deep_supervision))

        def _build_loss(self):
            return modify_loss(super()._build_loss())

    Variant.__name__ = Variant.__qualname__ = name
    return Variant


def trainer_class(name: str) -> type:
    if name in VARIANTS:
        return _variant_class(name)
    if name == BASELINE:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    import nnunet_csse.training as training

    try:
        return getattr(training, name)
    except AttributeError:
        raise ValueError(f"unknown trainer {name!r}; choose from {TRAINERS} or {tuple(VARIANTS)}") from None


def make_trainer(name: str, plan: BenchPlan, device: torch.device, compile_network: bool):
    """An initialized trainer (network, optimizer, loss, grad scaler as nnU-Net makes them).

    ``compile_network`` sets ``nnUNet_compile`` for ``initialize()``; nnU-Net itself never compiles on CPU.
    """
    os.environ["nnUNet_compile"] = "true" if compile_network else "false"
    plans = plan.plans_dict()
    plans["continue_training"] = False
    # the same seed for every trainer: its U-Net (built before any CSSE module) starts from the same weights, so
    # step times do not differ by initialization (on CPU, e.g., by how many denormal values a network produces)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = trainer_class(name)(plans, CONFIGURATION, 0, plan.dataset_json(), device)
        trainer.initialize()
    return trainer


def deep_supervision_scales(trainer) -> list[list[float]] | None:
    scales = trainer._get_deep_supervision_scales()
    return [list(map(float, s)) for s in scales] if scales is not None else None


def parameter_count(trainer) -> int:
    return sum(p.numel() for p in trainer.network.parameters())
