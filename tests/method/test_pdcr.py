"""Tests for nnunet_csse.method.pdcr against the slow, independent loop oracle of tests.oracle.pdcr_loops
(docs/method.md section 2)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nnunet_csse.method.anchors import AnchorGrid, input_grid
from nnunet_csse.method.pdcr import (
    PairJob,
    centered_windows,
    composition_vectors,
    label_volume,
    pdcr_pair_loss,
    pdcr_pair_losses,
)
from tests.oracle.pdcr_loops import loop_compositions, loop_pair_loss

IGNORE = 7

# (label shape, stride J, anchor spacing, window): anisotropic strides and windows, even and odd window sizes,
# windows large enough to cross both the near and the far border.
CASES = {
    "2d": ((13, 22), (2, 4), 8, (5, 12)),
    "3d": ((7, 12, 10), (1, 4, 4), 4, (4, 9, 6)),
}


def _feature_shape(shape, stride) -> tuple[int, ...]:
    return tuple(-(-n // j) for n, j in zip(shape, stride, strict=True))  # 'same'-padded strided convs


def _grid(shape, stride, spacing) -> AnchorGrid:
    grid = input_grid(shape, [stride], spacing).on_layer(stride)
    assert any(o > 0 for o in grid.offsets), "test setup: want a grid with a non-zero offset"
    return grid


def _anchor_centers(grid: AnchorGrid, stride) -> list[tuple[int, ...]]:
    """Row-major list of input-space centers, computed without AnchorGrid.centers."""
    per_axis = [range(n) for n in grid.counts]
    return [
        tuple(j * (o + s * t) for j, o, s, t in zip(stride, grid.offsets, grid.steps, ts, strict=True))
        for ts in itertools.product(*per_axis)
    ]


def _oracle_compositions(target: torch.Tensor, grid, stride, window, num_classes, **kwargs):
    """comp (B, N, K), valid (B, N) from the shared loop oracle (one window crop per anchor)."""
    comps = loop_compositions(target, grid, stride, window, num_classes, **kwargs)
    comp = np.array([[np.zeros(num_classes) if c is None else c.double().numpy() for c in sample] for sample in comps])
    valid = np.array([[c is not None for c in sample] for sample in comps])
    return comp, valid


def _oracle_labels(labels: np.ndarray, grid, stride, window, num_classes, ignore):
    """labels (B, *S) ints -> comp (B, N, K), valid (B, N)."""
    target = torch.as_tensor(labels)[:, None].float()
    return _oracle_compositions(target, grid, stride, window, num_classes, ignore_label=ignore)


def _windows(grid, stride, window):
    return centered_windows(grid.centers(stride), window)


def _pipeline(target, grid, stride, window, **volume_kwargs):
    return composition_vectors(label_volume(target, **volume_kwargs), _windows(grid, stride, window))


@pytest.mark.parametrize("case", CASES)
def test_composition_vectors_label_mode(case):
    shape, stride, spacing, window = CASES[case]
    grid = _grid(shape, stride, spacing)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, *shape), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.2] = IGNORE
    volume = label_volume(labels[:, None].float(), num_classes=4, ignore_label=IGNORE)
    assert volume.shape == (2, 5, *shape) and volume.dtype == torch.float32
    is_valid = labels != IGNORE
    for k in range(4):
        assert torch.equal(volume[:, k].bool(), (labels == k) & is_valid)
    assert torch.equal(volume[:, 4].bool(), is_valid)
    comp, valid_anchor = composition_vectors(volume, _windows(grid, stride, window))
    ref_comp, ref_valid = _oracle_labels(labels.numpy(), grid, stride, window, 4, IGNORE)
    assert comp.dtype == torch.float32 and comp.shape == (2, grid.num_anchors, 4)
    np.testing.assert_allclose(comp.numpy(), ref_comp, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(valid_anchor.numpy(), ref_valid)


@pytest.mark.parametrize("case", CASES)
def test_anchor_order_matches_take(case):
    shape, stride, spacing, _ = CASES[case]
    grid = _grid(shape, stride, spacing)
    feat_shape = _feature_shape(shape, stride)
    # Feature map whose channels are the input-space coordinates of each feature position.
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(n) * j for n, j in zip(feat_shape, stride, strict=True)], indexing="ij")
    )
    taken = grid.take(coords[None].float())[0]
    assert [tuple(int(x) for x in row) for row in taken] == _anchor_centers(grid, stride)


@pytest.mark.parametrize("case", CASES)
def test_composition_vectors_region_mode(case):
    shape, stride, spacing, window = CASES[case]
    grid = _grid(shape, stride, spacing)
    gen = torch.Generator().manual_seed(1)
    target = torch.rand((2, 4, *shape), generator=gen) < 0.4  # 3 overlapping regions + ignore channel
    volume = label_volume(target.float(), has_regions=True, region_ignore_channel=True, num_classes=3)
    assert volume.shape == (2, 4, *shape)
    comp, valid_anchor = composition_vectors(volume, _windows(grid, stride, window))
    ref_comp, ref_valid = _oracle_compositions(target.float(), grid, stride, window, 3, regions=True,
                                               region_ignore_channel=True)
    np.testing.assert_array_equal(valid_anchor.numpy(), ref_valid)
    np.testing.assert_allclose(comp.numpy(), ref_comp, rtol=1e-6, atol=1e-7)


def test_region_mode_without_ignore_channel():
    target = torch.tensor([[[[1, 0], [1, 1]], [[0, 0], [1, 0]]]], dtype=torch.uint8)
    volume = label_volume(target, has_regions=True)
    assert torch.all(volume[:, -1] == 1) and torch.equal(volume[:, :-1], target.float())


@pytest.mark.parametrize("case", CASES)
def test_fully_ignored_window(case):
    shape, stride, spacing, window = CASES[case]
    grid = _grid(shape, stride, spacing)
    labels = torch.randint(0, 3, (1, 1, *shape), generator=torch.Generator().manual_seed(2))
    # Ignore everything around the first anchor's window (it lies at the near corner).
    first = _anchor_centers(grid, stride)[0]
    box = tuple(slice(0, c - (w - 1) // 2 + w) for c, w in zip(first, window, strict=True))
    labels[(0, 0, *box)] = IGNORE
    comp, valid_anchor = _pipeline(labels, grid, stride, window, num_classes=3, ignore_label=IGNORE)
    assert not valid_anchor[0, 0] and torch.all(comp[0, 0] == 0)
    assert valid_anchor[0, 1:].all()
    torch.testing.assert_close(comp[0, 1:].sum(-1), torch.ones(grid.num_anchors - 1))


def _oracle_loss(fa, ca, va, fb, cb, vb, tau, scale) -> torch.Tensor:
    """The shared loop oracle of the formula of docs/method.md section 2, step 5, in float64 (autograd through it is
    the gradient oracle for the closed-form backward)."""
    def anchors(comp, valid):
        return [[c if v else None for c, v in zip(cs, vs)] for cs, vs in zip(torch.as_tensor(comp).double(), valid)]

    fa, fb = torch.as_tensor(fa).double(), torch.as_tensor(fb).double()
    return loop_pair_loss(fa, anchors(ca, va), fb, anchors(cb, vb), tau, scale)


def _random_side(gen, b, n, c, k):
    feats = torch.randn((b, n, c), generator=gen)
    comp = torch.rand((b, n, k), generator=gen)
    comp = comp / comp.sum(-1, keepdim=True)
    valid = torch.rand((b, n), generator=gen) < 0.7
    return feats, comp, valid


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_pair_loss_matches_oracle(cross):
    gen = torch.Generator().manual_seed(4)
    fa, ca, va = _random_side(gen, 3, 11, 6, 4)
    va[2] = False  # a sample without valid anchors must be left out of the mean
    va[0, 0] = True
    fa.requires_grad_(True)
    if cross:
        fb, cb, vb = _random_side(gen, 3, 7, 6, 4)
        vb[0, 0] = True
        vb[1] = False  # valid a anchors but none in b: also left out, and must not poison the gradient
        fb.requires_grad_(True)
        tau, scale = 0.5, 0.5
    else:
        fb, cb, vb = fa, ca, va
        tau, scale = 0.7, 1 / 3
    loss = pdcr_pair_loss(fa, ca, va, fb, cb, vb, temperature=tau, distance_scale=scale)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    expected = float(_oracle_loss(fa.detach(), ca, va.numpy(), fb.detach(), cb, vb.numpy(), tau, scale))
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    loss.backward()
    assert torch.isfinite(fa.grad).all() and fa.grad[0].abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scenario", ["background", "single_class", "mixed", "all_ignored"])
def test_loss_and_gradients_finite(case, scenario):
    shape, stride, spacing, window = CASES[case]
    grid = _grid(shape, stride, spacing)
    num_classes = 1 if scenario == "single_class" else 3
    labels = torch.randint(0, 3, (2, 1, *shape), generator=torch.Generator().manual_seed(5))
    if scenario in ("background", "single_class"):
        labels.zero_()
    elif scenario == "all_ignored":
        labels.fill_(IGNORE)
    comp, valid_anchor = _pipeline(labels, grid, stride, window, num_classes=num_classes, ignore_label=IGNORE)
    feat_shape = _feature_shape(shape, stride)
    fmap_a = torch.randn((2, 8, *feat_shape), requires_grad=True)
    fmap_b = torch.randn((2, 8, *feat_shape), requires_grad=True)
    fa, fb = grid.take(fmap_a), grid.take(fmap_b)
    self_loss = pdcr_pair_loss(fa, comp, valid_anchor, fa, comp, valid_anchor, temperature=0.5)
    cross_loss = pdcr_pair_loss(fa, comp, valid_anchor, fb, comp, valid_anchor, temperature=0.5)
    (self_loss + cross_loss).backward()
    assert torch.isfinite(self_loss) and torch.isfinite(cross_loss)
    for g in (fmap_a.grad, fmap_b.grad):
        assert g is not None and torch.isfinite(g).all()
    if scenario == "all_ignored":
        assert not valid_anchor.any()
        assert self_loss.item() == 0 and cross_loss.item() == 0
        assert torch.all(fmap_a.grad == 0) and torch.all(fmap_b.grad == 0)
    else:
        assert fmap_a.grad.abs().sum() > 0 and fmap_b.grad.abs().sum() > 0


def test_batched_pairs_match_autograd_oracle_in_value_and_gradient():
    """Several pairs of different anchor counts and widths in one call (zero padding inside), sharing feature
    tensors (self pairs, a cross pair, two windows of one layer): every loss and every feature gradient equals the
    loop oracle's."""
    gen = torch.Generator().manual_seed(11)
    f0, c0, v0 = _random_side(gen, 2, 6, 5, 3)
    f1, c1, v1 = _random_side(gen, 2, 4, 5, 3)
    f2, c2, v2 = _random_side(gen, 2, 5, 3, 3)
    _, c0b, _ = _random_side(gen, 2, 6, 5, 3)  # a second window size of layer 0
    v0[0], v1[1, 0], v2[1] = True, True, False  # sample 1 of the f2 pair has no valid anchor: left out
    features = [f.double().requires_grad_(True) for f in (f0, f1, f2)]
    jobs = [PairJob(0, 0, c0, v0, c0, v0), PairJob(0, 0, c0b, v0, c0b, v0), PairJob(0, 1, c0, v0, c1, v1),
            PairJob(2, 2, c2, v2, c2, v2)]
    weights = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    tau, scale = 0.6, 0.5
    losses = pdcr_pair_losses(features, jobs, temperature=tau, distance_scale=scale)
    assert losses.shape == (4,) and losses.dtype == torch.float64
    (losses * weights).sum().backward()
    grads = [f.grad.clone() for f in features]
    for f in features:
        f.grad = None
    oracle = torch.stack([
        _oracle_loss(features[j.a], j.comp_a.double(), j.valid_a, features[j.b], j.comp_b.double(), j.valid_b, tau,
                     scale) for j in jobs
    ])
    torch.testing.assert_close(losses.detach(), oracle.detach(), rtol=1e-10, atol=1e-12)
    (oracle * weights).sum().backward()
    for got, f in zip(grads, features):
        assert f.grad.abs().sum() > 0
        torch.testing.assert_close(got, f.grad, rtol=1e-9, atol=1e-12)


