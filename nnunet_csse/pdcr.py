"""Patch-dragsaw contrastive regularization (PDCR), method.md section 2.

Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image Segmentation", IEEE TMI 41(11), 2022
(arXiv 2201.08779), section III-B. Pipeline for one feature map with cumulative stride ``J``:

1. :func:`label_masks` turns nnU-Net's full-resolution target into a one-hot map and a validity map
   (ignore label / ignore channel).
2. :func:`label_volume` stacks them into one float 0/1 volume (last channel: valid voxels).
3. :func:`composition_vectors` computes, for every anchor of an :class:`~nnunet_csse.anchors.AnchorGrid`, the
   class fractions r_i inside a window centered at the anchor (the paper's "patch"): the grid is separable, so
   all window sums are one small matrix product per axis, instead of the authors' per-anchor loop with
   ``torch.unique``.
4. :func:`pdcr_pair_loss` is the loss of step 5 (self-layer: b == a; cross-layer: two projected layers).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_csse.anchors import AnchorGrid, AnchorLayer
from nnunet_csse.config import CSSEConfig

__all__ = ["label_masks", "label_volume", "composition_vectors", "pdcr_pair_loss", "PDCRLoss"]


def _check_spatial(t: torch.Tensor, name: str, layout: str) -> None:
    if t.ndim not in (4, 5):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {layout} with 2 or 3 spatial axes")


def label_masks(
    target: torch.Tensor,
    num_classes: int | None = None,
    ignore_label: int | None = None,
    has_regions: bool = False,
    region_ignore_channel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot class (or region) masks and a validity mask from an nnU-Net training target.

    Ignore-label voxels count for nothing (method.md section 2): they are False in both outputs.

    Args:
        target: label mode: (B, 1, *S) integer class ids in [0, num_classes) (any dtype, nnU-Net passes float),
            optionally equal to ``ignore_label``. Region mode: (B, R, *S) 0/1 or bool region masks, possibly
            overlapping (BraTS-style); with ``region_ignore_channel`` the last channel is nnU-Net's ignore mask.
        num_classes: K, background included. Required in label mode; in region mode it is checked against the
            number of region channels if given.
        ignore_label: label mode only (region mode marks ignored voxels with the extra channel instead).
        has_regions: nnU-Net region-based training.
        region_ignore_channel: region mode: the last channel of ``target`` is the ignore mask (True = ignored).

    Returns:
        onehot: (B, K, *S) bool, K = num_classes (label mode) or the number of region channels.
        valid: (B, 1, *S) bool, False where the voxel is ignored.
    """
    _check_spatial(target, "target", "(B, C, *S)")
    if has_regions:
        regions = target.bool()
        if region_ignore_channel:
            if regions.shape[1] < 2:
                raise ValueError(
                    f"region target has shape {tuple(target.shape)}; with an ignore channel it needs at least "
                    "one region channel plus the trailing ignore channel"
                )
            valid = ~regions[:, -1:]
            regions = regions[:, :-1]
        else:
            valid = torch.ones_like(regions[:, :1])
        if num_classes is not None and regions.shape[1] != num_classes:
            raise ValueError(
                f"region target has {regions.shape[1]} region channels (after removing any ignore channel) "
                f"but num_classes={num_classes}"
            )
        return regions & valid, valid
    if region_ignore_channel:
        raise ValueError("region_ignore_channel=True requires has_regions=True")
    if target.shape[1] != 1:
        raise ValueError(f"label target has shape {tuple(target.shape)}; expected (B, 1, *S) class ids")
    if num_classes is None or num_classes < 1:
        raise ValueError(f"label mode needs num_classes >= 1 (background included), got {num_classes}")
    if ignore_label is None:
        valid = torch.ones(target.shape, dtype=torch.bool, device=target.device)
    else:
        valid = target != ignore_label
    classes = torch.arange(num_classes, device=target.device, dtype=target.dtype)
    onehot = (target == classes.view(1, -1, *([1] * (target.ndim - 2)))) & valid
    return onehot, valid


