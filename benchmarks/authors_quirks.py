"""``python -m benchmarks authors-quirks``: how much each quirk of the authors' PDCR changes the loss at init.

One fixed input at the authors' setting (a 128^3 patch, batch 2, an nnU-Net encoder with 32..256 features, the
anchored stages at strides 4 and 8 with 128 and 256 channels, their projection heads, tau 0.5, spacing 32, 3
classes), a label map of two touching ellipsoids in background. For the clean loss plus one quirk at a time, and
for all quirks together, it prints each term's value and the norm of its gradient on the two anchored maps, as
ratios to the clean loss. Computed with the loop oracle :mod:`tests.oracle.authors_loops` (float64). Every row
uses the authors' projection heads (1x1 conv + batch norm + ReLU over the map), so the rows price the loss's
quirks only. Also the largest difference in the UAFS uncertainty H between the plan's instance norm and the
authors' batch norm branch (same conv weights). Figures are measured in the run, never stored.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.plans import PLAIN, REQ_IMPORT, arch_kwargs
from nnunet_csse.config import CSSEConfig
from nnunet_csse.network import build_csse_network
from tests.oracle.authors_loops import QUIRKS, reference_terms

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


def measure(seed: int = 0, say=print) -> list[str]:
    torch.manual_seed(seed)
    config = CSSEConfig.of(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01,
                        pdcr_variant="authors", uafs_norm="batch")
    net = build_csse_network(PLAIN, arch_kwargs(3, PLAIN, n_stages=5, features=[32, 64, 128, 256, 320]), REQ_IMPORT,
                             1, CLASSES, config, True)
    x = torch.randn(2, 1, *PATCH)  # the encoder in float32 (a float64 conv at 128^3 needs ~30 GB on a CPU)
    maps = {}
    hooks = [stage.register_forward_hook(lambda m, i, out, lv=lv: maps.__setitem__(lv, out))
             for lv, stage in enumerate(net.encoder.stages[:4])]
    with torch.no_grad():
        net.encoder(x)
    for hook in hooks:
        hook.remove()
    maps = {lv: m.double() for lv, m in maps.items()}
    net.pdcr_projections.double()
    layers = net.encoder_anchor_layers
    target = label_map()
    lines = _Lines(say)
    lines += [f"input: patch {list(PATCH)}, batch 2, anchored maps {[tuple(maps[lv].shape[1:]) for lv in (2, 3)]}, "
             f"receptive fields {[layer.receptive_field[0] for layer in layers]}, tau 0.5, spacing 32, seed {seed}"]

    def terms(quirks, first):
        leaves = [maps[lv].detach().clone().requires_grad_(True) for lv in (2, 3)]
        projected = [head(m) for head, m in zip(net.pdcr_projections, leaves)]
        out = reference_terms(leaves, projected, target, [layer.stride for layer in layers],
                              [layer.receptive_field for layer in layers], first, (32,) * 3, 0.5, CLASSES, quirks)
        result = {}
        for name, value in out.items():
            grads = torch.autograd.grad(value, leaves, retain_graph=True)
            result[name] = (float(value.detach()), float(torch.sqrt(sum((g ** 2).sum() for g in grads))))
        return result

    centred = (8, 8, 8)
    clean = terms((), centred)
    rows = [("clean", clean)]
    rows += [(f"+ {q}", terms((q,), centred)) for q in QUIRKS]
    rows.append(("+ grid from voxel 0", terms((), (0, 0, 0))))
    rows.append(("authors (all)", terms(QUIRKS, (0, 0, 0))))
    lines.append("| loss | encoder value | encoder gradient | cross value | cross gradient |")
    lines.append("|---|---|---|---|---|")
    for name, r in rows:
        cells = [f"{r[t][k] / clean[t][k]:.3g}x" for t in ("encoder", "cross") for k in (0, 1)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"clean absolute: encoder {clean['encoder'][0]:.4f} (gradient norm {clean['encoder'][1]:.3e}), "
                 f"cross {clean['cross'][0]:.4f} (gradient norm {clean['cross'][1]:.3e})")

    block = net.decoder_uafs[-2].double()  # a decoder stage at stride 2
    plan_block = build_csse_network(PLAIN, arch_kwargs(3, PLAIN, n_stages=5, features=[32, 64, 128, 256, 320]),
                                    REQ_IMPORT, 1, CLASSES, CSSEConfig.of(uafs_decoder=True), True).decoder_uafs[-2]
    plan_block = plan_block.double()
    plan_block.branch[0].load_state_dict(block.branch[0].state_dict())
    plan_block.branch[3].load_state_dict(block.branch[3].state_dict())
    feats = torch.randn(2, block.branch[0].in_channels, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        gap = (block.train().uncertainty(feats) - plan_block.train().uncertainty(feats)).abs().max()
    lines.append(f"UAFS branch, same conv weights, batch norm + ReLU against instance norm + leaky ReLU: "
                 f"max |H difference| {float(gap):.3f}")
    return lines


class _Lines(list):
    """A list of output lines that prints each line as it is added (a run takes minutes)."""

    def __init__(self, say) -> None:
        super().__init__()
        self.say = say

    def append(self, line: str) -> None:
        super().append(line)
        self.say(line, flush=True)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks authors-quirks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    measure(args.seed)
    return 0
