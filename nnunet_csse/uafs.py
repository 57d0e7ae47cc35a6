"""UAFS: uncertainty-aware feature selection (method.md section 1).

Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image Segmentation", IEEE TMI 2022
(arXiv 2201.08779; the journal version calls the block UAFR). A small branch predicts M-way logits per
voxel; the normalized entropy of their softmax is an uncertainty map H in [0, 1]; features are re-weighted
by ``y = x + x * (1 - H)``. The branch has no loss of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


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


class UAFSBlock(nn.Module):
    """Uncertainty-aware feature selection, dimension-agnostic (built from the plan's ops).

    Branch: conv k (C -> max(C // 4, 1)) -> norm -> nonlin -> conv 1x1 (-> M). Authors: k = 3, M = 2.

    Args:
        channels: C, channels of the feature map the block re-weights.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d`` (the plan's conv_op).
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: the plan's normalization and nonlinearity.
        num_branches: M >= 1.
        kernel_size: int or per-axis sequence (anisotropic stages may pass e.g. (1, 3, 3)); odd values.

    Shapes: ``forward`` (B, C, *spatial) -> (B, C, *spatial); ``uncertainty`` -> (B, 1, *spatial).
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
            layers.append(norm_op(hidden, **(norm_op_kwargs or {})))
        if nonlin is not None:
            layers.append(nonlin(**(nonlin_kwargs or {})))
        layers.append(conv_op(hidden, num_branches, 1, 1, 0, bias=True))
        self.branch = nn.Sequential(*layers)
        self.kernel_size = kernel
        self.num_branches = num_branches

    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> normalized entropy H, (B, 1, *spatial) float32 in [0, 1]."""
        return normalized_entropy(self.branch(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y = x + x * (1 - H) = x * (2 - H): one elementwise pass over x instead of two
        return x * (2.0 - self.uncertainty(x)).to(x.dtype)