def label_volume(onehot: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) one-hot and (B, 1, *S) valid masks -> (B, K + 1, *S) float32 0/1 volume (last channel: valid),
    the input of :func:`composition_vectors` (built once per step, shared by every layer and window)."""
    volume = torch.empty((onehot.shape[0], onehot.shape[1] + 1, *onehot.shape[2:]), dtype=torch.float32,
                         device=onehot.device)
    volume[:, :-1].copy_(onehot)  # one converting pass each, no concatenated bool copy
    volume[:, -1:].copy_(valid)
    return volume


@functools.lru_cache(maxsize=256)
def _window_matrix(grid_axis: tuple[int, int, int], stride: int, window: int, size: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """(n, size) 0/1 matrix; row t marks ``[c_t - (w - 1) // 2, c_t - (w - 1) // 2 + w - 1]`` (clipped to the
    axis by construction), ``c_t = stride * (offset + step * t)``. Built on the device from ``arange`` (no
    host-to-device copy, which would synchronize) and cached: shapes repeat every training step."""
    offset, step, count = grid_axis
    lo = stride * (offset + step * torch.arange(count, device=device)[:, None]) - (window - 1) // 2
    position = torch.arange(size, device=device)[None, :]
    return ((position >= lo) & (position <= lo + window - 1)).to(dtype)


def composition_vectors(
    volume: torch.Tensor, grid: AnchorGrid, stride: Sequence[int], window: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composition vectors r_i (method.md section 2, step 2) of every anchor of ``grid``.

    Anchor centers are ``c = stride * (offset + step * t)`` per axis (:meth:`AnchorGrid.centers`); the window is
    ``[c - (w - 1) // 2, c - (w - 1) // 2 + w - 1]`` clipped to ``[0, S - 1]`` per axis. Border windows are
    divided by the number of valid voxels they actually contain (the authors divided by the full window volume
    and clipped one voxel short at the far border; both are fixed here).

    The grid is separable, so the window sums are one small matrix product per axis with a 0/1 window matrix
    (n_axis, S_axis): no loop over anchors or voxels. Only the first product (along the last, contiguous axis)
    reads the whole volume. Counts stay exact integers: the first product multiplies 0/1 values (exact even
    with TF32), the later ones run in float64; autocast is disabled.

    Args:
        volume: (B, K + 1, *S) float 0/1 from :func:`label_volume` (last channel: valid voxels).
        grid: anchor grid on the feature map, with one entry per spatial axis.
        stride: cumulative stride J of that feature map per axis, in input voxels.
        window: window size per axis in input voxels (RF-PDCR: the receptive field; H-PDCR: one of the sizes).

    Returns:
        comp: (B, N, K) float32 class fractions among valid voxels, N = grid.num_anchors in row-major grid order
            (the order of :meth:`AnchorGrid.take`); all zero where the window holds no valid voxel.
        valid_anchor: (B, N) bool, True where the window holds at least one valid voxel.
    """
    _check_spatial(volume, "volume", "(B, K + 1, *S)")
    dims = volume.ndim - 2
    if volume.shape[1] < 2:
        raise ValueError(f"volume has shape {tuple(volume.shape)}; expected K >= 1 class channels plus a valid "
                         f"channel")
    if not volume.is_floating_point():
        raise ValueError(f"volume must be a float 0/1 tensor (see label_volume), got {volume.dtype}")
    if not (len(grid.counts) == len(stride) == len(window) == dims):
        raise ValueError(
            f"grid ({len(grid.counts)} axes), stride {tuple(stride)} and window {tuple(window)} must all have "
            f"{dims} entries to match volume of shape {tuple(volume.shape)}"
        )
    if any(w < 1 for w in window):
        raise ValueError(f"window sizes must be >= 1, got {tuple(window)}")
    size = volume.shape[2:]
    all_centers = grid.centers(stride)
    for axis, (centers, n) in enumerate(zip(all_centers, size)):
        if centers and not 0 <= min(centers) <= max(centers) < n:
            raise ValueError(
                f"anchor centers {centers[0]}..{centers[-1]} on axis {axis} fall outside the label extent {n}; "
                "grid/stride do not match the target shape"
            )
    # The last axis first: it is contiguous, so the one full-volume product needs no transposed copy.
    order = [dims - 1, *sorted(range(dims - 1), key=lambda a: grid.counts[a])]
    counts = volume
    with torch.autocast(device_type=volume.device.type, enabled=False):
        for i, axis in enumerate(order):
            if i == 1:
                counts = counts.double()
            m = _window_matrix((grid.offsets[axis], grid.steps[axis], grid.counts[axis]), stride[axis], window[axis],
                               size[axis], counts.dtype, volume.device)
            counts = torch.matmul(counts.movedim(2 + axis, -1), m.T).movedim(-1, 2 + axis)
    counts = counts.flatten(2).transpose(1, 2)  # (B, N, K + 1), row-major as in AnchorGrid.take
    n_valid = counts[..., -1:]
    valid_anchor = n_valid[..., 0] > 0.5
    comp = (counts[..., :-1] / n_valid.clamp(min=1)).float()
    comp = comp.masked_fill(~valid_anchor[..., None], 0.0)
    return comp, valid_anchor


