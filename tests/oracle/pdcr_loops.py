"""A slow, straightforward PDCR: the authors' per-anchor loops, with their known defects fixed.

Written like the authors' 3D code (a Python loop over samples and anchors that crops each anchor's window out
of the label map and counts classes with ``torch.bincount``; then the loss row by row in a loop), but with the
spec's definitions (docs/method.md section 2): composition by class id, windows clipped exactly at both
borders, fractions among the valid (non-ignored) voxels the window really holds, total-variation distance over
all classes, no global max shift. It shares no code with :mod:`nnunet_csse.method.pdcr`: it is the independent
reference the vectorized loss must agree with, and the baseline of the speed comparison.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.anchors import AnchorGrid, AnchorLayer

Compositions = list[list[torch.Tensor | None]]  # [sample][anchor] -> (K,) fractions, None: no valid voxel


def anchor_vectors(fmap: torch.Tensor, grid: AnchorGrid) -> torch.Tensor:
    """(B, C, *S) -> (B, N, C): the grid's feature vectors by a plain strided slice, row-major."""
    picked = fmap[(..., *(slice(o, None, s) for o, s in zip(grid.offsets, grid.steps)))]
    picked = picked[(..., *(slice(0, n) for n in grid.counts))]
    return picked.reshape(fmap.shape[0], fmap.shape[1], -1).permute(0, 2, 1)


def loop_compositions(target: torch.Tensor, grid: AnchorGrid, stride: Sequence[int], window: Sequence[int],
                      num_classes: int, ignore_label: int | None = None, regions: bool = False,
                      region_ignore_channel: bool = False) -> Compositions:
    """Composition vector of every anchor, one window crop and one ``torch.bincount`` per anchor.

    Args:
        target: (B, 1, *S) class ids (float, as nnU-Net passes them; S of 2 or 3 axes); with ``regions``,
            (B, R[+1], *S) 0/1 region maps (the last channel nnU-Net's ignore mask if ``region_ignore_channel``).
        grid, stride: the anchor grid on a map of cumulative stride ``stride``; anchor (t0, t1, ...) sits at input
            voxel ``stride * (offset + step * t)`` per axis; anchors in row-major order.
        window: window size per axis in input voxels.
        num_classes: K classes (label mode) or R regions.
    """
    out: Compositions = []
    size = target.shape[2:]
    for b in range(target.shape[0]):
        labels = target[b, 0]
        per_anchor: list[torch.Tensor | None] = []
        for position in itertools.product(*(range(n) for n in grid.counts)):
            box = []
            for axis, t in enumerate(position):
                center = stride[axis] * (grid.offsets[axis] + grid.steps[axis] * t)
                start = center - (window[axis] - 1) // 2
                box.append(slice(max(start, 0), min(start + window[axis] - 1, size[axis] - 1) + 1))
            if regions:
                per_anchor.append(_region_fractions(target[b][(slice(None), *box)], num_classes,
                                                    region_ignore_channel))
                continue
            crop = labels[tuple(box)].reshape(-1).long()
            if ignore_label is not None:
                crop = crop[crop != ignore_label]
            if crop.numel() == 0:
                per_anchor.append(None)
                continue
            counts = torch.bincount(crop, minlength=num_classes)[:num_classes]
            per_anchor.append((counts.double() / crop.numel()).float())
        out.append(per_anchor)
    return out


def _region_fractions(crop: torch.Tensor, num_regions: int, ignore_channel: bool) -> torch.Tensor | None:
    """(R[+1], *window) region crop -> (R,) fraction of the valid voxels inside each region, None if none valid."""
    valid = crop[-1] == 0 if ignore_channel else torch.ones_like(crop[0], dtype=torch.bool)
    if not valid.any():
        return None
    inside = [((crop[r] != 0) & valid).sum() for r in range(num_regions)]
    return (torch.stack(inside).double() / valid.sum()).float()


def pooled_over_batch(feats: torch.Tensor, comps: Compositions) -> tuple[torch.Tensor, Compositions]:
    """"batch" pairs: the anchors of all samples as the anchors of one sample, sample by sample."""
    return feats.reshape(1, -1, feats.shape[-1]), [[c for sample in comps for c in sample]]


