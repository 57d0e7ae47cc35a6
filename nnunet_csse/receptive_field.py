"""Theoretical receptive fields and cumulative strides (method.md section 2, RF-PDCR).

Standard recursion per axis: for a layer with kernel k, stride s, dilation d applied to a map with
cumulative stride J and receptive field R,  R' = R + (k - 1) * d * J,  J' = J * s.
A transposed convolution with stride s (nnU-Net's upsampling, k == s) maps each output position to one input
position: R' = R + (ceil(k / s) - 1) * J, J' = J / s.
Residual blocks: the receptive field is that of the longest path, so their skip branches are ignored.
The authors' values for nnU-Net's default 3D encoder (23 at J = 4, 47 at J = 8) follow from this; they are
computed from the actual modules, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

# Sub-modules that are not on the longest path of a block: residual shortcuts, squeeze-excitation
# (global pooling, which nnU-Net's ResEnc presets do not use).
_OFF_PATH_NAMES = ("skip", "squeeze_excitation")


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel, stride and dilation of one spatial layer, per axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool = False


@dataclass(frozen=True)
class FieldState:
    """Receptive field R and cumulative stride J per axis, in input voxels."""

    receptive_field: tuple[int, ...]
    stride: tuple[int, ...]

    @staticmethod
    def identity(dim: int) -> FieldState:
        return FieldState((1,) * dim, (1,) * dim)


def _per_axis(value: int | Sequence[int], dim: int) -> tuple[int, ...]:
    return (int(value),) * dim if isinstance(value, int) else tuple(int(v) for v in value)


def propagate(state: FieldState, layers: Iterable[LayerGeometry]) -> FieldState:
    """Apply layers (in forward order) to a receptive-field state."""
    r, j = list(state.receptive_field), list(state.stride)
    for layer in layers:
        for a in range(len(r)):
            k, s, d = layer.kernel[a], layer.stride[a], layer.dilation[a]
            if layer.transposed:
                r[a] += (-(-k // s) - 1) * j[a]
                if j[a] % s:
                    raise ValueError(f"transposed stride {s} does not divide cumulative stride {j[a]}")
                j[a] //= s
            else:
                r[a] += (k - 1) * d * j[a]
                j[a] *= s
    return FieldState(tuple(r), tuple(j))


def module_geometry(module: nn.Module, dim: int) -> list[LayerGeometry]:
    """Spatial layers on the longest path of ``module``, in registration (= forward) order.

    Convolutions, transposed convolutions and pooling layers count; anything under a sub-module named like a
    residual shortcut or squeeze-excitation does not.
    """
    layers = []
    for name, sub in module.named_modules():
        if any(part in _OFF_PATH_NAMES for part in name.split(".")):
            continue
        if isinstance(sub, _ConvTransposeNd):
            layers.append(
                LayerGeometry(_per_axis(sub.kernel_size, dim), _per_axis(sub.stride, dim), _per_axis(1, dim), True)
            )
        elif isinstance(sub, _ConvNd):
            layers.append(
                LayerGeometry(
                    _per_axis(sub.kernel_size, dim), _per_axis(sub.stride, dim), _per_axis(sub.dilation, dim)
                )
            )
        elif isinstance(sub, (_MaxPoolNd, _AvgPoolNd)):
            stride = sub.stride if sub.stride is not None else sub.kernel_size
            dilation = getattr(sub, "dilation", 1)
            layers.append(
                LayerGeometry(_per_axis(sub.kernel_size, dim), _per_axis(stride, dim), _per_axis(dilation, dim))
            )
    return layers
