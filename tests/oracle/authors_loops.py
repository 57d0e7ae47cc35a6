"""A slow loop oracle of the authors' 3D PDCR loss, with each of its quirks as a switch (docs/method.md section 4).

Written from what their code does, not from its text: per sample and per anchor it crops the anchor's window out of
the label map and counts the labels with ``torch.unique``, then builds the loss pair by pair. Every quirk can be
switched off on its own; with all of them off it computes the clean formulation (docs/method.md section 2). It
shares no code with :mod:`nnunet_csse.method.pdcr` and imports torch only: the tests compare the vectorized
``pdcr_variant: "authors"`` against it in float64, and ``python -m benchmarks authors-quirks`` prices each quirk.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence

import torch

#: the quirks of the authors' loss, in the order docs/method.md section 4 lists them
QUIRKS = ("max_shift", "classes_by_position", "no_half", "full_volume", "short_border", "halved_cross")
COSINE_EPS = 1e-8  # nn.CosineSimilarity's default


def window_composition(labels: torch.Tensor, centre: Sequence[int], radius: Sequence[int], num_classes: int,
                       quirks: Collection[str]) -> torch.Tensor:
    """(K,) float64 composition of the window of ``radius`` voxels around ``centre`` in ``labels`` (*S class ids).

    Authors: the crop ends one voxel short at the far border (``short_border``), counts go to the entries in the
    order of the sorted labels present with the first one dropped (``classes_by_position``), and the window is
    divided by its full volume (``full_volume``). Clean: exact crop, entry k is class k, divided by the crop size.
    """
    box = []
    for c, r, n in zip(centre, radius, labels.shape):
        last = min(c + r, n - 2) if "short_border" in quirks else min(c + r, n - 1)
        box.append(slice(max(c - r, 0), last + 1))
    crop = labels[tuple(box)]
    values, counts = torch.unique(crop, return_counts=True)
    composition = torch.zeros(num_classes, dtype=torch.float64)
    if "classes_by_position" in quirks:
        for entry, count in enumerate(counts[1:]):
            composition[entry] = float(count)
    else:
        for value, count in zip(values, counts):
            composition[int(value)] = float(count)
    volume = math.prod(2 * r + 1 for r in radius) if "full_volume" in quirks else crop.numel()
    return composition / volume


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``nn.CosineSimilarity`` of two vectors: x.y / sqrt(max(|x|^2 |y|^2, eps^2))."""
    return torch.dot(x, y) / torch.sqrt(torch.clamp(torch.dot(x, x) * torch.dot(y, y), min=COSINE_EPS ** 2))


def sample_anchors(fmap: torch.Tensor, first: Sequence[int], step: Sequence[int], count: Sequence[int]
                   ) -> list[list[torch.Tensor]]:
    """[sample][anchor] feature vectors of a (B, C, *S) map at positions ``first + step * t``, row-major."""
    return [[fmap[(b, slice(None), *position)]
             for position in itertools.product(*(range(f, f + s * n, s) for f, s, n in zip(first, step, count)))]
            for b in range(fmap.shape[0])]


def anchor_compositions(target: torch.Tensor, centres: Sequence[Sequence[int]], radius: Sequence[int],
                        num_classes: int, quirks: Collection[str]) -> list[list[torch.Tensor]]:
    """[sample][anchor] compositions for input-space ``centres`` per axis (row-major product)."""
    return [[window_composition(target[b, 0], centre, radius, num_classes, quirks)
             for centre in itertools.product(*centres)] for b in range(target.shape[0])]


def pair_loss(feats_a: list[list[torch.Tensor]], comp_a: list[list[torch.Tensor]], feats_b: list[list[torch.Tensor]],
              comp_b: list[list[torch.Tensor]], temperature: float, quirks: Collection[str]) -> torch.Tensor:
    """Mean over samples and pairs (i, j) of ``log sum_k exp(s_ik d_ik) - s_ij (1 - d_ij)``.

    ``max_shift``: the largest similarity of the whole batch is subtracted from every similarity, with its
    gradient. ``no_half``: d is the plain L1 distance (authors); otherwise half of it (total variation).
    """
    sims = torch.stack([torch.stack([torch.stack([cosine(x, y) for y in ys]) for x in xs])
                        for xs, ys in zip(feats_a, feats_b)]) / temperature
    if "max_shift" in quirks:
        sims = sims - torch.max(sims)
    scale = 1.0 if "no_half" in quirks else 0.5
    total, pairs = 0.0, 0
    for b, (rows, cols) in enumerate(zip(comp_a, comp_b)):
        for i, r_i in enumerate(rows):
            d = torch.stack([scale * (r_i - r_k).abs().sum() for r_k in cols])
            repulse = torch.log(torch.exp(sims[b, i] * d).sum())
            for j in range(len(cols)):
                total = total + repulse - sims[b, i, j] * (1.0 - d[j])
                pairs += 1
    return total / pairs


def reference_terms(
    encoder_maps: Sequence[torch.Tensor],
    projected_maps: Sequence[torch.Tensor] | None,
    target: torch.Tensor,
    strides: Sequence[Sequence[int]],
    receptive_fields: Sequence[Sequence[int]],
    first_centre: Sequence[int],
    spacing: Sequence[int],
    temperature: float,
    num_classes: int,
    quirks: Collection[str] = QUIRKS,
) -> dict[str, torch.Tensor]:
    """The encoder and cross-layer PDCR terms (unweighted) of one step.

    Args:
        encoder_maps: (B, C_l, *S_l) anchored encoder maps; the first two also form the cross-layer pair.
        projected_maps: the two maps after their projection heads (B, P, *S_l), or None (no cross term).
        target: (B, 1, *S) class ids (float).
        strides: cumulative stride J per axis of each map; anchors at input voxel J t.
        receptive_fields: R per axis of each map: the window is the R voxels centred on the anchor.
        first_centre / spacing: the anchor grid in input voxels per axis (authors: first centre 0, spacing 32).
        temperature: tau; num_classes: K, background included.
        quirks: the authors' quirks to apply (all by default; none: the clean formulation).
    """
    unknown = set(quirks) - set(QUIRKS)
    if unknown:
        raise ValueError(f"unknown quirks {sorted(unknown)}; known: {QUIRKS}")
    size = target.shape[2:]
    counts = [len(range(f, n, s)) for f, n, s in zip(first_centre, size, spacing)]
    centres = [list(range(f, f + s * c, s)) for f, s, c in zip(first_centre, spacing, counts)]

    def layer(fmap: torch.Tensor, index: int) -> tuple[list, list]:
        j = strides[index]
        feats = sample_anchors(fmap, [f // a for f, a in zip(first_centre, j)], [s // a for s, a in zip(spacing, j)],
                               counts)
        radius = [(r - 1) // 2 for r in receptive_fields[index]]
        return feats, anchor_compositions(target, centres, radius, num_classes, quirks)

    sides = [layer(fmap, i) for i, fmap in enumerate(encoder_maps)]
    encoder = sum(pair_loss(f, c, f, c, temperature, quirks) for f, c in sides) / len(sides)
    terms = {"encoder": encoder}
    if projected_maps is not None:
        (_, c1), (_, c2) = sides[:2]
        p1, p2 = (layer(p, i)[0] for i, p in enumerate(projected_maps))
        cross = pair_loss(p1, c1, p2, c2, temperature, quirks)
        terms["cross"] = cross / 2 if "halved_cross" in quirks else cross
    return terms
