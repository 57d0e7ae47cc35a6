"""nnunet_csse.method.receptive_field: exact input intervals of feature positions, against the support of the
gradient (the voxels a position really depends on), on plain torch layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_csse.method.receptive_field import ExactField, module_geometry


def gradient_support(fmap: torch.Tensor, x: torch.Tensor, position: tuple[int, ...]) -> list[tuple[int, int]]:
    """The bounding box, per axis, of the input voxels with a non-zero gradient of one feature position."""
    (grad,) = torch.autograd.grad(fmap[(0, slice(None), *position)].sum(), x, retain_graph=True)
    support = (grad[0, 0] != 0).nonzero()
    return [(int(support[:, a].min()), int(support[:, a].max())) for a in range(support.shape[1])]


def positive_weights(module: nn.Module) -> nn.Module:
    """Positive weights and a positive input: no gradient cancels, so the support is the whole field."""
    for p in module.parameters():
        nn.init.uniform_(p, 0.1, 1.0)
    return module


@pytest.mark.parametrize("dim", [2, 3])
def test_encoder_like_stack_matches_the_gradient_support(dim):
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dim]
    net = positive_weights(nn.Sequential(conv(1, 2, 3, padding=1), conv(2, 2, 3, stride=2, padding=1),
                                         conv(2, 2, 5, padding=2), conv(2, 2, 3, stride=2, padding=2, dilation=2)))
    field = ExactField(dim).then(module_geometry(net, dim))
    assert field.stride == (4,) * dim
    x = torch.rand(1, 1, *([48] * dim), dtype=torch.float64, requires_grad=True)
    fmap = net.double()(x)
    for u in (4, 5, 6):
        expected = [tuple(v[0] for v in field.intervals(a, [u])) for a in range(dim)]
        assert gradient_support(fmap, x, (u,) * dim) == expected, u
    # encoder fields are the same size everywhere: R = 1 + 2 + 2*4 ... computed, not written by hand here
    assert field.widths(0)[0] == field.widths(0)[1] == field.receptive_field[0]


def test_transposed_convolution_fields_depend_on_the_parity_of_the_position():
    """Upsampling by a 2x2 transposed convolution after a strided conv, plus a skip path (as in a U-Net decoder):
    the field is the hull of both paths and moves with the position's parity, not one voxel per position."""
    down = positive_weights(nn.Sequential(nn.Conv1d(1, 1, 3, stride=2, padding=1), nn.Conv1d(1, 1, 3, padding=1)))
    up = positive_weights(nn.ConvTranspose1d(1, 1, 2, stride=2))
    skip = positive_weights(nn.Conv1d(1, 1, 5, padding=2))
    x = torch.rand(1, 1, 40, dtype=torch.float64, requires_grad=True)
    fmap = up.double()(down.double()(x)) + skip.double()(x)
    deep = ExactField(1).then(module_geometry(down, 1)).then(module_geometry(up, 1))
    field = deep.union(ExactField(1).then(module_geometry(skip, 1)))
    assert field.stride == (1,)
    lo, hi = field.intervals(0, range(10, 14))
    assert [gradient_support(fmap, x, (u,))[0] for u in range(10, 14)] == list(zip(lo, hi))
    # the pair of outputs of one transposed-conv input sees one interval; the next pair, one shifted by J_deep = 2
    assert (lo[0], hi[0]) == (lo[1], hi[1]) and (lo[2], hi[2]) == (lo[0] + 2, hi[0] + 2)


def test_off_path_modules_and_string_padding():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.skip = nn.Conv2d(1, 1, 1)  # a residual shortcut: inside the main path's field, skipped

    assert len(module_geometry(Block(), 2)) == 1
    with pytest.raises(ValueError, match="padding='same'"):
        module_geometry(nn.Conv2d(1, 1, 3, padding="same"), 2)
