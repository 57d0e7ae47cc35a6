"""One PDCR workload as the trainer sees it: anchored encoder maps, projection heads, target, PDCRLoss.

The anchored layers (cumulative stride, receptive field) and the cross-layer projection heads come from the
real :class:`nnunet_csse.network.CSSEUNet` built from a benchmark plan, so nothing is hard-coded: for nnU-Net's
default 3D plan that is level 2 (C = 128, stride 4, RF 23) and level 3 (C = 256, stride 8, RF 47).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from benchmarks.plans import PLAIN_UNET, BenchPlan, synthetic_labels
from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.pdcr import PDCRLoss
from nnunet_csse.network import CSSEUNet, build_csse_network

# The authors' 3D PDCR: encoder levels 2 and 3 plus the cross-layer term, weights 0.01 + 0.01.
PDCR_CONFIG = CSSEConfig(pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


@lru_cache(maxsize=4)
def _network(plan: BenchPlan) -> CSSEUNet:
    config = PDCR_CONFIG
    return build_csse_network(PLAIN_UNET, plan.arch_kwargs(), ["conv_op", "norm_op", "dropout_op", "nonlin"],
                              plan.num_input_channels, plan.num_classes, config)


@dataclass
class PDCRCase:
    """Inputs of one PDCR forward + backward: leaf feature maps per anchored level and the target."""

    network: CSSEUNet
    config: CSSEConfig
    loss: PDCRLoss
    target: torch.Tensor
    feature_maps: dict[int, torch.Tensor]
    num_classes: int
    amp: bool

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def num_anchors(self) -> list[int]:
        """Anchors per sample of each anchored layer."""
        grid = self.config.pdcr.input_grid(tuple(self.target.shape[2:]), self.network.anchor_layers)
        return [grid.num_anchors for _ in self.network.encoder_anchor_layers]

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)

    def vectorized_terms(self) -> dict[str, torch.Tensor]:
        """The terms exactly as the trainer computes them: ``AnchorGrid.take`` of each anchored map, the
        network's projection heads for the cross term, then :class:`PDCRLoss` on the full-resolution target."""
        with self.autocast():
            grid = self.config.pdcr.input_grid(tuple(self.target.shape[2:]), self.network.anchor_layers)
            anchors = tuple(grid.on_layer(layer.stride).take(self.feature_maps[layer.level])
                            for layer in self.network.encoder_anchor_layers)
            hidden = {"encoder": anchors,
                      "cross": tuple(p(a) for p, a in zip(self.network.pdcr_projections, anchors))}
            return self.loss(hidden, self.target)

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self.config, f"pdcr_{name}_weight") * value for name, value in terms.items())

    def zero_grad(self) -> None:
        for t in (*self.feature_maps.values(), *self.network.pdcr_projections.parameters()):
            t.grad = None

    def forward_backward(self, terms_fn: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Forward, weighted sum (0.01 each), backward into the feature maps and projection heads."""
        self.zero_grad()
        terms = terms_fn()
        # under AMP, scale like nnU-Net's GradScaler: unscaled fp16 gradients of 0.01-weighted terms underflow
        (self.weighted(terms) * self.grad_scale).backward()
        return {k: v.detach() for k, v in terms.items()}

    def gradients(self) -> dict[str, torch.Tensor]:
        grads = {f"level{lv}": f.grad for lv, f in self.feature_maps.items()}
        grads.update({f"proj.{n}": p.grad for n, p in self.network.pdcr_projections.named_parameters()})
        return {k: v.detach().float() / self.grad_scale for k, v in grads.items() if v is not None}

    @property
    def grad_scale(self) -> float:
        return 2.0**16 if self.amp else 1.0


def make_case(plan: BenchPlan, device: torch.device, patch: tuple[int, ...] | None = None,
              num_classes: int | None = None, config: CSSEConfig | None = None, amp: bool = False,
              seed: int = 0, ignore_label: int | None = None) -> PDCRCase:
    """A PDCR workload for ``plan`` (its layers and projection heads), optionally at another patch size, class
    count or anchor settings (only the loss-side fields of ``config`` are used)."""
    patch = tuple(patch or plan.patch)
    num_classes = num_classes or plan.num_classes
    config = config or PDCR_CONFIG
    network = _network(plan).to(device)  # anchored layers and projection heads do not depend on the class count
    g = torch.Generator().manual_seed(seed + 7)
    feature_maps = {}
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if amp else torch.float32
    for layer in network.encoder_anchor_layers:
        channels = network.encoder.output_channels[layer.level]
        shape = (plan.batch_size, channels, *layer.feature_shape(patch))
        feature_maps[layer.level] = torch.randn(shape, generator=g).to(device, dtype).requires_grad_(True)
    target = synthetic_labels(plan.batch_size, patch, num_classes, seed)
    if ignore_label is not None:
        target = torch.where(torch.rand(target.shape, generator=g) < 0.2, float(ignore_label), target)
    loss = PDCRLoss(network.encoder_anchor_layers, (), config.pdcr, num_classes, ignore_label=ignore_label)
    return PDCRCase(network, config, loss, target.to(device), feature_maps, num_classes, amp)
