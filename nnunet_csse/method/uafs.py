"""UAFS: uncertainty-aware feature selection (docs/method.md section 1).

Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image Segmentation", IEEE TMI 2022
(arXiv 2201.08779; the journal version calls the block UAFR). A small branch predicts M-way logits per
voxel; the normalized entropy of their softmax is an uncertainty map H in [0, 1]; features are re-weighted
by ``y = x + x * (1 - H)``. The branch has no loss of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalized entropy over the channel axis.

    Args:
        logits: (B, M, *spatial) branch logits.

    Returns:
        (B, 1, *spatial) float32 ``-sum_m p_m log p_m / log M`` in [0, 1] (0 for M == 1).
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, M, *spatial), got shape {tuple(logits.shape)}")
    num_branches = logits.shape[1]
    if num_branches == 1:
        return torch.zeros_like(logits, dtype=torch.float32)
    # float32 + log_softmax: AMP-safe and no log(0) for saturated probabilities
    log_p = torch.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1, keepdim=True)
    return entropy / math.log(num_branches)


def instance_norm_by_statistics(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.instance_norm`` (input statistics, biased variance) from ``var_mean`` and one fused multiply-add.

    Args:
        x: (B, C, *spatial), any float dtype; the output keeps it (autocast is disabled inside).
        weight, bias: (C,) affine parameters, or None.
        eps: added to the variance.

    Returns:
        (B, C, *spatial) normalized ``x``; statistics in at least float32.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        var, mean = torch.var_mean(x, dim=tuple(range(2, x.ndim)), keepdim=True, correction=0)
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        scale = torch.rsqrt(var.to(stats_dtype) + eps)
        shift = -mean.to(stats_dtype) * scale
        if weight is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            scale = scale * weight.view(shape)
            shift = shift * weight.view(shape) + bias.view(shape)
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


class InstanceNormByStatistics(nn.Module):
    """Instance normalization (the math of ``nn.InstanceNormNd`` without running statistics); on CUDA computed by
    :func:`instance_norm_by_statistics`.

    Why: on CUDA, ``nn.InstanceNormNd`` runs cuDNN's batch norm on a (1, B * C, *S) view, whose kernels
    parallelize over channels; the UAFS branch has only B * C // 4 of them at full resolution, where they are the
    block's slowest kernels. On other devices this calls ``F.instance_norm`` (faster there). Same parameters and
    state-dict keys (``weight``, ``bias``) as the module it replaces; the output keeps the input dtype.

    Shapes: (B, C, *spatial) -> (B, C, *spatial).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    @classmethod
    def replacing(cls, norm: _InstanceNorm) -> InstanceNormByStatistics:
        """The same normalization as ``norm`` (an ``nn.InstanceNormNd`` without running statistics)."""
        new = cls(norm.num_features, norm.eps, norm.affine)
        if norm.affine:
            new.load_state_dict(norm.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (B, {self.num_features}, *spatial), got shape {tuple(x.shape)}")
        if x.device.type != "cuda":  # the CPU kernels of instance_norm are the faster ones there
            return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)
        return instance_norm_by_statistics(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class UAFSBlock(nn.Module):
    """Uncertainty-aware feature selection, dimension-agnostic (built from the plan's ops).

    Branch: conv k (C -> max(C // 4, 1)) -> norm -> nonlin -> conv 1x1 (-> M). Authors: k = 3, M = 2. An
    ``nn.InstanceNormNd`` norm_op (nnU-Net's plans) runs as :class:`InstanceNormByStatistics`: same math and
    state-dict keys, faster on the branch's few channels.

    Args:
        channels: C, channels of the feature map the block re-weights.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d`` (the plan's conv_op).
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: the plan's normalization and nonlinearity.
        num_branches: M >= 1.
        kernel_size: int or per-axis sequence (anisotropic stages may pass e.g. (1, 3, 3)); odd values.

    Shapes: ``forward`` (B, C, *spatial) -> (B, C, *spatial); ``uncertainty`` -> (B, 1, *spatial).

    Keeping H: with ``keep_uncertainty`` set (see :func:`keeping_uncertainty`), ``forward`` also stores the H it
    computed as ``kept_uncertainty`` ((B, 1, *spatial) float32), so inference can export the map without running
    the branch again. Both are plain attributes, not part of the state dict; off by default (training unchanged).
    """

    def __init__(
        self,
        channels: int,
        conv_op: type[nn.Module],
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        num_branches: int = 2,
        kernel_size: int | Sequence[int] = 3,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"UAFS needs at least one channel, got {channels}")
        if num_branches < 1:
            raise ValueError(f"UAFS needs num_branches (M) >= 1, got {num_branches}")
        dim = 3 if conv_op is nn.Conv3d else 2 if conv_op is nn.Conv2d else 1 if conv_op is nn.Conv1d else None
        if dim is None:
            raise ValueError(f"conv_op must be nn.Conv1d/2d/3d, got {conv_op}")
        kernel = (kernel_size,) * dim if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel) != dim or any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size must be odd and have {dim} entries, got {kernel_size}")
        hidden = max(channels // 4, 1)
        layers: list[nn.Module] = [
            conv_op(channels, hidden, kernel, 1, tuple(k // 2 for k in kernel), bias=conv_bias)
        ]
        if norm_op is not None:
            norm = norm_op(hidden, **(norm_op_kwargs or {}))
            if isinstance(norm, _InstanceNorm) and not norm.track_running_stats:
                norm = InstanceNormByStatistics.replacing(norm)
            layers.append(norm)
        if nonlin is not None:
            layers.append(nonlin(**(nonlin_kwargs or {})))
        layers.append(conv_op(hidden, num_branches, 1, 1, 0, bias=True))
        self.branch = nn.Sequential(*layers)
        self.kernel_size = kernel
        self.num_branches = num_branches
        self.keep_uncertainty = False
        self.kept_uncertainty: torch.Tensor | None = None

    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> normalized entropy H, (B, 1, *spatial) float32 in [0, 1]."""
        return normalized_entropy(self.branch(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.uncertainty(x)
        if self.keep_uncertainty:
            self.kept_uncertainty = h
        # y = x + x * (1 - H) = x * (2 - H): one elementwise pass over x instead of two
        return x * (2.0 - h).to(x.dtype)


@contextmanager
def keeping_uncertainty(blocks: Iterable[UAFSBlock]) -> Iterator[list[UAFSBlock]]:
    """Within the context, every block of ``blocks`` keeps the H of its latest ``forward`` in ``kept_uncertainty``
    ((B, 1, *spatial) float32). On exit each block gets its earlier setting back: outside any other such context
    the flag is cleared and the kept tensor dropped.

    Yields the blocks as a list, in the given order.
    """
    blocks = list(blocks)
    previous = [(block.keep_uncertainty, block.kept_uncertainty) for block in blocks]
    for block in blocks:
        block.keep_uncertainty = True
    try:
        yield blocks
    finally:
        for block, (keep, kept) in zip(blocks, previous):
            block.keep_uncertainty = keep
            block.kept_uncertainty = kept if keep else None
