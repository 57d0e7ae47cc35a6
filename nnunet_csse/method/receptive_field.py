"""Exact receptive fields and cumulative strides of feature maps (docs/method.md section 2, RF-PDCR).

A position ``u`` of a feature map sees an interval of input voxels per axis. It is computed exactly by walking the
layers from that map back to the input, position intervals mapping to position intervals:

- convolution or pooling (kernel k, stride s, dilation d, padding p): ``[a, b] -> [s a - p, s b - p + (k - 1) d]``;
- transposed convolution (nnU-Net's upsampling): output o comes from inputs i with ``s i - p + m d = o``,
  ``0 <= m < k``: ``[a, b] -> [ceil((a + p - (k - 1) d) / s), floor((b + p) / s)]``.

A U-Net decoder map sees the union of several paths (its skip connection and every deeper level), so its field
depends on the position's parity after each transposed convolution: the classic recursion
``R' = R + (ceil(k / s) - 1) J`` is only an approximation there. For encoder maps (odd kernels, 'same' padding)
the field of ``u`` is exactly ``J u +- (R - 1) / 2`` with the authors' values R = 23 at J = 4 and R = 47 at J = 8
for nnU-Net's default encoder; they are computed from the actual modules, never hard-coded. Intervals are the
theoretical ones (not clipped to the map); windows are clipped to the image where they are used.
Residual blocks: shortcuts and squeeze-excitation are inside the main path's field and are skipped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

# Sub-modules that are not on the longest path of a block: residual shortcuts, squeeze-excitation
# (global pooling, which nnU-Net's ResEnc presets do not use).
_OFF_PATH_NAMES = ("skip", "squeeze_excitation")


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel, stride, dilation and padding of one spatial layer, per axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    transposed: bool = False

    def back(self, axis: int, lo: int, hi: int) -> tuple[int, int]:
        """Input positions ``[lo', hi']`` that output positions ``[lo, hi]`` of this layer depend on."""
        k, s, d, p = self.kernel[axis], self.stride[axis], self.dilation[axis], self.padding[axis]
        if self.transposed:
            return -(-(lo + p - (k - 1) * d) // s), (hi + p) // s
        return s * lo - p, s * hi - p + (k - 1) * d


@dataclass(frozen=True)
class ExactField:
    """What the positions of one feature map see of the input: every path of layers (forward order) from the
    input to the map. Hashable, so interval lookups are cached."""

    dim: int
    paths: tuple[tuple[LayerGeometry, ...], ...] = ((),)

    def then(self, layers: Sequence[LayerGeometry]) -> ExactField:
        """The field after ``layers`` applied in sequence."""
        return ExactField(self.dim, tuple(path + tuple(layers) for path in self.paths))

    def union(self, other: ExactField) -> ExactField:
        """The field of a map computed from both maps (e.g. a concatenation)."""
        return ExactField(self.dim, tuple(dict.fromkeys(self.paths + other.paths)))

    @property
    def stride(self) -> tuple[int, ...]:
        """Cumulative stride J per axis, in input voxels (the same along every path)."""
        strides = {_path_stride(path, self.dim) for path in self.paths}
        if len(strides) != 1:
            raise ValueError(f"paths to one map have different cumulative strides {sorted(strides)}")
        return strides.pop()

    def intervals(self, axis: int, positions: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(first voxels, last voxels), inclusive, of the input intervals that ``positions`` see along ``axis``."""
        # under torch.compile the lookup is traced once (dynamo warns about lru_cache-wrapped calls)
        lookup = _intervals.__wrapped__ if torch.compiler.is_compiling() else _intervals
        return lookup(self, axis, tuple(positions))

    def widths(self, axis: int) -> tuple[int, int]:
        """(smallest, largest) field size along ``axis`` over all positions (one period of the position's parity
        after the transposed convolutions is enough: the field repeats with it)."""
        period = max(math.prod(g.stride[axis] for g in path if g.transposed) for path in self.paths)
        lo, hi = self.intervals(axis, range(period))
        sizes = [b - a + 1 for a, b in zip(lo, hi)]
        return min(sizes), max(sizes)

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """The largest field size per axis (exact R for encoder maps, where every position sees as much)."""
        return tuple(self.widths(a)[1] for a in range(self.dim))


def _path_stride(path: tuple[LayerGeometry, ...], dim: int) -> tuple[int, ...]:
    stride = [1] * dim
    for g in path:
        for a in range(dim):
            if g.transposed:
                if stride[a] % g.stride[a]:
                    raise ValueError(f"transposed stride {g.stride[a]} does not divide cumulative stride {stride[a]}")
                stride[a] //= g.stride[a]
            else:
                stride[a] *= g.stride[a]
    return tuple(stride)


@functools.lru_cache(maxsize=1024)
def _intervals(field: ExactField, axis: int, positions: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Static geometry, evaluated once per (layer, patch) and cached: off the training step's critical path.
    first, last = [], []
    for u in positions:
        bounds = []
        for path in field.paths:
            lo = hi = u
            for layer in reversed(path):
                lo, hi = layer.back(axis, lo, hi)
            bounds.append((lo, hi))
        first.append(min(b[0] for b in bounds))
        last.append(max(b[1] for b in bounds))
    return tuple(first), tuple(last)


def _per_axis(value: int | Sequence[int], dim: int) -> tuple[int, ...]:
    return (int(value),) * dim if isinstance(value, int) else tuple(int(v) for v in value)


def module_geometry(module: nn.Module, dim: int) -> list[LayerGeometry]:
    """Spatial layers on the longest path of ``module``, in registration (= forward) order.

    Convolutions, transposed convolutions and pooling layers count; anything under a sub-module named like a
    residual shortcut or squeeze-excitation does not.
    """
    layers = []
    for name, sub in module.named_modules():
        if any(part in _OFF_PATH_NAMES for part in name.split(".")):
            continue
        if isinstance(sub, (_ConvNd, _ConvTransposeNd)):
            if isinstance(sub.padding, str):
                raise ValueError(f"padding='{sub.padding}' of {name or type(sub).__name__} is not supported")
            layers.append(LayerGeometry(_per_axis(sub.kernel_size, dim), _per_axis(sub.stride, dim),
                                        _per_axis(sub.dilation, dim), _per_axis(sub.padding, dim),
                                        isinstance(sub, _ConvTransposeNd)))
        elif isinstance(sub, (_MaxPoolNd, _AvgPoolNd)):
            stride = sub.stride if sub.stride is not None else sub.kernel_size
            layers.append(LayerGeometry(_per_axis(sub.kernel_size, dim), _per_axis(stride, dim),
                                        _per_axis(getattr(sub, "dilation", 1), dim), _per_axis(sub.padding, dim)))
    return layers
