"""nnU-Net v2 trainers for UAFS, PDCR and both (CSSE); each differs from the others only in its
``csse_defaults``, which a plans configuration may override under the key ``"csse"``. Short-schedule, demo and
benchmark variants are in ``nnunet_csse.schedules``. The classes live here, not in ``ext_trainers/``, so they can be
pickled after nnU-Net's external trainer lookup. README "Trainers"; docs/method.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_csse.config import PLANS_KEY, CSSEConfig, config_from_plans
from nnunet_csse.method.pdcr import PDCREmbeddings, PDCRLoss
from nnunet_csse.method.settings import PDCR_TERMS
from nnunet_csse.method.uafs import UAFSBlock
from nnunet_csse.network import CSSEUNet, SegmentationWithHidden, build_csse_network, check_supported_architecture


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def check_labels_consecutive(label_manager: LabelManager, dataset_json: dict) -> None:
    """nnU-Net's one-hot losses and PDCR's composition vectors index classes by label value, so the values
    must run 0, 1, 2, ... (ignore label last); nnU-Net itself checks this only with --verify_dataset_integrity."""
    values = [int(v) for v in label_manager.all_labels]
    values = sorted(values + ([int(label_manager.ignore_label)] if label_manager.has_ignore_label else []))
    if values != list(range(len(values))):
        raise ValueError(
            f"dataset.json labels {dataset_json['labels']} are not consecutive (0, 1, 2, ...): label values "
            f"{values} leave gaps. Renumber the ground-truth files and dataset.json so the labels run 0..K-1 (the "
            f"ignore label, if any, last), then re-run nnUNetv2_plan_and_preprocess --verify_dataset_integrity."
        )


AUTHORS_2D_PRESET = "authors_2d"


def network_config(defaults: CSSEConfig, configuration_manager: ConfigurationManager,
                   configuration: str = "") -> tuple[CSSEConfig, list[str]]:
    """The CSSE settings of a plans configuration: ``defaults`` with its "csse" overrides, fitted to its network
    (``CSSEConfig.fit_levels``); and notes on adapted default levels. The one derivation of the settings that
    build a network, for training and for nnU-Net's predictor."""
    config = config_from_plans(defaults, configuration_manager.configuration, configuration)
    return config.fit_levels(int(configuration_manager.network_arch_init_kwargs["n_stages"]))


def check_plans_for_trainer(defaults: CSSEConfig, plans: dict, configuration: str,
                            dataset_json: dict | None) -> tuple[CSSEConfig, list[str], list[str]]:
    """Every check a CSSE trainer runs on its plans before nnU-Net writes anything: supported network, the "csse"
    settings, their levels against the network, H-PDCR windows against the patch and (with ``dataset_json``)
    consecutive labels. Called by the trainers and by ``nnunet-csse plans`` before it writes a plans file.

    Returns (the settings fitted to the network, notes on adapted default levels, warnings about settings that
    train but are unusual); raises ``ValueError`` naming the problem and the fix."""
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    check_supported_architecture(configuration_manager.network_arch_class_name)
    config, notes = network_config(defaults, configuration_manager, configuration)
    config.check_windows_fit(configuration_manager.patch_size, configuration)
    if dataset_json is not None:
        label_manager = plans_manager.get_label_manager(dataset_json)
        check_labels_consecutive(label_manager, dataset_json)
        if config.uses_pdcr and config.pdcr.variant == "authors" and label_manager.has_regions:
            raise ValueError(f"csse setting 'pdcr_variant' \"authors\" reproduces the authors' label-id code and has "
                             f"no region-based form; this dataset trains regions. Set 'pdcr_variant' to \"clean\" "
                             f"in the plans' \"{PLANS_KEY}\" settings (configuration '{configuration}')")
    warnings = []
    if not (config.uafs.is_on or config.uses_pdcr):
        warnings.append(f"every CSSE part is off in configuration '{configuration}' (uafs_decoder and uafs_encoder "
                        f"false, pdcr_encoder_weight, pdcr_cross_weight and pdcr_decoder_weight 0): this trains plain "
                        f"nnU-Net; check the plans' \"{PLANS_KEY}\" settings")
    marker = plans.get("csse_preset") or {}  # written by ``nnunet-csse plans``
    if marker.get("preset") == AUTHORS_2D_PRESET and configuration in marker.get("configurations", ()) \
            and len(configuration_manager.patch_size) == 3:
        warnings.append(f"plans preset '{AUTHORS_2D_PRESET}' (the authors' 2D settings: UAFS on the encoder too, "
                        f"H-PDCR windows 5/7/9 voxels, encoder weight 0.1, tau 1) is applied to the 3D configuration "
                        f"'{configuration}'; the authors' 3D setup is the preset 'authors_3d'")
    return config, notes, warnings


