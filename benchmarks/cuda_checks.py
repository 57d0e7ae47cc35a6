"""``python -m benchmarks.cuda_checks``: the CUDA-only code paths (``InstanceNormByStatistics`` in float32 and under
float16 autocast, the batched PDCR pair losses) against their references, values and gradients; exit code 1 if one
fails. The GPU script runs it first."""

from __future__ import annotations

import sys

import torch
from torch import nn

from nnunet_csse.method.pdcr import PairJob, pdcr_pair_losses
from nnunet_csse.method.uafs import InstanceNormByStatistics

Rows = list[tuple[str, float, float]]  # (name, max relative error, tolerance)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def instance_norm_checks(device: torch.device) -> Rows:
    """Outputs and input/weight gradients of ``InstanceNormByStatistics`` against ``nn.InstanceNorm3d``."""
    gen = torch.Generator().manual_seed(0)
    ref = nn.InstanceNorm3d(8, eps=1e-5, affine=True)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(8, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(8, generator=gen))
    ours = InstanceNormByStatistics.replacing(ref).to(device)
    ref = ref.to(device)
    x = (torch.randn((2, 8, 48, 48, 48), generator=gen) * 2 + 1).to(device)
    grad_out = torch.randn(x.shape, generator=gen).to(device)
    rows = []
    for label, autocast, tol in (("float32", False, 1e-4), ("float16 autocast", True, 2e-2)):
        outs = []
        for module in (ref, ours):
            xi = (x.half() if autocast else x).detach().requires_grad_(True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                y = module(xi)
            outs.append((y, *torch.autograd.grad(y.float(), (xi, module.weight), grad_out)))
        rows += [(f"InstanceNormByStatistics vs nn.InstanceNorm3d, {label}, {what}", _max_rel(a, b), tol)
                 for what, a, b in zip(("output", "grad input", "grad weight"), outs[1], outs[0])]
    return rows


def pdcr_checks(device: torch.device) -> Rows:
    """Losses and feature gradients of ``pdcr_pair_losses`` on ``device`` against CPU."""
    gen = torch.Generator().manual_seed(1)

    def side(n: int, c: int):
        comp = torch.rand((2, n, 4), generator=gen)
        return torch.randn((2, n, c), generator=gen), comp / comp.sum(-1, keepdim=True), torch.rand(
            (2, n), generator=gen) < 0.8

    (f0, c0, v0), (f1, c1, v1), (f2, c2, v2) = side(64, 128), side(64, 256), side(27, 128)
    jobs = [PairJob(0, 0, c0, v0, c0, v0), PairJob(1, 1, c1, v1, c1, v1), PairJob(0, 2, c0, v0, c2, v2)]
    results = []
    for dev in (torch.device("cpu"), device):
        feats = [f.detach().to(dev).requires_grad_(True) for f in (f0, f1, f2)]  # fresh leaves per device
        losses = pdcr_pair_losses(feats, [PairJob(j.a, j.b, *(t.to(dev) for t in j[2:])) for j in jobs], 0.5)
        (losses * torch.tensor([0.5, 1.0, -2.0], device=dev)).sum().backward()
        results.append((losses.detach().cpu(), [f.grad.cpu() for f in feats]))
    (cpu_loss, cpu_grads), (dev_loss, dev_grads) = results
    return [("pdcr_pair_losses CUDA vs CPU, losses", _max_rel(dev_loss, cpu_loss), 1e-5)] + [
        (f"pdcr_pair_losses CUDA vs CPU, gradient of features {i}", _max_rel(g, c), 1e-4)
        for i, (g, c) in enumerate(zip(dev_grads, cpu_grads))]


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_checks: no CUDA device; nothing to check")
        return 0
    rows, failed = [], 0
    for check in (instance_norm_checks, pdcr_checks):
        try:
            rows += check(torch.device("cuda"))
        except Exception as exc:  # noqa: BLE001 - reported as a failure; the other checks still run
            print(f"  FAIL  {check.__name__} raised {type(exc).__name__}: {exc}")
            failed += 1
    errors = failed
    for name, err, tol in rows:
        failed += err > tol
        print(f"  {'PASS' if err <= tol else 'FAIL'}  {name:78s} max rel. error {err:.2e} (tolerance {tol:.0e})")
    print(f"cuda_checks: {len(rows) + errors - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
