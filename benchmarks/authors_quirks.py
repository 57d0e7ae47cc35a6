"""``python -m benchmarks authors-quirks``: how much each quirk of the authors' PDCR changes the loss and its gradient
at init (ratios to the clean loss, loop oracle, one fixed input at their setting), and the UAFS uncertainty gap
between the plan's instance norm and their batch norm branch. The input: docs/benchmarks.md."""

from __future__ import annotations

import argparse

import torch

from nnunet_csse.config import CSSEConfig
from nnunet_csse.network import build_csse_network
from tests.oracle.authors_loops import QUIRKS, reference_terms
from tests.toy_plans import PLAIN, REQ_IMPORT, arch_kwargs

PATCH = (128, 128, 128)
CLASSES = 3


def label_map(batch: int = 2) -> torch.Tensor:
    """Two touching ellipsoids (classes 1 and 2) in background, shifted per sample."""
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in PATCH), indexing="ij")
    target = torch.zeros(batch, 1, *PATCH, dtype=torch.float64)
    for b in range(batch):
        c = [n / 2 + 6 * b for n in PATCH]
        inside = sum(((x - ci) / r) ** 2 for x, ci, r in zip(axes, c, (30, 40, 22))) <= 1
        target[b, 0][inside] = 1
        target[b, 0][inside & (axes[1] > c[1] + 8)] = 2
    return target


def measure(seed: int = 0) -> None:
    """Print the table, each line as soon as it is computed (a run takes minutes)."""
    torch.manual_seed(seed)
    config = CSSEConfig.of(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01,
                        pdcr_variant="authors", uafs_norm="batch")
    architecture = arch_kwargs(3, PLAIN, n_stages=5, features=[32, 64, 128, 256, 320])
    net = build_csse_network(PLAIN, architecture, REQ_IMPORT, 1, CLASSES, config, True)
    x = torch.randn(2, 1, *PATCH)  # the encoder in float32 (a float64 conv at 128^3 needs ~30 GB on a CPU)
    maps = {}
    with torch.no_grad():
        for lv, stage in enumerate(net.encoder.stages[:4]):
            x = maps[lv] = stage(x)
    maps = {lv: m.double() for lv, m in maps.items()}
    net.pdcr_projections.double()
    layers = net.encoder_anchor_layers
    target = label_map()
    print(f"input: patch {list(PATCH)}, batch 2, anchored maps {[tuple(maps[lv].shape[1:]) for lv in (2, 3)]}, "
        f"receptive fields {[layer.receptive_field[0] for layer in layers]}, tau 0.5, spacing 32, seed {seed}",
        flush=True)

    def terms(quirks, first):
        leaves = [maps[lv].detach().clone().requires_grad_(True) for lv in (2, 3)]
        projected = [head(m) for head, m in zip(net.pdcr_projections, leaves)]
        out = reference_terms(leaves, projected, target, [layer.stride for layer in layers],
                              [layer.receptive_field for layer in layers], first, (32,) * 3, 0.5, CLASSES, quirks)
        return {name: (float(value.detach()), float(torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(
            value, leaves, retain_graph=True))))) for name, value in out.items()}

    clean = terms((), (8, 8, 8))
    rows = [("clean", clean), *((f"+ {q}", terms((q,), (8, 8, 8))) for q in QUIRKS),
            ("+ grid from voxel 0", terms((), (0, 0, 0))), ("authors (all)", terms(QUIRKS, (0, 0, 0)))]
    print("| loss | encoder value | encoder gradient | cross value | cross gradient |\n|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[t][k] / clean[t][k]:.3g}x" for t in ("encoder", "cross") for k in (0, 1))
              + " |")
    print(f"clean absolute: encoder {clean['encoder'][0]:.4f} (gradient norm {clean['encoder'][1]:.3e}), "
        f"cross {clean['cross'][0]:.4f} (gradient norm {clean['cross'][1]:.3e})", flush=True)

    block = net.decoder_uafs[-2].double()  # a decoder stage at stride 2
    plan_block = build_csse_network(PLAIN, architecture, REQ_IMPORT, 1, CLASSES, CSSEConfig.of(uafs_decoder=True),
                                    True).decoder_uafs[-2].double()
    plan_block.branch[0].load_state_dict(block.branch[0].state_dict())
    plan_block.branch[3].load_state_dict(block.branch[3].state_dict())
    feats = torch.randn(2, block.branch[0].in_channels, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        gap = (block.train().uncertainty(feats) - plan_block.train().uncertainty(feats)).abs().max()
    print(f"UAFS branch, same conv weights, batch norm + ReLU against instance norm + leaky ReLU: "
        f"max |H difference| {float(gap):.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks authors-quirks", description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    measure(args.seed)
    return 0