def test_pair_losses_gradcheck():
    """Finite differences against the closed-form backward; an all-zero anchor vector (F.normalize's clamp, also
    what padding produces) gets a finite gradient."""
    gen = torch.Generator().manual_seed(12)
    fa, ca, va = _random_side(gen, 2, 5, 4, 3)
    fb, cb, vb = _random_side(gen, 2, 3, 4, 3)
    fa, fb = fa.double().requires_grad_(True), fb.double().requires_grad_(True)
    jobs = [PairJob(0, 1, ca, va, cb, vb), PairJob(0, 0, ca, va, ca, va)]
    assert torch.autograd.gradcheck(lambda a, b: pdcr_pair_losses([a, b], jobs, 0.5), (fa, fb))
    zero = fa.detach().clone()
    zero[1, 2] = 0.0
    va[1, 2] = True
    zero.requires_grad_(True)
    pdcr_pair_losses([zero, fb], jobs, 0.5).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_low_precision_gradients_come_back_in_input_dtype():
    gen = torch.Generator().manual_seed(13)
    fa, ca, va = _random_side(gen, 2, 8, 6, 3)
    half = fa.to(torch.bfloat16).requires_grad_(True)
    full = half.detach().float().requires_grad_(True)
    pdcr_pair_loss(half, ca, va, half, ca, va, temperature=0.5).backward()
    pdcr_pair_loss(full, ca, va, full, ca, va, temperature=0.5).backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(half.grad.float(), full.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_feats_give_float32_loss(dtype):
    gen = torch.Generator().manual_seed(6)
    fa, ca, va = _random_side(gen, 2, 40, 32, 3)
    fb, cb, vb = _random_side(gen, 2, 30, 32, 3)
    fa, fb = fa.to(dtype), fb.to(dtype)
    ref = pdcr_pair_loss(fa.float(), ca, va, fb.float(), cb, vb, temperature=0.5)
    loss = pdcr_pair_loss(fa, ca, va, fb, cb, vb, temperature=0.5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    # Under autocast the math must still run in float32 (a bf16 matmul would be off by ~1e-3).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = pdcr_pair_loss(fa.float(), ca, va, fb.float(), cb, vb, temperature=0.5)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_cpu(case):
    shape, stride, spacing, window = CASES[case]
    grid = _grid(shape, stride, spacing)
    labels = torch.randint(0, 3, (2, 1, *shape), generator=torch.Generator().manual_seed(7))
    comp, va = _pipeline(labels, grid, stride, window, num_classes=3)
    comp_gpu, va_gpu = _pipeline(labels.cuda(), grid, stride, window, num_classes=3)
    torch.testing.assert_close(comp_gpu.cpu(), comp)
    assert torch.equal(va_gpu.cpu(), va)
    feats = torch.randn((2, grid.num_anchors, 16), dtype=torch.float16)
    loss = pdcr_pair_loss(feats, comp, va, feats, comp, va, temperature=0.5)
    with torch.autocast("cuda", dtype=torch.float16):
        loss_gpu = pdcr_pair_loss(feats.cuda(), comp_gpu, va_gpu, feats.cuda(), comp_gpu, va_gpu, temperature=0.5)
    torch.testing.assert_close(loss_gpu.cpu(), loss, rtol=1e-4, atol=1e-5)


def test_bad_shapes_raise():
    t2 = torch.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected \\(B, C, \\*S\\)"):
        label_volume(torch.zeros((2, 4, 4)), num_classes=2)
    with pytest.raises(ValueError, match="expected \\(B, 1, \\*S\\)"):
        label_volume(torch.zeros((2, 3, 4, 4)), num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        label_volume(t2)
    with pytest.raises(ValueError, match="num_classes=2"):
        label_volume(torch.zeros((2, 4, 4, 4)), num_classes=2, has_regions=True, region_ignore_channel=True)
    with pytest.raises(ValueError, match="ignore channel"):
        label_volume(t2, has_regions=True, region_ignore_channel=True)
    with pytest.raises(ValueError, match="ignore label must be the highest"):
        label_volume(t2, num_classes=3, ignore_label=2)
    with pytest.raises(ValueError, match="2 or 3 spatial axes"):
        composition_vectors(torch.zeros((2, 2, 4)), centered_windows([[0]], [1]))

    sat = torch.ones((2, 3, 8, 8))
    grid = AnchorGrid(offsets=(0, 0), steps=(1, 1), counts=(2, 2))
    with pytest.raises(ValueError, match="windows has 3 axes"):
        composition_vectors(sat, centered_windows([[0, 4], [0, 4], [0, 4]], (3, 3, 3)))
    with pytest.raises(ValueError, match="outside the label extent"):
        composition_vectors(sat, _windows(AnchorGrid((0, 0), (1, 1), (4, 2)), (4, 4), (3, 3)))
    with pytest.raises(ValueError, match="float 0/1"):
        composition_vectors(sat.bool(), _windows(grid, (4, 4), (3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        composition_vectors(sat, _windows(grid, (4, 4), (0, 3)))

    f, c, v = torch.randn(2, 5, 4), torch.rand(2, 5, 3), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="feats_a"):
        pdcr_pair_loss(f[0], c, v, f, c, v, temperature=0.5)
    with pytest.raises(ValueError, match="comp_b"):
        pdcr_pair_loss(f, c, v, f, c[:, :4], v, temperature=0.5)
    with pytest.raises(ValueError, match="valid_a"):
        pdcr_pair_loss(f, c, v.float(), f, c, v, temperature=0.5)
    with pytest.raises(ValueError, match="width C"):
        pdcr_pair_loss(f, c, v, f[..., :3], c, v, temperature=0.5)
    with pytest.raises(ValueError, match="K=2"):
        pdcr_pair_loss(f, c, v, f, c[..., :2], v, temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        pdcr_pair_loss(f, c, v, f, c, v, temperature=0.0)