class _GradientGate(torch.autograd.Function):
    """Identity; its backward passes the gradient only where ``state["open"]`` (a bool tensor that the loss sets
    after computing the term) is True, and zeros otherwise (NaN included). No host synchronization."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, state: dict) -> torch.Tensor:
        ctx.state = state
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.where(ctx.state["open"], grad, torch.zeros_like(grad)), None


class CSSELoss(nn.Module):
    """nnU-Net's segmentation loss plus weighted PDCR terms; keeps per-epoch statistics of the terms.

    In training the network returns a ``SegmentationWithHidden``; then the loss is
    ``seg_loss(seg_output, target) + sum_t weight_t * PDCR_t``. Validation outputs (no hidden) pass straight to
    nnU-Net's loss. A non-finite PDCR term is left out of that step: its value is replaced by 0 and a gradient
    gate on its anchors zeroes whatever its backward produces, so it never poisons the weights; the segmentation
    loss still trains and the skip is counted. All of this stays on the device (no host sync per step); the
    statistics are read once per epoch.
    """

    def __init__(self, seg_loss: nn.Module, pdcr: PDCRLoss, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.pdcr = pdcr
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.reset_statistics()

    def reset_statistics(self) -> None:
        self.sums = dict.fromkeys(self.weights, 0.0)
        self.counts = dict.fromkeys(self.weights, 0)
        self.skipped = dict.fromkeys(self.weights, 0)

    def forward(self, output, target) -> torch.Tensor:
        if not isinstance(output, SegmentationWithHidden):
            return self.seg_loss(output, target)
        embeddings: PDCREmbeddings = output.hidden
        loss = self.seg_loss(output.segmentation, target)
        gates = {term: {} for term in PDCR_TERMS}
        gated = embeddings._replace(**{term: tuple(_GradientGate.apply(t, gates[term])
                                                   for t in getattr(embeddings, term)) for term in PDCR_TERMS})
        terms = self.pdcr(gated, target[0] if isinstance(target, (list, tuple)) else target)
        for name, term in terms.items():
            finite = torch.isfinite(term)
            gates[name]["open"] = finite
            value = torch.where(finite, term, torch.zeros_like(term))
            loss = loss + self.weights[name] * value
            self.sums[name] = self.sums[name] + value.detach()
            self.counts[name] = self.counts[name] + finite
            self.skipped[name] = self.skipped[name] + ~finite
        return loss

    def epoch_statistics(self) -> tuple[dict[str, float], dict[str, int]]:
        """(mean of each term over the steps where it was finite, number of steps it was skipped)."""
        means = {n: float(self.sums[n]) / int(self.counts[n]) if int(self.counts[n]) else float("nan")
                 for n in self.weights}
        return means, {n: int(self.skipped[n]) for n in self.weights}


class CSSELocalLogger(LocalLogger):
    """nnU-Net's local logger plus one list per PDCR term, plotted to progress_pdcr.png."""

    def __init__(self, terms: tuple[str, ...], verbose: bool = False) -> None:
        super().__init__(verbose)
        self.pdcr_keys = tuple(f"pdcr_{t}" for t in terms)
        self.ensure_keys()

    def ensure_keys(self) -> None:
        epochs = len(self.my_fantastic_logging["train_losses"])
        for key in self.pdcr_keys:
            self.my_fantastic_logging.setdefault(key, [float("nan")] * epochs)

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        self.ensure_keys()  # checkpoints of runs without these terms

    def plot_progress_png(self, output_folder: str) -> None:
        """nnU-Net's progress.png as it is, plus the PDCR curves in a small progress_pdcr.png next to it (a
        separate file: re-encoding nnU-Net's 3000 x 5400 px plot with an extra panel tripled the per-epoch cost)."""
        from pathlib import Path

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        super().plot_progress_png(output_folder)
        epoch = min(len(v) for v in self.my_fantastic_logging.values())
        fig = Figure(figsize=(12, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for key in self.pdcr_keys:
            ax.plot(range(epoch), self.my_fantastic_logging[key][:epoch], ls="-", label=key, linewidth=2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=14)
        ax.set_ylabel("PDCR term (unweighted)", fontsize=14)
        ax.tick_params(labelsize=12)  # nnU-Net's plot sets seaborn's font_scale=2.5 globally
        ax.legend(loc="upper right", fontsize=12)
        fold = Path(output_folder).resolve()  # <trainer>__<plans>__<configuration>/fold_<f>
        ax.set_title(f"PDCR terms per epoch: {fold.parent.name}, {fold.name}", fontsize=14)
        fig.tight_layout()
        fig.savefig(f"{output_folder}/progress_pdcr.png")


class nnUNetTrainerCSSEBase(nnUNetTrainer):
    """Machinery shared by all CSSE trainers; with its own defaults (everything off) it equals nnUNetTrainer."""

    csse_defaults: ClassVar[CSSEConfig] = CSSEConfig()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        # validate plans, settings and labels before nnU-Net's __init__ creates output folders and log files
        csse_config, level_notes, warnings = check_plans_for_trainer(self.csse_defaults, plans, configuration,
                                                                     dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.csse_config = csse_config
        for note in level_notes:
            self.print_to_log_file(f"NOTE: {note}")
        for warning in warnings:
            self.print_to_log_file(f"WARNING: {warning}")
        self.pdcr_terms = tuple(self.csse_config.pdcr.term_weights)
        if self.pdcr_terms:
            self.logger.local_logger = CSSELocalLogger(self.pdcr_terms, self.logger.local_logger.verbose)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Called by training and by nnU-Net's predictor; the class's defaults plus the plans' "csse" settings
        decide the layout, so a checkpoint always rebuilds into the same modules."""
        config, _ = network_config(cls.csse_defaults, configuration_manager)
        return build_csse_network(configuration_manager.network_arch_class_name,
                                  configuration_manager.network_arch_init_kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, config, enable_deep_supervision)

    def initialize(self) -> None:
        super().initialize()
        built = unwrap_network(self.network)
        if isinstance(built, CSSEUNet) and built.config != self.csse_config:  # a subclass may build its own network
            raise RuntimeError(f"the network was built with other CSSE settings than the trainer checked: "
                               f"{built.config.to_json()} != {self.csse_config.to_json()}")

    def _build_loss(self):
        loss = super()._build_loss()
        network: CSSEUNet = unwrap_network(self.network)
        self.print_to_log_file("CSSE settings:", self.csse_config.to_json())
        for part, blocks in (("encoder", network.encoder_uafs), ("decoder", network.decoder_uafs)):
            if blocks is not None:
                kernels = [list(b.kernel_size) if isinstance(b, UAFSBlock) else None for b in blocks]
                self.print_to_log_file(f"UAFS {part} branch kernels built: {kernels}")
        if not self.pdcr_terms:
            return loss
        network.return_hidden = True
        lm = self.label_manager
        num_classes = len(lm.foreground_regions) if lm.has_regions else lm.num_segmentation_heads
        pdcr = PDCRLoss(network.encoder_anchor_layers, network.decoder_anchor_layers, self.csse_config.pdcr,
                        num_classes, ignore_label=None if lm.has_regions else lm.ignore_label,
                        has_regions=lm.has_regions, region_ignore_channel=lm.has_regions and lm.has_ignore_label)
        patch = tuple(self.configuration_manager.patch_size)
        grid = network.anchor_grid(patch)
        self.print_to_log_file(f"PDCR anchor grid of the patch {list(patch)}, shared by every anchored layer: "
                               f"{grid.describe()}")
        for layer in network.anchor_layers:
            widths = [layer.field.widths(a) for a in range(len(layer.stride))]
            field = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in widths]
            layer_grid = grid.on_layer(layer.stride)
            self.print_to_log_file(
                f"PDCR layer {layer.name}: cumulative stride {list(layer.stride)}, exact receptive field {field} "
                f"(a range: it depends on the position after transposed convolutions), anchors at feature positions "
                f"{list(layer_grid.offsets)} + {list(layer_grid.steps)} * t")
        if self._do_i_compile():
            # as nnU-Net compiles its Dice loss: PDCR is ~160 small kernels in eager mode, whose launches sit on the
            # step's critical path once the network itself is compiled; one graph, shapes fixed by the patch
            pdcr = torch.compile(pdcr)
        return CSSELoss(loss, pdcr, self.csse_config.pdcr.term_weights)

    def on_train_epoch_start(self):
        if self.pdcr_terms:
            self.loss.reset_statistics()
        super().on_train_epoch_start()

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.pdcr_terms:
            return
        means, skipped = self.loss.epoch_statistics()
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (means, skipped))
            means = {t: float(np.nanmean([g[0][t] for g in gathered])) for t in self.pdcr_terms}
            skipped = {t: sum(g[1][t] for g in gathered) for t in self.pdcr_terms}
        for term in self.pdcr_terms:
            self.logger.log(f"pdcr_{term}", means[term], self.current_epoch)
            self.print_to_log_file(f"pdcr_{term}", np.round(means[term], decimals=4))
            if skipped[term]:
                self.print_to_log_file(f"WARNING: PDCR term '{term}' was non-finite and skipped in "
                                       f"{skipped[term]} step(s) of this epoch")


class nnUNetTrainerUAFS(nnUNetTrainerCSSEBase):
    """UAFS after every decoder stage, before its segmentation head (authors' 3D placement)."""

    csse_defaults = CSSEConfig.of(uafs_decoder=True)


class nnUNetTrainerPDCR(nnUNetTrainerCSSEBase):
    """RF-PDCR on encoder levels 2 and 3 plus the cross-layer term, weights 0.01 each (authors' 3D)."""

    csse_defaults = CSSEConfig.of(pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


class nnUNetTrainerCSSE(nnUNetTrainerCSSEBase):
    """The paper's method: UAFS after every decoder stage + encoder and cross-layer RF-PDCR (authors' 3D)."""

    csse_defaults = CSSEConfig.of(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


class nnUNetTrainerCSSE_HPDCR(nnUNetTrainerCSSE):
    """CSSE with hierarchical PDCR windows of 5, 7 and 9 voxels (authors' 2D sizes; loss per size, averaged)."""

    csse_defaults = nnUNetTrainerCSSE.csse_defaults.replaced(pdcr_windows=(5, 7, 9))


class nnUNetTrainerCSSE_authors(nnUNetTrainerCSSE):
    """CSSE as the authors' 3D code computes it: ``pdcr_variant: "authors"`` (their loss quirk by quirk and their
    projection heads) and ``uafs_norm: "batch"`` (batch norm + ReLU in the UAFS branch); docs/method.md section 4."""

    csse_defaults = nnUNetTrainerCSSE.csse_defaults.replaced(pdcr_variant="authors", uafs_norm="batch")