def _check_side(feats: torch.Tensor, comp: torch.Tensor, valid: torch.Tensor, side: str) -> None:
    if feats.ndim != 3 or not feats.is_floating_point():
        raise ValueError(f"feats_{side} has shape {tuple(feats.shape)}, dtype {feats.dtype}; expected float (B, N, C)")
    b, n = feats.shape[:2]
    if comp.ndim != 3 or comp.shape[:2] != (b, n):
        raise ValueError(f"comp_{side} has shape {tuple(comp.shape)}; expected ({b}, {n}, K) to match feats_{side}")
    if valid.shape != (b, n) or valid.dtype != torch.bool:
        raise ValueError(
            f"valid_{side} has shape {tuple(valid.shape)}, dtype {valid.dtype}; expected bool ({b}, {n})"
        )


def pdcr_pair_loss(
    feats_a: torch.Tensor,
    comp_a: torch.Tensor,
    valid_a: torch.Tensor,
    feats_b: torch.Tensor,
    comp_b: torch.Tensor,
    valid_b: torch.Tensor,
    temperature: float,
    distance_scale: float = 0.5,
) -> torch.Tensor:
    """PDCR loss between anchors of a and anchors of b (method.md section 2, steps 3-6; paper eq. 4-6).

    With s_ij = cos(f_a_i, f_b_j) / temperature, d_ij = distance_scale * sum_k |r_a_ik - r_b_jk| and
    a_ij = 1 - d_ij, per sample

        L = -(1 / (n_a n_b)) sum_{i valid in a} sum_{j valid in b} [ s_ij a_ij - log sum_{k valid in b} exp(s_ik d_ik) ]

    averaged over samples with n_a > 0 and n_b > 0. Self-layer PDCR is ``b = a`` (the diagonal i = j included).
    ``distance_scale`` 0.5 makes d the total variation between class distributions; for overlapping regions pass
    1 / R (mean per-region total variation). Computed in float32 with autocast disabled; no global max shift
    (it would not be loss-invariant).

    Args:
        feats_a: (B, Na, C) anchor features (any float dtype); feats_b: (B, Nb, C).
        comp_a: (B, Na, K) composition vectors; comp_b: (B, Nb, K).
        valid_a: (B, Na) bool; valid_b: (B, Nb) bool. Invalid anchors are excluded entirely.
        temperature: tau > 0 (authors: 0.5 in 3D, 1 in 2D).
        distance_scale: factor on the L1 distance between composition vectors.

    Returns:
        Scalar float32 loss. If no sample has valid anchors on both sides it is a zero still connected to the
        graph of both feature tensors (so DDP sees every parameter used), with all-zero gradients.
    """
    _check_side(feats_a, comp_a, valid_a, "a")
    _check_side(feats_b, comp_b, valid_b, "b")
    if feats_a.shape[0] != feats_b.shape[0] or feats_a.shape[2] != feats_b.shape[2]:
        raise ValueError(
            f"feats_a {tuple(feats_a.shape)} and feats_b {tuple(feats_b.shape)} must agree in batch size and width C"
        )
    if comp_a.shape[2] != comp_b.shape[2]:
        raise ValueError(f"comp_a has K={comp_a.shape[2]} entries but comp_b has K={comp_b.shape[2]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if feats_a.shape[1] == 0 or feats_b.shape[1] == 0:
        return (feats_a.float().sum() + feats_b.float().sum()) * 0.0
    with torch.autocast(device_type=feats_a.device.type, enabled=False):
        fa = F.normalize(feats_a.float(), dim=-1, eps=1e-8)
        fb = F.normalize(feats_b.float(), dim=-1, eps=1e-8)
        s = torch.bmm(fa, fb.transpose(1, 2)) / temperature  # (B, Na, Nb)
        d = distance_scale * torch.cdist(comp_a.float(), comp_b.float(), p=1)
        pair = valid_a[:, :, None] & valid_b[:, None, :]
        # Samples without any valid b anchor keep all columns so the LSE stays finite (no NaN, even discarded);
        # they are dropped from the mean below.
        cols = valid_b | ~valid_b.any(1, keepdim=True)
        lse = torch.logsumexp((s * d).masked_fill(~cols[:, None, :], float("-inf")), dim=-1)  # (B, Na)
        n_a = valid_a.sum(1)
        n_b = valid_b.sum(1)
        tug = torch.where(pair, s * (1.0 - d), 0.0).sum((1, 2))
        rep = torch.where(valid_a, lse, 0.0).sum(1) * n_b  # LSE_i does not depend on j
        per_sample = -(tug - rep) / (n_a * n_b).clamp(min=1)
        ok = (n_a > 0) & (n_b > 0)
        # Masked mean without a host sync; with no qualifying sample it is a graph-connected zero.
        return torch.where(ok, per_sample, 0.0).sum() / ok.sum().clamp(min=1)


class PDCRLoss(nn.Module):
    """The PDCR terms of one training step (method.md section 2, steps 1-7), unweighted.

    Composition vectors of every anchored layer come from separable window sums over one label volume of the
    full-resolution target (``composition_vectors``), on the anchor grid the network used
    (``CSSEConfig.anchor_grid``), so no loop runs over anchors or voxels.

    Args:
        encoder_layers: anchored encoder maps (``CSSEUNet.encoder_anchor_layers``); the first two also form the
            cross-layer pair.
        decoder_layers: anchored decoder maps (``CSSEUNet.decoder_anchor_layers``).
        config: windows ("rf" or H-PDCR sizes), temperature and anchor-grid settings.
        num_classes: K classes including background, or R regions in region-based training.
        ignore_label: nnU-Net's ignore label (label training); its voxels count for nothing.
        has_regions: region-based training (target is (B, R[+1], *S) binary maps).
        region_ignore_channel: the last target channel is nnU-Net's ignore mask (region training + ignore).

    ``forward(hidden, target)``: ``hidden`` as returned by ``CSSEUNet`` ({"encoder": (B, N_l, C_l) per layer,
    "cross": two (B, N_l, P), "decoder": ...}), ``target`` the full-resolution target (B, 1 or R, *S).
    Returns {term: float32 scalar} for the terms present in ``hidden``: per layer the loss is averaged over
    window sizes (H-PDCR: "loss per size first"), then over layers.
    """

    def __init__(
        self,
        encoder_layers: Sequence[AnchorLayer],
        decoder_layers: Sequence[AnchorLayer],
        config: CSSEConfig,
        num_classes: int,
        ignore_label: int | None = None,
        has_regions: bool = False,
        region_ignore_channel: bool = False,
    ) -> None:
        super().__init__()
        self.layers = {"encoder": tuple(encoder_layers), "decoder": tuple(decoder_layers)}
        self.config = config
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.has_regions = has_regions
        self.region_ignore_channel = region_ignore_channel
        # total variation over classes; for (overlapping) regions the mean of per-region binary TVs
        self.distance_scale = 1.0 / num_classes if has_regions else 0.5

    def windows(self, layer: AnchorLayer) -> list[tuple[int, ...]]:
        if self.config.pdcr_windows == "rf":
            return [layer.receptive_field]
        return [(w,) * len(layer.stride) for w in self.config.pdcr_windows]

    def forward(self, hidden: Mapping[str, Sequence[torch.Tensor]], target: torch.Tensor) -> dict[str, torch.Tensor]:
        spatial = tuple(target.shape[2:])
        volume = label_volume(*label_masks(target, self.num_classes, self.ignore_label, self.has_regions,
                                           self.region_ignore_channel))
        cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def compositions(layer: AnchorLayer, num_anchors: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            if layer.name not in cache:
                grid = self.config.anchor_grid(layer.feature_shape(spatial), layer.stride)
                if grid.num_anchors != num_anchors:
                    raise ValueError(
                        f"PDCR layer {layer.name}: the network sampled {num_anchors} anchors but the target of "
                        f"shape {spatial} gives a grid of {grid.num_anchors}; target and network input must "
                        f"have the same spatial shape"
                    )
                cache[layer.name] = [composition_vectors(volume, grid, layer.stride, w) for w in self.windows(layer)]
            return cache[layer.name]

        def pair(fa, ca, fb, cb) -> torch.Tensor:
            losses = [pdcr_pair_loss(fa, ra, va, fb, rb, vb, self.config.pdcr_temperature, self.distance_scale)
                      for (ra, va), (rb, vb) in zip(ca, cb)]
            return torch.stack(losses).mean()

        terms = {}
        for key in ("encoder", "decoder"):
            if key in hidden:
                per_layer = []
                for layer, feats in zip(self.layers[key], hidden[key]):
                    comps = compositions(layer, feats.shape[1])
                    per_layer.append(pair(feats, comps, feats, comps))
                terms[key] = torch.stack(per_layer).mean()
        if "cross" in hidden:
            (first, second), (proj_first, proj_second) = self.layers["encoder"][:2], hidden["cross"]
            terms["cross"] = pair(proj_first, compositions(first, proj_first.shape[1]),
                                  proj_second, compositions(second, proj_second.shape[1]))
        return terms
