"""Anchor grids for PDCR (docs/method.md section 2, step 1).

Anchors are feature vectors of anchored maps with cumulative stride ``J`` (per axis, in input voxels); feature
position ``t`` of such a map corresponds to the input voxel ``c = J * t``. All anchored layers of a network sample
ONE grid of input-space centres (the authors: every 32 voxels, i.e. every 8th position at J = 4 and every 4th at
J = 8), so the cross-layer term pairs anchors that look at the same places. The centres are multiples of the
least common multiple of the layers' strides, so every layer holds a feature vector at each of them.

A grid is pure Python arithmetic on static shapes: the network takes anchors with a strided slice (a view,
torch.compile-friendly) and the loss recomputes the very same grid from the target's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nnunet_csse.method.receptive_field import ExactField


@dataclass(frozen=True)
class AnchorGrid:
    """A separable grid on one feature map: per axis ``offset + step * t`` for ``t in range(count)`` (feature
    positions)."""

    offsets: tuple[int, ...]
    steps: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def num_anchors(self) -> int:
        return math.prod(self.counts)

    def positions(self, axis: int) -> tuple[int, ...]:
        """Feature positions of the grid along ``axis``."""
        return tuple(self.offsets[axis] + self.steps[axis] * t for t in range(self.counts[axis]))

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
        return tuple([j * p for p in self.positions(a)] for a, j in enumerate(stride))


@dataclass(frozen=True)
class InputGrid:
    """Anchor centres in input voxels: per axis ``first + spacing * t`` for ``t in range(count)``."""

    first: tuple[int, ...]
    spacing: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def num_anchors(self) -> int:
        return math.prod(self.counts)

    def on_layer(self, stride: Sequence[int]) -> AnchorGrid:
        """The same centres as feature positions of a map with cumulative ``stride`` (which must divide them)."""
        if len(stride) != len(self.first) or any(f % j or s % j for f, s, j in zip(self.first, self.spacing, stride)):
            raise ValueError(f"stride {tuple(stride)} does not divide the anchor grid (first centre {self.first}, "
                             f"spacing {self.spacing})")
        return AnchorGrid(tuple(f // j for f, j in zip(self.first, stride)),
                          tuple(s // j for s, j in zip(self.spacing, stride)), self.counts)

    def describe(self) -> str:
        return f"first centre {list(self.first)}, spacing {list(self.spacing)} (input voxels), counts " \
               f"{list(self.counts)}"


@dataclass(frozen=True)
class AnchorLayer:
    """One anchored feature map: resolution level, cumulative stride J (per axis, in input voxels) and the exact
    input-space interval each of its positions sees (``field``)."""

    name: str
    level: int
    stride: tuple[int, ...]
    field: ExactField

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Theoretical receptive field R per axis: exact for encoder maps (the same for every position); for
        decoder maps, whose field depends on the position after transposed convolutions, the largest one."""
        return self.field.receptive_field

    def feature_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of this layer's map for an input of ``input_shape``: ``ceil(n / J)`` per axis
        ('same'-padded strided convolutions)."""
        return tuple(-(-n // j) for n, j in zip(input_shape, self.stride))


def _centered(candidates: int, step: int) -> tuple[int, int]:
    """(offset, count) of a grid with ``step`` centred among ``candidates`` positions."""
    count = (candidates - 1) // step + 1
    return (candidates - 1 - (count - 1) * step) // 2, count


def input_grid(
    input_shape: Sequence[int],
    strides: Sequence[Sequence[int]],
    spacing: int,
    min_anchors: int = 1,
    max_anchors: int | None = None,
    centred: bool = True,
) -> InputGrid:
    """The one anchor grid, in input voxels, shared by all anchored layers of ``strides``.

    Args:
        input_shape: spatial shape of the network input (the patch), e.g. (128, 128, 128).
        strides: cumulative stride J per axis of every anchored layer, e.g. ((4, 4, 4), (8, 8, 8)).
        spacing: desired distance between anchors in input voxels (authors: 32). Per axis the grid unit L is the
            least common multiple of the layers' strides; the spacing is ``max(1, spacing // L) * L``.
        min_anchors: small patches are sampled more densely, halving the spacing (in units of L) until at least
            this many anchors exist or the spacing is L on every axis.
        max_anchors: large patches are sampled more sparsely (the axis with the most anchors gets a larger
            spacing) until at most this many remain; memory of the loss is N^2 per sample.

        centred: centre the grid among the candidate centres (this package's choice), or start it at voxel 0 (the
            authors' code: a strided slice from feature position 0, docs/method.md section 4).

    Centres are multiples of L inside the input. Example: a 128^3 patch, strides 4 and 8, spacing 32: centred,
    8, 40, 72, 104 on every axis (feature positions 2, 10, 18, 26 at J = 4 and 1, 5, 9, 13 at J = 8); from voxel 0,
    0, 32, 64, 96. Deterministic: the same arguments give the same grid.
    """
    dims = len(input_shape)
    if not strides or any(len(s) != dims for s in strides):
        raise ValueError(f"strides {[tuple(s) for s in strides]} must each have {dims} entries (input shape "
                         f"{tuple(input_shape)})")
    if spacing < 1:
        raise ValueError(f"anchor spacing must be >= 1 voxel, got {spacing}")
    if any(n < 1 for n in input_shape):
        raise ValueError(f"input_shape must be positive, got {tuple(input_shape)}")
    if max_anchors is not None and max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    unit = [math.lcm(*(int(s[a]) for s in strides)) for a in range(dims)]
    candidates = [(n - 1) // u + 1 for n, u in zip(input_shape, unit)]  # multiples of L in [0, n - 1]
    steps = [min(max(1, spacing // u), c) for u, c in zip(unit, candidates)]

    def counts_for(st: list[int]) -> list[int]:
        return [_centered(c, s)[1] for c, s in zip(candidates, st)]

    while math.prod(counts_for(steps)) < min_anchors and any(s > 1 for s in steps):
        steps = [max(1, s // 2) for s in steps]
    if max_anchors is not None:
        while math.prod(counts_for(steps)) > max_anchors:
            counts = counts_for(steps)
            axis = max(range(dims), key=lambda a: counts[a])
            steps[axis] += 1
    axes = [_centered(c, s) if centred else (0, _centered(c, s)[1]) for c, s in zip(candidates, steps)]
    return InputGrid(first=tuple(u * o for u, (o, _) in zip(unit, axes)),
                     spacing=tuple(u * s for u, s in zip(unit, steps)), counts=tuple(n for _, n in axes))
