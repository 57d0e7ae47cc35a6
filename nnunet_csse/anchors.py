"""Regular anchor grids for PDCR (method.md section 2, step 1).

Anchors are feature vectors taken every ``step``-th position per axis of a feature map with cumulative
stride ``J`` (per axis, in input voxels). Feature position ``t`` corresponds to the input-space center
``c = J * t``. A grid is pure Python arithmetic on static shapes, so the network takes anchors with a
strided slice (a view, torch.compile-friendly) and the loss recomputes the very same grid from the label
shape to build composition vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AnchorGrid:
    """A separable grid: per axis ``offset + step * t`` for ``t in range(count)`` (feature-map units)."""

    offsets: tuple[int, ...]
    steps: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def num_anchors(self) -> int:
        return math.prod(self.counts)

    def slices(self) -> tuple[slice, ...]:
        """Spatial slices selecting the anchors from a feature map (use as ``f[(..., *grid.slices())]``)."""
        return tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(self.offsets, self.steps, self.counts))

    def take(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) feature map -> (B, N, C) anchor vectors, N in row-major grid order."""
        if feature_map.ndim != len(self.counts) + 2:
            raise ValueError(
                f"feature map has shape {tuple(feature_map.shape)}; expected (B, C, *spatial) with "
                f"{len(self.counts)} spatial axes"
            )
        anchors = feature_map[(slice(None), slice(None), *self.slices())]
        return anchors.flatten(2).transpose(1, 2)

    def centers(self, stride: Sequence[int]) -> tuple[list[int], ...]:
        """Per-axis input-space centers ``J * (offset + step * t)`` in voxels."""
        return tuple(
            [j * (o + s * t) for t in range(n)]
            for j, o, s, n in zip(stride, self.offsets, self.steps, self.counts)
        )


@dataclass(frozen=True)
class AnchorLayer:
    """One anchored feature map: resolution level, cumulative stride J and theoretical receptive field R
    (both per axis, in input voxels)."""

    name: str
    level: int
    stride: tuple[int, ...]
    receptive_field: tuple[int, ...]

    def feature_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of this layer's map for an input of ``input_shape``: ``ceil(n / J)`` per axis
        ('same'-padded strided convolutions)."""
        return tuple(-(-n // j) for n, j in zip(input_shape, self.stride))


def _centered_axis(size: int, step: int) -> tuple[int, int]:
    count = (size - 1) // step + 1
    offset = (size - 1 - (count - 1) * step) // 2
    return offset, count


def anchor_grid(
    feature_shape: Sequence[int],
    stride: Sequence[int],
    spacing: int,
    min_anchors: int = 1,
    max_anchors: int | None = None,
) -> AnchorGrid:
    """Anchor grid on a feature map of ``feature_shape`` with cumulative ``stride`` (per axis).

    Args:
        feature_shape: spatial shape of the feature map, e.g. (32, 32, 32).
        stride: cumulative stride J of that map per axis, in input voxels, e.g. (4, 4, 4).
        spacing: desired distance between anchors in input voxels (authors: 32, i.e. s = 8 at J = 4 and
            s = 4 at J = 8). Per axis the feature step is ``max(1, spacing // J)``.
        min_anchors: small maps (tiny patches) are sampled more densely, halving steps until at least
            this many anchors exist or every step is 1.
        max_anchors: large maps are sampled more sparsely (the largest count's step grows) until at most
            this many anchors remain; memory of the loss is N^2 per sample.

    The grid is centered in the map. Deterministic: the same arguments give the same grid.
    """
    if len(feature_shape) != len(stride):
        raise ValueError(f"feature_shape {tuple(feature_shape)} and stride {tuple(stride)} differ in length")
    if spacing < 1:
        raise ValueError(f"anchor spacing must be >= 1 voxel, got {spacing}")
    if any(s < 1 for s in feature_shape):
        raise ValueError(f"feature_shape must be positive, got {tuple(feature_shape)}")
    if max_anchors is not None and max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    steps = [max(1, spacing // max(1, j)) for j in stride]
    steps = [min(s, size) for s, size in zip(steps, feature_shape)]

    def counts_for(st: list[int]) -> list[int]:
        return [_centered_axis(size, s)[1] for size, s in zip(feature_shape, st)]

    while math.prod(counts_for(steps)) < min_anchors and any(s > 1 for s in steps):
        steps = [max(1, s // 2) for s in steps]
    if max_anchors is not None:
        while math.prod(counts_for(steps)) > max_anchors:
            counts = counts_for(steps)
            axis = max(range(len(counts)), key=lambda a: counts[a])
            steps[axis] += 1
    axes = [_centered_axis(size, s) for size, s in zip(feature_shape, steps)]
    return AnchorGrid(
        offsets=tuple(a[0] for a in axes), steps=tuple(steps), counts=tuple(a[1] for a in axes)
    )
