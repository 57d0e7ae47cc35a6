import math

import pytest
import torch
from torch import nn

from nnunet_csse.method.uafs import InstanceNormByStatistics, UAFSBlock, instance_norm_by_statistics, normalized_entropy


def test_entropy_hand_values():
    # p = (0.75, 0.25): H = -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 2 = 0.8112781244591328
    logits = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert normalized_entropy(logits).item() == pytest.approx(0.8112781244591328, abs=1e-6)
    assert normalized_entropy(torch.zeros(1, 2, 1, 1)).item() == pytest.approx(1.0, abs=1e-6)  # uniform
    assert normalized_entropy(torch.zeros(1, 5, 1, 1)).item() == pytest.approx(1.0, abs=1e-6)  # uniform, M = 5
    assert normalized_entropy(torch.tensor([80.0, 0.0]).view(1, 2, 1, 1)).item() == pytest.approx(0.0, abs=1e-6)
    # M = 3, p = (0.5, 0.25, 0.25): H = 1.5 ln 2 / ln 3
    logits = torch.tensor([math.log(2.0), 0.0, 0.0]).view(1, 3, 1, 1)
    assert normalized_entropy(logits).item() == pytest.approx(1.5 * math.log(2) / math.log(3), abs=1e-6)
    assert torch.equal(normalized_entropy(torch.randn(2, 1, 3, 3)), torch.zeros(2, 1, 3, 3))  # M = 1


def test_entropy_is_float32_under_half_precision():
    out = normalized_entropy(torch.tensor([1000.0, -1000.0, 0.0], dtype=torch.float16).view(1, 3, 1, 1))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_block_output_with_known_logits(dim):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    block = UAFSBlock(8, conv, norm, {"affine": True}, nn.LeakyReLU, {"inplace": True})
    last = block.branch[-1]
    with torch.no_grad():  # constant logits (ln 3, 0) everywhere -> attention 1 - 0.81128 = 0.18872
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(3.0), 0.0]))
    x = torch.randn(2, 8, *([6] * dim))
    expected = x * (1 + (1 - 0.8112781244591328))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert block.uncertainty(x).shape == (2, 1, *([6] * dim))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("channels", [1, 5, 32])
def test_shapes_width_and_gradients(dim, channels):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    block = UAFSBlock(channels, conv, None, None, nn.ReLU, None)
    assert block.branch[0].out_channels == max(channels // 4, 1)
    assert block.branch[-1].out_channels == 2
    assert block.branch[0].kernel_size == (3,) * dim
    x = torch.randn(2, channels, *([5] * dim), requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    (y ** 2).sum().backward()
    for p in block.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert block.branch[0].weight.grad.abs().sum() > 0  # the branch learns through the main loss


def test_anisotropic_kernel_and_bad_arguments():
    block = UAFSBlock(4, nn.Conv3d, kernel_size=(1, 3, 3))
    assert block.branch[0].kernel_size == (1, 3, 3) and block.branch[0].padding == (0, 1, 1)
    assert block(torch.randn(1, 4, 2, 5, 5)).shape == (1, 4, 2, 5, 5)
    with pytest.raises(ValueError, match="odd"):
        UAFSBlock(4, nn.Conv2d, kernel_size=2)
    with pytest.raises(ValueError, match="num_branches"):
        UAFSBlock(4, nn.Conv2d, num_branches=0)
    with pytest.raises(ValueError, match="conv_op"):
        UAFSBlock(4, nn.Linear)
    with pytest.raises(ValueError, match="logits"):
        normalized_entropy(torch.zeros(2, 2))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_by_statistics_matches_instance_norm(dim, affine):
    """Values and gradients (input, weight, bias) against torch's instance_norm, in float64."""
    gen = torch.Generator().manual_seed(dim)
    x = (torch.randn((2, 3, *([7] * dim)), generator=gen, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    weight = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True) if affine else None
    bias = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_(True) if affine else None
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    inputs = [t for t in (x, weight, bias) if t is not None]
    ours = instance_norm_by_statistics(x, weight, bias, eps=1e-5)
    ref = torch.nn.functional.instance_norm(x, weight=weight, bias=bias, use_input_stats=True, eps=1e-5)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_instance_norm_by_statistics_keeps_low_precision_dtype():
    x = torch.randn(2, 4, 6, 6, 6) * 2 + 3
    out = instance_norm_by_statistics(x.bfloat16(), None, None, eps=1e-5)
    assert out.dtype == torch.bfloat16
    ref = torch.nn.functional.instance_norm(x, eps=1e-5)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_block_replaces_instance_norm_keeping_state_dict_keys():
    block = UAFSBlock(16, nn.Conv3d, nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, nn.LeakyReLU, None)
    norm = block.branch[1]
    assert isinstance(norm, InstanceNormByStatistics) and norm.eps == 1e-5
    plain = nn.Sequential(nn.Conv3d(16, 4, 3, 1, 1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                          nn.Conv3d(4, 2, 1))
    assert block.branch.state_dict().keys() == plain.state_dict().keys()
    block.branch.load_state_dict(plain.state_dict())  # checkpoints with nn.InstanceNorm3d keep loading
    x = torch.randn(2, 16, 5, 5, 5)
    torch.testing.assert_close(block.branch(x), plain(x))
    with pytest.raises(ValueError, match="expected \\(B, 4, \\*spatial\\)"):
        norm(torch.randn(2, 3, 5, 5, 5))
    tracked = UAFSBlock(16, nn.Conv3d, nn.InstanceNorm3d, {"track_running_stats": True}, None, None)
    assert type(tracked.branch[1]) is nn.InstanceNorm3d  # running statistics: the plan's module as it is


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the statistics path runs on CUDA only)")
def test_instance_norm_by_statistics_cuda_path():
    from benchmarks.cuda_checks import instance_norm_checks

    for name, err, tol in instance_norm_checks(torch.device("cuda")):
        assert err <= tol, name
