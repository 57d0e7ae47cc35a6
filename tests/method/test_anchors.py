"""nnunet_csse.method.anchors: the one input-space anchor grid and the anchors it takes (docs/method.md section 2,
step 1), against brute-force enumerations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nnunet_csse.method.anchors import input_grid


def centres(grid, axis: int) -> list[int]:
    return [grid.first[axis] + grid.spacing[axis] * t for t in range(grid.counts[axis])]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("size,strides,spacing", [
    (40, [4, 8], 32), (56, [4, 8], 32), (128, [4, 8], 32), (37, [2, 6], 12), (64, [1], 5),
])
def test_grid_centres_are_the_common_multiples_inside_the_input_centred(dim, size, strides, spacing):
    """Brute force per axis: the candidates are the multiples of the strides' lcm inside [0, size - 1]; the grid
    takes every k-th of them, k = max(1, spacing // lcm) (no min/max bound here), centred among the candidates."""
    shape = tuple(size + a for a in range(dim))  # a different size per axis
    grid = input_grid(shape, [(s,) * dim for s in strides], spacing)
    unit = math.lcm(*strides)
    for axis, n in enumerate(shape):
        candidates = [c for c in range(n) if c % unit == 0]
        step = min(max(1, spacing // unit), len(candidates))
        taken = candidates[::step]
        slack = candidates[-1] - taken[-1]  # what is left after the last centre, split between both ends
        expected = [c + (slack // unit) // 2 * unit for c in taken]
        assert centres(grid, axis) == expected, axis


def test_grid_from_voxel_0_is_the_authors_and_the_centred_grid_is_ours():
    """The authors' 128^3 patch, strides 4 and 8, spacing 32: centres 0, 32, 64, 96 in their code against
    8, 40, 72, 104 centred."""
    strides = [(4, 4, 4), (8, 8, 8)]
    ours = input_grid((128,) * 3, strides, 32, centred=True)
    theirs = input_grid((128,) * 3, strides, 32, centred=False)
    assert (ours.first, theirs.first) == ((8,) * 3, (0,) * 3)
    assert ours.spacing == theirs.spacing == (32,) * 3 and ours.counts == theirs.counts == (4,) * 3


@pytest.mark.parametrize("min_anchors,max_anchors", [(8, 27), (1, 8), (64, 512)])
def test_grid_bounds_the_number_of_anchors(min_anchors, max_anchors):
    big = input_grid((128, 128, 128), [(4, 4, 4)], 32, min_anchors, max_anchors)
    assert big.num_anchors <= max_anchors
    # a Hippocampus-sized patch at J = 4 and 8 gets denser than 32 voxels to reach the minimum
    small = input_grid((40, 56, 40), [(4, 4, 4), (8, 8, 8)], 32, min_anchors, max_anchors)
    assert min(min_anchors, 5 * 7 * 5) <= small.num_anchors <= max_anchors
    for grid, shape, unit in ((big, (128,) * 3, 4), (small, (40, 56, 40), 8)):
        assert all(c % unit == 0 for axis in range(3) for c in centres(grid, axis))
        assert all(centres(grid, a)[-1] <= n - 1 for a, n in enumerate(shape))


@pytest.mark.parametrize("dim", [2, 3])
def test_take_returns_the_feature_vectors_at_the_centres_in_row_major_order(dim):
    """``on_layer(J).take`` against a loop over the centres: feature position c / J of the map, (B, N, C)."""
    shape = (48, 40, 56)[:dim]
    stride = (4, 8, 4)[:dim]
    grid = input_grid(shape, [stride, tuple(2 * j for j in stride)], 16)
    fmap = torch.randn(2, 3, *(-(-n // j) for n, j in zip(shape, stride)))
    taken = grid.on_layer(stride).take(fmap)
    looped = [fmap[(slice(None), slice(None), *(c // j for c, j in zip(point, stride)))]
              for point in itertools.product(*(centres(grid, a) for a in range(dim)))]
    torch.testing.assert_close(taken, torch.stack(looped, dim=1))
    assert grid.on_layer(stride).centers(stride) == tuple(centres(grid, a) for a in range(dim))


def test_a_stride_that_does_not_divide_the_grid_is_an_error():
    grid = input_grid((64, 64), [(4, 4)], 16)
    with pytest.raises(ValueError, match=r"stride \(8, 8\) does not divide the anchor grid"):
        grid.on_layer((8, 8))
    with pytest.raises(ValueError, match="must each have 2 entries"):
        input_grid((64, 64), [(4, 4, 4)], 16)