def loop_pair_loss(feats_a: torch.Tensor, comps_a: Compositions, feats_b: torch.Tensor, comps_b: Compositions,
                   temperature: float, distance_scale: float = 0.5) -> torch.Tensor:
    """PDCR between anchors a and b, one loss row (anchor i of a against all of b) per loop iteration:

        L_b = -(1 / (n_a n_b)) sum_i [ sum_j s_ij (1 - d_ij) - n_b * logsumexp_j(s_ij d_ij) ],

    averaged over the samples that have valid anchors on both sides. Computed in float32, or in float64 for float64
    features (a gradient oracle).
    """
    dtype = torch.promote_types(feats_a.dtype, torch.float32)
    per_sample = []
    for b in range(feats_a.shape[0]):
        rows_a = [i for i, c in enumerate(comps_a[b]) if c is not None]
        cols_b = [j for j, c in enumerate(comps_b[b]) if c is not None]
        if not rows_a or not cols_b:
            continue
        fb = F.normalize(feats_b[b, cols_b].to(dtype), dim=-1, eps=1e-8)
        rb = torch.stack([comps_b[b][j] for j in cols_b])
        total = feats_a.new_zeros((), dtype=dtype)
        for i in rows_a:
            fi = F.normalize(feats_a[b, i].to(dtype), dim=0, eps=1e-8)
            s = (fb @ fi) / temperature
            d = distance_scale * (comps_a[b][i][None, :] - rb).abs().sum(-1)
            total = total + (s * (1.0 - d)).sum() - len(cols_b) * torch.logsumexp(s * d, dim=0)
        per_sample.append(-total / (len(rows_a) * len(cols_b)))
    if not per_sample:
        return (feats_a.to(dtype).sum() + feats_b.to(dtype).sum()) * 0.0
    return torch.stack(per_sample).mean()


def reference_terms(feature_maps: Mapping[int, torch.Tensor], layers: Sequence[AnchorLayer],
                    projections: nn.ModuleList | None, config: CSSEConfig, target: torch.Tensor,
                    num_classes: int, ignore_label: int | None = None, regions: bool = False,
                    region_ignore_channel: bool = False) -> dict[str, torch.Tensor]:
    """Encoder and cross-layer PDCR terms (unweighted), as the trainer defines them, by loops.

    Args:
        feature_maps: encoder output per resolution level (only the anchored levels are read).
        layers: the anchored encoder layers (stride, receptive field) of the network; encoder fields are centred
            on ``J * t`` with the same size R at every position, so the windows are centred crops of size R.
        projections: the network's two cross-layer heads, or None for no cross term.
        regions, region_ignore_channel: region-based targets (see :func:`loop_compositions`); the distance is then
            the mean per-region total variation (scale 1 / R).
    """
    spatial = tuple(target.shape[2:])
    shared = config.pdcr.input_grid(spatial, layers)
    distance_scale = 1.0 / num_classes if regions else 0.5
    anchors, comps = [], []
    for layer in layers:
        fmap = feature_maps[layer.level]
        grid = shared.on_layer(layer.stride)
        if layer.feature_shape(spatial) != tuple(fmap.shape[2:]):
            raise ValueError(f"{layer.name}: feature map {tuple(fmap.shape[2:])} does not match target {spatial}")
        windows = [layer.receptive_field] if config.pdcr_windows == "rf" else \
            [(w,) * len(layer.stride) for w in config.pdcr_windows]
        anchors.append(anchor_vectors(fmap, grid))
        comps.append([loop_compositions(target, grid, layer.stride, w, num_classes, ignore_label, regions,
                                        region_ignore_channel) for w in windows])

    def pair(fa, ca, fb, cb) -> torch.Tensor:
        losses = []
        for wa, wb in zip(ca, cb):
            xa, wa = (fa, wa) if config.pdcr_pairs == "sample" else pooled_over_batch(fa, wa)
            xb, wb = (fb, wb) if config.pdcr_pairs == "sample" else pooled_over_batch(fb, wb)
            losses.append(loop_pair_loss(xa, wa, xb, wb, config.pdcr_temperature, distance_scale))
        return torch.stack(losses).mean()

    terms = {}
    if config.pdcr_encoder_weight > 0:
        terms["encoder"] = torch.stack([pair(a, c, a, c) for a, c in zip(anchors, comps)]).mean()
    if projections is not None and config.pdcr_cross_weight > 0:
        pa, pb = (proj(a) for proj, a in zip(projections, anchors[:2]))
        terms["cross"] = pair(pa, comps[0], pb, comps[1])
    return terms
