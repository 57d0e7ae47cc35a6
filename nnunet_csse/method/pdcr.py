"""Patch-dragsaw contrastive regularization (PDCR), docs/method.md section 2.

Liu et al., "Contrastive and Selective Hidden Embeddings for Medical Image Segmentation", IEEE TMI 41(11), 2022
(arXiv 2201.08779), section III-B. Pipeline for one feature map with cumulative stride ``J``:

1. :func:`label_volume` turns nnU-Net's full-resolution target into one float 0/1 volume: one-hot classes (or
   regions) and a last channel of valid voxels (ignore label / ignore channel).
2. :func:`composition_vectors` computes, for every anchor of a layer's :class:`~nnunet_csse.method.anchors.AnchorGrid`,
   the class fractions r_i inside the anchor's window (the paper's "patch"; RF-PDCR: the exact input interval the
   anchor sees, :func:`layer_windows`): the grid is separable, so all window sums are one small matrix product per
   axis, instead of the authors' per-anchor loop with ``torch.unique``.
3. :func:`pdcr_pair_losses` is the loss of step 5 for every pair of a step in one batched call, with a closed-form
   gradient (self-layer: b == a; cross-layer: two projected layers); :func:`pdcr_pair_loss` is one pair.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_csse.method.anchors import AnchorGrid, AnchorLayer, InputGrid
from nnunet_csse.method.settings import PDCR_TERMS, PDCRSettings

__all__ = ["PDCREmbeddings", "label_volume", "AxisWindows", "centered_windows", "layer_windows", "composition_vectors",
           "authors_composition_vectors", "PairJob", "pdcr_pair_losses", "pdcr_pair_loss", "authors_pair_loss",
           "PDCRLoss"]


class PDCREmbeddings(NamedTuple):
    """What the network hands the loss in one training step: the anchor grid it sampled (input voxels) and, per
    term, one (B, N, C) tensor of anchor vectors per anchored layer (empty: term off). ``encoder``: the encoder
    layers; ``cross``: the two projected encoder layers; ``decoder``: the decoder layers."""

    grid: InputGrid
    encoder: tuple[torch.Tensor, ...] = ()
    cross: tuple[torch.Tensor, ...] = ()
    decoder: tuple[torch.Tensor, ...] = ()

    def by_term(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """{term: anchors} of the terms that have anchors, in ``PDCR_TERMS`` order."""
        return {term: getattr(self, term) for term in PDCR_TERMS if getattr(self, term)}


def _check_spatial(t: torch.Tensor, name: str, layout: str) -> None:
    if t.ndim not in (4, 5):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {layout} with 2 or 3 spatial axes")


def label_volume(
    target: torch.Tensor,
    num_classes: int | None = None,
    ignore_label: int | None = None,
    has_regions: bool = False,
    region_ignore_channel: bool = False,
) -> torch.Tensor:
    """Float 0/1 class (or region) masks plus a validity channel from an nnU-Net training target: the input of
    :func:`composition_vectors`, built once per step and shared by every layer and window.

    Ignore-label voxels count for nothing (docs/method.md section 2): they are 0 in every channel. Each channel is
    written straight from ``target`` by one comparison into the float output (no bool intermediates: this pass
    over the full-resolution target is memory-bound; on CPU it was most of the PDCR loss's time).

    Args:
        target: label mode: (B, 1, *S) integer class ids in [0, num_classes) (any dtype, nnU-Net passes float),
            optionally equal to ``ignore_label``. Region mode: (B, R, *S) 0/1 or bool region masks, possibly
            overlapping (BraTS-style); with ``region_ignore_channel`` the last channel is nnU-Net's ignore mask.
        num_classes: K, background included. Required in label mode; in region mode it is checked against the
            number of region channels if given.
        ignore_label: label mode only (region mode marks ignored voxels with the extra channel instead); nnU-Net
            requires it to be the highest label, so it must not be a class id in [0, num_classes).
        has_regions: nnU-Net region-based training.
        region_ignore_channel: region mode: the last channel of ``target`` is the ignore mask (nonzero = ignored).

    Returns:
        (B, K + 1, *S) float32: channel k is 1 where the voxel belongs to class (region) k and is not ignored;
        the last channel is 1 where the voxel is not ignored.
    """
    _check_spatial(target, "target", "(B, C, *S)")
    if has_regions:
        num_regions = target.shape[1] - int(region_ignore_channel)
        if region_ignore_channel and num_regions < 1:
            raise ValueError(
                f"region target has shape {tuple(target.shape)}; with an ignore channel it needs at least "
                "one region channel plus the trailing ignore channel"
            )
        if num_classes is not None and num_regions != num_classes:
            raise ValueError(
                f"region target has {num_regions} region channels (after removing any ignore channel) "
                f"but num_classes={num_classes}"
            )
        volume = target.new_empty((target.shape[0], num_regions + 1, *target.shape[2:]), dtype=torch.float32)
        _compare_into(volume[:, :-1], torch.ne, target[:, :num_regions], 0)
        if region_ignore_channel:
            _compare_into(volume[:, -1:], torch.eq, target[:, -1:], 0)
            volume[:, :-1].mul_(volume[:, -1:])
        else:
            volume[:, -1:].fill_(1.0)
        return volume
    if region_ignore_channel:
        raise ValueError("region_ignore_channel=True requires has_regions=True")
    if target.shape[1] != 1:
        raise ValueError(f"label target has shape {tuple(target.shape)}; expected (B, 1, *S) class ids")
    if num_classes is None or num_classes < 1:
        raise ValueError(f"label mode needs num_classes >= 1 (background included), got {num_classes}")
    if ignore_label is not None and 0 <= ignore_label < num_classes:
        raise ValueError(f"ignore_label {ignore_label} is one of the {num_classes} class ids; nnU-Net's ignore "
                         f"label must be the highest label (e.g. {num_classes})")
    volume = target.new_empty((target.shape[0], num_classes + 1, *target.shape[2:]), dtype=torch.float32)
    classes = torch.arange(num_classes, device=target.device, dtype=target.dtype)
    _compare_into(volume[:, :-1], torch.eq, target, classes.view(1, -1, *([1] * (target.ndim - 2))))
    if ignore_label is None:
        volume[:, -1:].fill_(1.0)
    else:
        _compare_into(volume[:, -1:], torch.ne, target, ignore_label)
    return volume


def _compare_into(out: torch.Tensor, compare: Callable[..., torch.Tensor], a: torch.Tensor, b) -> None:
    """``out[...] = compare(a, b)`` converted to out's dtype. Eager: written straight into ``out``, no bool
    temporary. Under torch.compile (dynamo rejects a non-contiguous ``out=``) as a copy, which inductor fuses."""
    if torch.compiler.is_compiling():
        out.copy_(compare(a, b))
    else:
        compare(a, b, out=out)


class AxisWindows(NamedTuple):
    """The windows of a grid's anchors along one axis: anchor t covers input voxels ``first[t]..last[t]``
    (inclusive, before clipping to the image)."""

    first: tuple[int, ...]
    last: tuple[int, ...]


def centered_windows(centers: Sequence[Sequence[int]], window: Sequence[int]) -> list[AxisWindows]:
    """Windows of ``window[a]`` voxels centred at ``centers[a]`` per axis: ``[c - (w - 1) // 2, ... + w - 1]``."""
    return [AxisWindows(tuple(c - (w - 1) // 2 for c in cs), tuple(c - (w - 1) // 2 + w - 1 for c in cs))
            for cs, w in zip(centers, window)]


def layer_windows(layer: AnchorLayer, grid: AnchorGrid, window: str | int) -> list[AxisWindows]:
    """The composition windows of ``layer``'s anchors (``grid`` on that layer), per axis.

    ``window="rf"`` (RF-PDCR): the exact input interval each anchor sees (for decoder maps it depends on the
    position's parity and is not centred on the anchor, see :mod:`nnunet_csse.method.receptive_field`). An int (H-PDCR):
    that many voxels centred on the anchor's input voxel ``J * t`` (the shared grid's centre, inside the image).
    """
    if window == "rf":
        return [AxisWindows(*layer.field.intervals(a, grid.positions(a))) for a in range(len(grid.counts))]
    return centered_windows(grid.centers(layer.stride), [int(window)] * len(grid.counts))


@functools.lru_cache(maxsize=256)
def _window_matrix(first: tuple[int, ...], last: tuple[int, ...], size: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """(n, size) 0/1 matrix; row t marks ``[first[t], last[t]]`` clipped to the axis by construction. Cached (the
    bounds' one host-to-device copy happens once per patch shape, not per step)."""
    position = torch.arange(size, device=device)[None, :]
    lo = torch.tensor(first, device=device)[:, None]
    hi = torch.tensor(last, device=device)[:, None]
    return ((position >= lo) & (position <= hi)).to(dtype)


def _check_windows(volume: torch.Tensor, windows: Sequence[AxisWindows]) -> None:
    _check_spatial(volume, "volume", "(B, K + 1, *S)")
    dims = volume.ndim - 2
    if volume.shape[1] < 2:
        raise ValueError(f"volume has shape {tuple(volume.shape)}; expected K >= 1 class channels plus a valid "
                         f"channel")
    if not volume.is_floating_point():
        raise ValueError(f"volume must be a float 0/1 tensor (see label_volume), got {volume.dtype}")
    if len(windows) != dims:
        raise ValueError(f"windows has {len(windows)} axes but volume of shape {tuple(volume.shape)} has {dims}")
    for axis, (w, n) in enumerate(zip(windows, volume.shape[2:])):
        if not w.first or len(w.first) != len(w.last) or any(lo > hi for lo, hi in zip(w.first, w.last)):
            raise ValueError(f"windows on axis {axis} must be non-empty [first, last] pairs, got {w}")
        if min(w.last) < 0 or max(w.first) > n - 1:
            raise ValueError(
                f"anchor windows {w.first[0]}..{w.last[-1]} on axis {axis} fall outside the label extent {n}; "
                "grid/stride do not match the target shape"
            )


def _window_counts(volume: torch.Tensor, windows: Sequence[AxisWindows]) -> torch.Tensor:
    """(B, N, K + 1) float64 voxel counts of every channel of ``volume`` inside every anchor's window (row-major
    grid order), each window clipped to the image: one small matrix product per axis.

    Only the first product (along the last, contiguous axis) reads the whole volume. Counts stay exact integers:
    the first product multiplies 0/1 values (exact even with TF32), the later ones run in float64; autocast is
    disabled.
    """
    dims = volume.ndim - 2
    size = volume.shape[2:]
    counts_per_axis = [len(w.first) for w in windows]
    # The last axis first: it is contiguous, so the one full-volume product needs no transposed copy.
    order = [dims - 1, *sorted(range(dims - 1), key=lambda a: counts_per_axis[a])]
    counts = volume
    # under torch.compile the matrices are built inside the graph: the cache is not needed (dynamo warns about it)
    window_matrix = _window_matrix.__wrapped__ if torch.compiler.is_compiling() else _window_matrix
    with torch.autocast(device_type=volume.device.type, enabled=False):
        for i, axis in enumerate(order):
            if i == 1:
                counts = counts.double()
            m = window_matrix(tuple(windows[axis].first), tuple(windows[axis].last), size[axis], counts.dtype,
                              volume.device)
            counts = torch.matmul(counts.movedim(2 + axis, -1), m.T).movedim(-1, 2 + axis)
    return counts.flatten(2).transpose(1, 2)  # (B, N, K + 1), row-major as in AnchorGrid.take


def composition_vectors(volume: torch.Tensor, windows: Sequence[AxisWindows]) -> tuple[torch.Tensor, torch.Tensor]:
    """Composition vectors r_i (docs/method.md section 2.2) of every anchor of a separable grid.

    Anchor (t_0, t_1, ...) covers ``windows[a].first[t_a]..windows[a].last[t_a]`` per axis, clipped to
    ``[0, S_a - 1]``, and is divided by the number of valid voxels it actually contains. The grid is separable,
    so the window sums are one small matrix product per axis with a 0/1 window matrix (n_axis, S_axis): no loop
    over anchors or voxels.

    Args:
        volume: (B, K + 1, *S) float 0/1 from :func:`label_volume` (last channel: valid voxels).
        windows: one :class:`AxisWindows` per spatial axis (:func:`layer_windows` or :func:`centered_windows`).

    Returns:
        comp: (B, N, K) float32 class fractions among valid voxels, N = prod(len(w.first)) in row-major grid order
            (the order of :meth:`AnchorGrid.take`); all zero where the window holds no valid voxel.
        valid_anchor: (B, N) bool, True where the window holds at least one valid voxel.
    """
    _check_windows(volume, windows)
    counts = _window_counts(volume, windows)
    n_valid = counts[..., -1:]
    valid_anchor = n_valid[..., 0] > 0.5
    comp = (counts[..., :-1] / n_valid.clamp(min=1)).float()
    comp = comp.masked_fill(~valid_anchor[..., None], 0.0)
    return comp, valid_anchor


def authors_composition_vectors(volume: torch.Tensor,
                                windows: Sequence[AxisWindows]) -> tuple[torch.Tensor, torch.Tensor]:
    """Composition vectors as the authors' 3D code computes them (``pdcr_variant: "authors"``, docs/method.md
    section 4), vectorized.

    Three departures from :func:`composition_vectors`, each reproduced:

    - the window ends one voxel short at the far border (their crop's end is ``min(c + r + 1, S - 1)``,
      exclusive), i.e. it covers ``max(first, 0)..min(last, S - 2)``;
    - every window is divided by its full volume (the product of its unclipped widths), border windows too;
    - classes go by position in the sorted list of the classes present in the window, and that list's first
      entry is dropped: entry p of r_i holds the count of the (p + 1)-th present class. With background present
      entry p is class p + 1 (the foreground classes); a window without background loses its lowest class.
      The last of the K entries is therefore always 0.

    Ignore-label voxels count for nothing (they are no class and not in any count; the authors' code has no ignore
    label). An anchor is valid when its window holds a valid voxel.

    Args / Returns: as :func:`composition_vectors`, but ``comp`` is float64 (exact for float64 oracles; the loss
    casts it to the features' dtype).
    """
    _check_windows(volume, windows)
    size = volume.shape[2:]
    short = [AxisWindows(w.first, tuple(min(hi, n - 2) for hi in w.last)) for w, n in zip(windows, size)]
    counts = _window_counts(volume, short)  # an axis of size 1 leaves every window empty: all counts 0
    classes = counts[..., :-1]  # (B, N, K)
    present = classes > 0.5
    rank = torch.cumsum(present.long(), dim=-1) - 1  # position in the sorted list of present classes
    k = classes.shape[-1]
    slot = torch.arange(1, k + 1, device=volume.device)  # entry p holds the class at position p + 1
    moves = present[..., :, None] & (rank[..., :, None] == slot)  # (B, N, class, entry)
    by_position = torch.einsum("bnk,bnkp->bnp", classes, moves.to(classes.dtype))
    widths = [torch.tensor([hi - lo + 1 for lo, hi in zip(w.first, w.last)], dtype=torch.float64,
                           device=volume.device) for w in windows]
    full_volume = functools.reduce(lambda a, b: (a[:, None] * b[None, :]).flatten(), widths)  # (N,) row-major
    valid_anchor = counts[..., -1] > 0.5
    comp = (by_position / full_volume[None, :, None]).masked_fill(~valid_anchor[..., None], 0.0)
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


class PairJob(NamedTuple):
    """One PDCR pair for :func:`pdcr_pair_losses`: anchors of ``features[a]`` against anchors of ``features[b]``
    (self-layer PDCR: ``a == b``), with the composition vectors (B, N, K) and validity (B, N) of each side."""

    a: int
    b: int
    comp_a: torch.Tensor
    valid_a: torch.Tensor
    comp_b: torch.Tensor
    valid_b: torch.Tensor


def _pad_to(t: torch.Tensor, n: int, c: int | None = None) -> torch.Tensor:
    """Zero-pad axis 1 (anchors) of a (B, N[, C]) tensor to ``n`` (and axis 2 to ``c``)."""
    pad = (0, n - t.shape[1]) if t.ndim == 2 else (0, (c or t.shape[2]) - t.shape[2], 0, n - t.shape[1])
    return F.pad(t, pad) if any(pad) else t


_NORM_EPS = 1e-8  # F.normalize's eps: all-zero vectors (padding) normalize to zero
_NON_FEATURE_ARGS = 8  # _PairLosses.forward's arguments before *features


class _PairLosses(torch.autograd.Function):
    """All PDCR pairs of a step in one batched computation, with the gradient in closed form.

    Autograd through the loss formula records ~120 small kernels per pair; on a GPU their launches, not their
    arithmetic, are the cost. Stacking the pairs (zero-padded anchors are simply invalid; zero-padded channels do
    not change a cosine) and writing dL/ds directly brings a step to a few dozen kernels, whatever the number of
    pairs. With p = softmax_j(s_ij d_ij) over valid j, per sample

        dL/ds_ij = -(1 / (n_a n_b)) [ valid_ij (1 - d_ij) - n_b valid_a_i p_ij d_ij ]

    then through s = <u_i, v_j> / tau and u = x / max(|x|, eps) (F.normalize). Float32 throughout (float64 when
    a feature tensor is float64, for gradient checks).
    """

    @staticmethod
    def forward(ctx, job_a: tuple[int, ...], job_b: tuple[int, ...], comp_a: torch.Tensor, valid_a: torch.Tensor,
                comp_b: torch.Tensor, valid_b: torch.Tensor, temperature: float, distance_scale: float,
                *features: torch.Tensor) -> torch.Tensor:
        n_max = comp_a.shape[2]
        c_max = max(f.shape[2] for f in features)
        x = torch.stack([_pad_to(f.to(comp_a.dtype), n_max, c_max) for f in features])  # (F, B, N, C)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        unit = x / norm.clamp(min=_NORM_EPS)
        unit_a = torch.stack([unit[i] for i in job_a])  # (P, B, N, C)
        unit_b = unit_a if job_b == job_a else torch.stack([unit[i] for i in job_b])
        s = torch.matmul(unit_a, unit_b.transpose(-1, -2)) / temperature  # (P, B, N, N)
        d = distance_scale * torch.cdist(comp_a, comp_b, p=1)
        pair = valid_a[..., :, None] & valid_b[..., None, :]
        # Samples without any valid b anchor keep all columns so the LSE stays finite (no NaN, even discarded);
        # they are dropped from the mean below.
        cols = valid_b | ~valid_b.any(-1, keepdim=True)
        logits = (s * d).masked_fill(~cols[..., None, :], float("-inf"))
        lse = torch.logsumexp(logits, dim=-1)  # (P, B, N)
        n_a, n_b = valid_a.sum(-1), valid_b.sum(-1)  # (P, B)
        tug = torch.where(pair, s * (1.0 - d), 0.0).sum((-1, -2))
        rep = torch.where(valid_a, lse, 0.0).sum(-1) * n_b  # LSE_i does not depend on j
        ok = (n_a > 0) & (n_b > 0)
        # per-sample mean over its pairs, then the mean over samples with valid anchors on both sides
        weight = ok.to(s.dtype) / ((n_a * n_b).clamp(min=1) * ok.sum(-1, keepdim=True).clamp(min=1))
        losses = torch.where(ok, (rep - tug) * weight, 0.0).sum(-1)
        ctx.save_for_backward(unit, norm, unit_a, unit_b, logits, lse, d, pair, valid_a, n_b, weight)
        ctx.jobs = (job_a, job_b)
        ctx.temperature = temperature
        ctx.shapes = [(f.shape[1], f.shape[2], f.dtype) for f in features]
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        unit, norm, unit_a, unit_b, logits, lse, d, pair, valid_a, n_b, weight = ctx.saved_tensors
        job_a, job_b = ctx.jobs
        g = (grad_losses.to(weight.dtype)[:, None] * weight)[..., None, None]  # (P, B, 1, 1)
        p = torch.exp(logits - lse[..., None])  # softmax over valid columns (0 elsewhere)
        rep = (n_b[..., None] * valid_a)[..., None] * p * d
        grad_s = g * (rep - torch.where(pair, 1.0 - d, 0.0)) / ctx.temperature
        grad_unit_a = torch.matmul(grad_s, unit_b)
        grad_unit_b = torch.matmul(grad_s.transpose(-1, -2), unit_a)
        grad_unit = torch.zeros_like(unit)
        for p_index, (a, b) in enumerate(zip(job_a, job_b)):
            grad_unit[a] += grad_unit_a[p_index]
            grad_unit[b] += grad_unit_b[p_index]
        # through u = x / max(|x|, eps): the radial part vanishes unless the clamp is active
        radial = (unit * grad_unit).sum(-1, keepdim=True) * (norm > _NORM_EPS)
        grad_x = (grad_unit - unit * radial) / norm.clamp(min=_NORM_EPS)
        grads = [grad_x[i, :, :n, :c].to(dtype) if ctx.needs_input_grad[_NON_FEATURE_ARGS + i] else None
                 for i, (n, c, dtype) in enumerate(ctx.shapes)]
        return (None,) * _NON_FEATURE_ARGS + tuple(grads)


def pdcr_pair_losses(
    features: Sequence[torch.Tensor], jobs: Sequence[PairJob], temperature: float, distance_scale: float = 0.5
) -> torch.Tensor:
    """PDCR losses of several anchor pairs in one batched computation (docs/method.md section 2, steps 3-6).

    For each job, with s_ij = cos(f_a_i, f_b_j) / temperature, d_ij = distance_scale * sum_k |r_a_ik - r_b_jk|
    and a_ij = 1 - d_ij, per sample

        L = -(1 / (n_a n_b)) sum_{i valid in a} sum_{j valid in b} [ s_ij a_ij - log sum_{k valid in b} exp(s_ik d_ik) ]

    averaged over samples with n_a > 0 and n_b > 0 (paper eq. 4-6). Self-layer PDCR is ``b = a`` (the diagonal
    i = j included). ``distance_scale`` 0.5 makes d the total variation between class distributions; for
    overlapping regions pass 1 / R (mean per-region total variation). Computed in float32 (float64 if a feature
    tensor is float64) with autocast disabled; no global max shift (it would not be loss-invariant).

    Args:
        features: anchor features (B, N_f, C_f), any float dtype; pairs are formed between entries (a job's two
            sides must have the same width C).
        jobs: the pairs, each indexing ``features`` with comp (B, N, K) and valid (B, N) bool for both sides.
            Invalid anchors are excluded entirely.
        temperature: tau > 0 (authors: 0.5 in 3D, 1 in 2D).
        distance_scale: factor on the L1 distance between composition vectors.

    Returns:
        (len(jobs),) float32 losses. A job without a sample that has valid anchors on both sides gets 0, still
        connected to the graph of its features (so DDP sees every parameter used), with all-zero gradients.
    """
    if not jobs:
        raise ValueError("pdcr_pair_losses needs at least one PairJob")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = features[0].shape[0] if features and features[0].ndim == 3 else None
    for job in jobs:
        if not (0 <= job.a < len(features) and 0 <= job.b < len(features)):
            raise ValueError(f"PairJob indices ({job.a}, {job.b}) out of range for {len(features)} feature tensors")
        fa, fb = features[job.a], features[job.b]
        _check_side(fa, job.comp_a, job.valid_a, "a")
        _check_side(fb, job.comp_b, job.valid_b, "b")
        if fa.shape[0] != batch or fb.shape[0] != batch or fa.shape[2] != fb.shape[2]:
            raise ValueError(
                f"feats_a {tuple(fa.shape)} and feats_b {tuple(fb.shape)} must agree in batch size ({batch}) and "
                "width C"
            )
        if job.comp_a.shape[2] != jobs[0].comp_a.shape[2] or job.comp_b.shape[2] != job.comp_a.shape[2]:
            raise ValueError(
                f"comp_a has K={job.comp_a.shape[2]} entries but comp_b has K={job.comp_b.shape[2]} (all jobs need "
                f"K={jobs[0].comp_a.shape[2]})"
            )
    n_max = max(f.shape[1] for f in features)
    if n_max == 0:
        return (sum(f.float().sum() for f in features) * 0.0).expand(len(jobs))

    dtype = torch.float64 if any(f.dtype == torch.float64 for f in features) else torch.float32

    def stacked(field: str) -> torch.Tensor:
        parts = [getattr(job, field) for job in jobs]
        if parts[0].is_floating_point():
            parts = [t.to(dtype) for t in parts]
        return torch.stack([_pad_to(t, n_max) for t in parts])  # (P, B, N_max[, K]), padding invalid

    with torch.autocast(device_type=features[0].device.type, enabled=False):
        return _PairLosses.apply(
            tuple(job.a for job in jobs), tuple(job.b for job in jobs), stacked("comp_a"), stacked("valid_a"),
            stacked("comp_b"), stacked("valid_b"), float(temperature), float(distance_scale), *features,
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
    """PDCR loss between anchors of a and anchors of b: :func:`pdcr_pair_losses` for one pair.

    Args:
        feats_a: (B, Na, C) anchor features (any float dtype); feats_b: (B, Nb, C) (pass the same tensor for
            self-layer PDCR).
        comp_a: (B, Na, K) composition vectors; comp_b: (B, Nb, K).
        valid_a: (B, Na) bool; valid_b: (B, Nb) bool.
        temperature, distance_scale: see :func:`pdcr_pair_losses`.

    Returns:
        Scalar float32 loss.
    """
    features = [feats_a] if feats_b is feats_a else [feats_a, feats_b]
    job = PairJob(0, len(features) - 1, comp_a, valid_a, comp_b, valid_b)
    return pdcr_pair_losses(features, [job], temperature, distance_scale)[0]


def authors_pair_loss(
    feats_a: torch.Tensor,
    comp_a: torch.Tensor,
    valid_a: torch.Tensor,
    feats_b: torch.Tensor,
    comp_b: torch.Tensor,
    valid_b: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """PDCR loss of one pair as the authors' 3D code computes it (``pdcr_variant: "authors"``, docs/method.md
    section 4), with plain autograd.

    s_ij = cos(f_a_i, f_b_j) / temperature (``nn.CosineSimilarity``'s eps), then the global maximum of s over the
    whole batch is subtracted **with its gradient** (not detached; for self-layer pairs it is the diagonal,
    1 / temperature, whose gradient vanishes; for cross-layer pairs it pulls on the most similar pair). With
    d_ij = sum_k |r_a_ik - r_b_jk| (no 1/2) and a_ij = 1 - d_ij, per sample

        L = -(1 / (n_a n_b)) sum_ij [ s_ij a_ij - log sum_k exp(s_ik d_ik) ],

    averaged over samples, as :func:`pdcr_pair_loss` but for the shift and the distance's scale. Invalid anchors
    (windows without valid voxels; the authors' code has none) are left out of the maximum and the means.

    Args: as :func:`pdcr_pair_loss` (composition vectors from :func:`authors_composition_vectors`).

    Returns:
        Scalar float32 loss (float64 if a feature tensor is float64).
    """
    _check_side(feats_a, comp_a, valid_a, "a")
    _check_side(feats_b, comp_b, valid_b, "b")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.float64 if torch.float64 in (feats_a.dtype, feats_b.dtype) else torch.float32
    with torch.autocast(device_type=feats_a.device.type, enabled=False):
        x, y = feats_a.to(dtype), feats_b.to(dtype)
        # nn.CosineSimilarity: x.y / sqrt(max(|x|^2 |y|^2, eps^2)), as one matrix product
        squared = (x * x).sum(-1)[:, :, None] * (y * y).sum(-1)[:, None, :]
        s = torch.matmul(x, y.transpose(1, 2)) / torch.sqrt(squared.clamp(min=_NORM_EPS ** 2)) / temperature
        pair = valid_a[:, :, None] & valid_b[:, None, :]
        shift = s.masked_fill(~pair, float("-inf")).max()  # the authors' shift, gradient included
        s = s - torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # no valid pair: no shift
        d = torch.cdist(comp_a.to(dtype), comp_b.to(dtype), p=1)
        cols = valid_b | ~valid_b.any(-1, keepdim=True)  # keeps the LSE finite where a sample has no valid b
        lse = torch.logsumexp((s * d).masked_fill(~cols[:, None, :], float("-inf")), dim=-1)  # (B, N_a)
        per_pair = torch.where(pair, lse[:, :, None] - s * (1.0 - d), 0.0)
        n_pairs = pair.sum((1, 2))
        ok = n_pairs > 0
        per_sample = per_pair.sum((1, 2)) / n_pairs.clamp(min=1)
        return torch.where(ok, per_sample, 0.0).sum() / ok.sum().clamp(min=1)


class PDCRLoss(nn.Module):
    """The PDCR terms of one training step (docs/method.md section 2, steps 1-7), unweighted.

    Composition vectors of every anchored layer come from separable window sums over one label volume of the
    full-resolution target (``composition_vectors``), on the one input-space anchor grid the network used
    (``PDCREmbeddings.grid``), so no loop runs over anchors or voxels. With
    ``pdcr_pairs="batch"`` the anchors of all samples form one set (cross-image pairs) in the same batched call.

    Args:
        encoder_layers: anchored encoder maps (``CSSEUNet.encoder_anchor_layers``); the first two also form the
            cross-layer pair.
        decoder_layers: anchored decoder maps (``CSSEUNet.decoder_anchor_layers``).
        settings: windows ("rf" or H-PDCR sizes), temperature, pairs and anchor-grid settings.
        num_classes: K classes including background, or R regions in region-based training.
        ignore_label: nnU-Net's ignore label (label training); its voxels count for nothing.
        has_regions: region-based training (target is (B, R[+1], *S) binary maps).
        region_ignore_channel: the last target channel is nnU-Net's ignore mask (region training + ignore).

    ``forward(embeddings, target)``: ``embeddings`` as returned by ``CSSEUNet`` (the grid, and (B, N, C_l) anchors
    per layer and term), ``target`` the full-resolution target (B, 1 or R, *S) of the network's input.
    Returns {term: float32 scalar} for the terms present in ``embeddings``: per layer the loss is averaged over
    window sizes (H-PDCR: "loss per size first"), then over layers.
    """

    def __init__(
        self,
        encoder_layers: Sequence[AnchorLayer],
        decoder_layers: Sequence[AnchorLayer],
        settings: PDCRSettings,
        num_classes: int,
        ignore_label: int | None = None,
        has_regions: bool = False,
        region_ignore_channel: bool = False,
    ) -> None:
        super().__init__()
        self.layers = {"encoder": tuple(encoder_layers), "decoder": tuple(decoder_layers)}
        self.settings = settings
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.has_regions = has_regions
        self.region_ignore_channel = region_ignore_channel
        self.authors = settings.variant == "authors"
        if self.authors and has_regions:
            raise ValueError("PDCR variant 'authors' reproduces the authors' label-id code and has no region-based "
                             "form; use the variant 'clean' for region-based training")
        # total variation over classes; for (overlapping) regions the mean of per-region binary TVs
        self.distance_scale = 1.0 / num_classes if has_regions else 0.5

    @property
    def anchor_layers(self) -> tuple[AnchorLayer, ...]:
        return self.layers["encoder"] + self.layers["decoder"]

    def forward(self, embeddings: PDCREmbeddings, target: torch.Tensor) -> dict[str, torch.Tensor]:
        spatial = tuple(target.shape[2:])
        grid = embeddings.grid
        last = [f + s * (n - 1) for f, s, n in zip(grid.first, grid.spacing, grid.counts)]
        if len(last) != len(spatial) or any(c >= n for c, n in zip(last, spatial)):
            raise ValueError(f"the anchor grid ({grid.describe()}) does not lie inside the target of shape {spatial}; "
                             f"target and network input must have the same spatial shape")
        volume = label_volume(target, self.num_classes, self.ignore_label, self.has_regions,
                              self.region_ignore_channel)
        windows = self.settings.window_sizes
        batch_pairs = self.settings.pairs == "batch"
        cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def compositions(layer: AnchorLayer, num_anchors: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            if layer.name not in cache:
                if grid.num_anchors != num_anchors:
                    raise ValueError(
                        f"PDCR layer {layer.name}: the network sampled {num_anchors} anchors but the target of "
                        f"shape {spatial} gives a grid of {grid.num_anchors}; target and network input must "
                        f"have the same spatial shape"
                    )
                layer_grid = grid.on_layer(layer.stride)
                compose = authors_composition_vectors if self.authors else composition_vectors
                comps = [compose(volume, layer_windows(layer, layer_grid, w)) for w in windows]
                cache[layer.name] = [(_pooled(c), _pooled(v)) for c, v in comps] if batch_pairs else comps
            return cache[layer.name]

        features: list[torch.Tensor] = []
        jobs: list[PairJob] = []
        spans: dict[str, tuple[int, int]] = {}

        def add_pairs(term: str, fa: torch.Tensor, layer_a: AnchorLayer, fb: torch.Tensor, layer_b: AnchorLayer):
            rows, cols = compositions(layer_a, fa.shape[1]), compositions(layer_b, fb.shape[1])
            if batch_pairs:
                self_pair = fb is fa
                fa = _pooled(fa)
                fb = fa if self_pair else _pooled(fb)
            a = len(features)
            features.append(fa)
            b = a if fb is fa else len(features)
            if fb is not fa:
                features.append(fb)
            start = spans[term][0] if term in spans else len(jobs)
            for (ra, va), (rb, vb) in zip(rows, cols):
                jobs.append(PairJob(a, b, ra, va, rb, vb))
            spans[term] = (start, len(jobs))

        for layer, feats in zip(self.layers["encoder"], embeddings.encoder):
            add_pairs("encoder", feats, layer, feats, layer)
        if embeddings.cross:
            (first, second), (proj_first, proj_second) = self.layers["encoder"][:2], embeddings.cross
            add_pairs("cross", proj_first, first, proj_second, second)
        for layer, feats in zip(self.layers["decoder"], embeddings.decoder):
            add_pairs("decoder", feats, layer, feats, layer)
        # Every layer has the same number of windows, so the mean over a term's jobs is the mean over its layers of
        # the per-layer mean over window sizes.
        tau = self.settings.temperature
        if not self.authors:  # all pairs of the step in one batched call
            losses = pdcr_pair_losses(features, jobs, tau, self.distance_scale)
            return {term: losses[start:end].mean() for term, (start, end) in spans.items()}
        # authors: one autograd graph per pair (a few per step: their max shift is per pair); cross term halved
        losses = torch.stack([authors_pair_loss(features[j.a], j.comp_a, j.valid_a, features[j.b], j.comp_b,
                                                j.valid_b, tau) for j in jobs])
        return {term: losses[start:end].mean() / (2.0 if term == "cross" else 1.0)
                for term, (start, end) in spans.items()}


def _pooled(t: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (1, B N, ...): the anchors of all samples as one set ("batch" pairs)."""
    return t.reshape(1, -1, *t.shape[2:])
