"""Part A (vectorized ``PDCRLoss`` against the per-anchor loop oracle, values and gradients checked first) and part C
(PDCR time against anchors, patch size and classes), on the anchored layers and projection heads of the real
``CSSEUNet`` of a benchmark plan. What each part measures: docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from benchmarks.plans import PLAIN, REQ_IMPORT, BenchPlan, SpeedSettings, median, synthetic_labels, time_repeated
from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.pdcr import PDCREmbeddings, PDCRLoss, composition_vectors, label_volume, layer_windows
from nnunet_csse.network import build_csse_network
from tests.oracle.pdcr_loops import reference_terms

# The authors' 3D PDCR: encoder levels 2 and 3 plus the cross-layer term, weights 0.01 + 0.01.
PDCR_CONFIG = CSSEConfig.of(pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)
TARGET_SPEEDUP = 100.0
Terms = dict[str, torch.Tensor]


@lru_cache(maxsize=4)
def _network(plan: BenchPlan):
    return build_csse_network(PLAIN, plan.arch_kwargs(), REQ_IMPORT, 1, plan.num_classes, PDCR_CONFIG)


class PDCRCase:
    """One PDCR workload of ``plan`` (its anchored layers and projection heads, leaf feature maps, a target),
    optionally at another patch size, class count or anchor settings (only the loss side of ``config`` is used)."""

    def __init__(self, plan: BenchPlan, device: torch.device, patch: tuple[int, ...] | None = None,
                 num_classes: int | None = None, config: CSSEConfig | None = None, amp: bool = False, seed: int = 0,
                 ignore_label: int | None = None) -> None:
        patch = tuple(patch or plan.patch)
        self.device, self.amp, self.grad_scale = device, amp, 2.0**16 if amp else 1.0
        self.num_classes, self.config = num_classes or plan.num_classes, config or PDCR_CONFIG
        self.network = _network(plan).to(device)  # its anchored layers and heads do not depend on the class count
        self.layers = self.network.encoder_anchor_layers
        self.dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if amp else torch.float32
        g = torch.Generator().manual_seed(seed + 7)
        self.feature_maps = {layer.level: torch.randn(
            (plan.batch_size, self.network.encoder.output_channels[layer.level], *layer.feature_shape(patch)),
            generator=g).to(device, self.dtype).requires_grad_(True) for layer in self.layers}
        target = synthetic_labels(plan.batch_size, patch, self.num_classes, seed)
        if ignore_label is not None:
            target = torch.where(torch.rand(target.shape, generator=g) < 0.2, float(ignore_label), target)
        self.target = target.to(device)
        self.loss = PDCRLoss(self.layers, (), self.config.pdcr, self.num_classes, ignore_label=ignore_label)
        self.num_anchors = [self.grid().num_anchors] * len(self.layers)  # per sample, of each anchored layer

    def grid(self):  # the anchor grid shared by the anchored layers
        return self.config.pdcr.input_grid(tuple(self.target.shape[2:]), self.network.anchor_layers)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.amp else contextlib.nullcontext()

    def vectorized_terms(self) -> Terms:
        """The terms as the trainer computes them: ``AnchorGrid.take`` of each anchored map, the network's projection
        heads for the cross term, then :class:`PDCRLoss` on the full-resolution target."""
        with self.autocast():
            grid = self.grid()
            anchors = tuple(grid.on_layer(layer.stride).take(self.feature_maps[layer.level]) for layer in self.layers)
            cross = tuple(p(a) for p, a in zip(self.network.pdcr_projections, anchors))
            return self.loss(PDCREmbeddings(grid, encoder=anchors, cross=cross), self.target)

    def loop_terms(self) -> Terms:
        with self.autocast():
            return reference_terms(self.feature_maps, self.layers, self.network.pdcr_projections, self.config.pdcr,
                                   self.target, self.num_classes, self.loss.ignore_label)

    def forward_backward(self, terms_fn: Callable[[], Terms]) -> Terms:
        """Forward, weighted sum (0.01 each), backward into the feature maps and projection heads."""
        for t in (*self.feature_maps.values(), *self.network.pdcr_projections.parameters()):
            t.grad = None
        terms = terms_fn()
        # under AMP, scale like nnU-Net's GradScaler: unscaled fp16 gradients of 0.01-weighted terms underflow
        weighted = sum(self.config.pdcr.term_weights[name] * value for name, value in terms.items())
        (weighted * self.grad_scale).backward()
        return {k: v.detach() for k, v in terms.items()}

    def timed(self, terms_fn: Callable[[], Terms], reps: int, warmup: int = 1) -> list[float]:
        return time_repeated(lambda: self.forward_backward(terms_fn), self.device, reps, warmup)

    def gradients(self) -> Terms:
        grads = {f"level{lv}": f.grad for lv, f in self.feature_maps.items()}
        grads.update({f"proj.{n}": p.grad for n, p in self.network.pdcr_projections.named_parameters()})
        return {k: v.detach().float() / self.grad_scale for k, v in grads.items() if v is not None}


def agreement(case: PDCRCase) -> dict:
    """Loss values and gradients of both implementations; raises AssertionError if they differ. Both compute in
    float32; under AMP the heads run in half precision, possibly with other GEMM kernels: wider tolerances."""
    rtol, atol, grad_tol = (1e-3, 1e-4, 5e-2) if case.amp else (1e-4, 1e-5, 1e-3)
    vec, vec_grads = case.forward_backward(case.vectorized_terms), case.gradients()
    ref, ref_grads = case.forward_backward(case.loop_terms), case.gradients()
    values = {name: {"vectorized": float(vec[name]), "loop": float(ref[name])} for name in vec}
    assert vec.keys() == ref.keys(), f"terms differ: {sorted(vec)} vs {sorted(ref)}"
    for name in vec:
        assert torch.allclose(vec[name], ref[name], rtol=rtol, atol=atol), \
            f"PDCR term {name}: vectorized {float(vec[name])!r} != loop {float(ref[name])!r}"
    grad_err = 0.0
    for key, g in vec_grads.items():
        err = (g - ref_grads[key]).abs().max().item() / (ref_grads[key].abs().max().item() or 1.0)
        grad_err = max(grad_err, err)
        assert err < grad_tol, f"gradient {key}: vectorized and loop differ (max rel. error {err:.2e})"
    return {"values": values, "max_rel_grad_error": grad_err, "rtol": rtol, "atol": atol, "grad_tol": grad_tol}


def compiled_figures(case: PDCRCase, settings: SpeedSettings, loop_s: float) -> dict:
    """The same forward + backward with ``torch.compile(PDCRLoss)``, as the trainers run it when nnU-Net compiles;
    checked against the loop reference first."""
    eager_loss = case.loss
    case.loss = torch.compile(eager_loss)
    try:
        started = time.perf_counter()
        case.forward_backward(case.vectorized_terms)  # compiles
        compile_s = time.perf_counter() - started
        check = agreement(case)
        times = case.timed(case.vectorized_terms, settings.reps_vectorized)
    finally:
        case.loss = eager_loss
    return {"compiled_s": median(times), "compiled_times_s": times, "compile_first_call_s": compile_s,
            "speedup": loop_s / median(times), "max_rel_grad_error": check["max_rel_grad_error"]}


def run_speed(plan: BenchPlan, device: torch.device, settings: SpeedSettings, amp: bool = False,
              compile_loss: bool = False) -> dict:
    """Part A on ``plan`` (labels B x patch); with ``compile_loss`` also the compiled loss. A JSON-able dict."""
    case = PDCRCase(plan, device, amp=amp)
    check = agreement(case)
    vec_times = case.timed(case.vectorized_terms, settings.reps_vectorized)
    loop_times = case.timed(case.loop_terms, settings.reps_loop, warmup=settings.warmup_loop)

    def compositions():  # the composition step alone (label volume + window sums), as PDCRLoss runs it
        volume = label_volume(case.target, case.num_classes, case.loss.ignore_label)
        grid = case.grid()
        return [composition_vectors(volume, layer_windows(layer, grid.on_layer(layer.stride), "rf"))
                for layer in case.layers]

    composition_s = median(time_repeated(compositions, device, settings.reps_vectorized))
    vec, loop = median(vec_times), median(loop_times)
    layers = [{"name": layer.name, "stride": list(layer.stride), "receptive_field": list(layer.receptive_field),
               "channels": case.network.encoder.output_channels[layer.level],
               "feature_shape": list(case.feature_maps[layer.level].shape[2:]), "anchors_per_sample": n}
              for layer, n in zip(case.layers, case.num_anchors)]
    extra = {"compiled": compiled_figures(case, settings, loop)} if compile_loss else {}
    return {**extra, "labels_shape": list(case.target.shape), "num_classes": case.num_classes, "amp": amp,
            "layers": layers, "terms": ["encoder", "cross"], "agreement": check, "vectorized_s": vec,
            "vectorized_times_s": vec_times, "loop_s": loop, "loop_times_s": loop_times,
            "speedup": loop / vec if vec > 0 else math.inf, "target_speedup": TARGET_SPEEDUP,
            "composition": {"composition_s": composition_s}}


def _point(plan: BenchPlan, device: torch.device, reps: int, amp: bool, **kwargs) -> dict:
    case = PDCRCase(plan, device, amp=amp, **kwargs)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = case.timed(case.vectorized_terms, reps)
    point = {"time_s": median(times), "times_s": times, "anchors_per_sample": case.num_anchors,
             "patch": list(case.target.shape[2:]), "num_classes": case.num_classes}
    if cuda:
        point["peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - base
    return point


def run_scaling(plan: BenchPlan, device: torch.device, spacings: Sequence[int], sides: Sequence[int],
                classes: Sequence[int], reps: int, amp: bool = False) -> dict:
    """Part C: anchors (spacing swept, anchor bounds lifted), patch side, class count; one point each."""
    def unbounded(spacing: int) -> CSSEConfig:
        return PDCR_CONFIG.replaced(pdcr_anchor_spacing=spacing, pdcr_min_anchors=1, pdcr_max_anchors=10**7)

    return {
        "plan": plan.describe(),
        "anchors": [{"spacing": s, **_point(plan, device, reps, amp, config=unbounded(s))} for s in spacings],
        "patch": [{"side": s, **_point(plan, device, reps, amp, patch=(s,) * len(plan.patch))} for s in sides],
        "classes": [{"classes": k, **_point(plan, device, reps, amp, num_classes=k)} for k in classes],
    }
