"""Part A (vectorized ``PDCRLoss`` against the per-anchor loop oracle, values and gradients checked first) and part C
(PDCR time against anchors, patch size and classes), on the anchored layers and projection heads of the real
``CSSEUNet`` of a benchmark plan. What each part measures: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from benchmarks.plans import PLAIN, REQ_IMPORT, BenchPlan, SpeedSettings, median, synthetic_labels, time_repeated
from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.pdcr import PDCREmbeddings, PDCRLoss, composition_vectors, label_volume, layer_windows
from nnunet_csse.network import CSSEUNet, build_csse_network
from tests.oracle.pdcr_loops import reference_terms

# The authors' 3D PDCR: encoder levels 2 and 3 plus the cross-layer term, weights 0.01 + 0.01.
PDCR_CONFIG = CSSEConfig.of(pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


@lru_cache(maxsize=4)
def _network(plan: BenchPlan) -> CSSEUNet:
    return build_csse_network(PLAIN, plan.arch_kwargs(), REQ_IMPORT, plan.num_input_channels, plan.num_classes,
                              PDCR_CONFIG)


@dataclass
class PDCRCase:
    """Inputs of one PDCR forward + backward: leaf feature maps per anchored level and the target."""

    network: CSSEUNet
    config: CSSEConfig
    loss: PDCRLoss
    target: torch.Tensor
    feature_maps: dict[int, torch.Tensor]
    num_classes: int
    amp: bool

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def num_anchors(self) -> list[int]:
        """Anchors per sample of each anchored layer."""
        grid = self.config.pdcr.input_grid(tuple(self.target.shape[2:]), self.network.anchor_layers)
        return [grid.num_anchors for _ in self.network.encoder_anchor_layers]

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)

    def vectorized_terms(self) -> dict[str, torch.Tensor]:
        """The terms exactly as the trainer computes them: ``AnchorGrid.take`` of each anchored map, the
        network's projection heads for the cross term, then :class:`PDCRLoss` on the full-resolution target."""
        with self.autocast():
            grid = self.config.pdcr.input_grid(tuple(self.target.shape[2:]), self.network.anchor_layers)
            anchors = tuple(grid.on_layer(layer.stride).take(self.feature_maps[layer.level])
                            for layer in self.network.encoder_anchor_layers)
            cross = tuple(p(a) for p, a in zip(self.network.pdcr_projections, anchors))
            return self.loss(PDCREmbeddings(grid, encoder=anchors, cross=cross), self.target)

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.config.pdcr.term_weights[name] * value for name, value in terms.items())

    def zero_grad(self) -> None:
        for t in (*self.feature_maps.values(), *self.network.pdcr_projections.parameters()):
            t.grad = None

    def forward_backward(self, terms_fn: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Forward, weighted sum (0.01 each), backward into the feature maps and projection heads."""
        self.zero_grad()
        terms = terms_fn()
        # under AMP, scale like nnU-Net's GradScaler: unscaled fp16 gradients of 0.01-weighted terms underflow
        (self.weighted(terms) * self.grad_scale).backward()
        return {k: v.detach() for k, v in terms.items()}

    def gradients(self) -> dict[str, torch.Tensor]:
        grads = {f"level{lv}": f.grad for lv, f in self.feature_maps.items()}
        grads.update({f"proj.{n}": p.grad for n, p in self.network.pdcr_projections.named_parameters()})
        return {k: v.detach().float() / self.grad_scale for k, v in grads.items() if v is not None}

    @property
    def grad_scale(self) -> float:
        return 2.0**16 if self.amp else 1.0


def make_case(plan: BenchPlan, device: torch.device, patch: tuple[int, ...] | None = None,
              num_classes: int | None = None, config: CSSEConfig | None = None, amp: bool = False,
              seed: int = 0, ignore_label: int | None = None) -> PDCRCase:
    """A PDCR workload for ``plan`` (its layers and projection heads), optionally at another patch size, class
    count or anchor settings (only the loss-side fields of ``config`` are used)."""
    patch = tuple(patch or plan.patch)
    num_classes = num_classes or plan.num_classes
    config = config or PDCR_CONFIG
    network = _network(plan).to(device)  # anchored layers and projection heads do not depend on the class count
    g = torch.Generator().manual_seed(seed + 7)
    feature_maps = {}
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if amp else torch.float32
    for layer in network.encoder_anchor_layers:
        channels = network.encoder.output_channels[layer.level]
        shape = (plan.batch_size, channels, *layer.feature_shape(patch))
        feature_maps[layer.level] = torch.randn(shape, generator=g).to(device, dtype).requires_grad_(True)
    target = synthetic_labels(plan.batch_size, patch, num_classes, seed)
    if ignore_label is not None:
        target = torch.where(torch.rand(target.shape, generator=g) < 0.2, float(ignore_label), target)
    loss = PDCRLoss(network.encoder_anchor_layers, (), config.pdcr, num_classes, ignore_label=ignore_label)
    return PDCRCase(network, config, loss, target.to(device), feature_maps, num_classes, amp)


# --- part A: vectorized PDCRLoss vs the loop reference

TARGET_SPEEDUP = 100.0


def reference_fn(case: PDCRCase):
    def run() -> dict[str, torch.Tensor]:
        with case.autocast():
            return reference_terms(case.feature_maps, case.network.encoder_anchor_layers,
                                   case.network.pdcr_projections, case.config.pdcr, case.target, case.num_classes,
                                   case.loss.ignore_label)
    return run


def agreement(case: PDCRCase, rtol: float | None = None, atol: float | None = None) -> dict:
    """Loss values and gradients of both implementations; raises AssertionError if they differ.

    Both compute in float32; under AMP the projection heads run in half precision in each, possibly with
    different GEMM kernels for their differently laid out inputs, so tolerances are wider there."""
    rtol = rtol if rtol is not None else (1e-3 if case.amp else 1e-4)
    atol = atol if atol is not None else (1e-4 if case.amp else 1e-5)
    grad_tol = 5e-2 if case.amp else 1e-3
    vec = case.forward_backward(case.vectorized_terms)
    vec_grads = case.gradients()
    ref = case.forward_backward(reference_fn(case))
    ref_grads = case.gradients()
    values = {name: {"vectorized": float(vec[name]), "loop": float(ref[name])} for name in vec}
    assert vec.keys() == ref.keys(), f"terms differ: {sorted(vec)} vs {sorted(ref)}"
    for name in vec:
        assert torch.allclose(vec[name], ref[name], rtol=rtol, atol=atol), \
            f"PDCR term {name}: vectorized {float(vec[name])!r} != loop {float(ref[name])!r}"
    grad_err = 0.0
    for key, g in vec_grads.items():
        scale = ref_grads[key].abs().max().item() or 1.0
        err = (g.float() - ref_grads[key].float()).abs().max().item() / scale
        grad_err = max(grad_err, err)
        assert err < grad_tol, f"gradient {key}: vectorized and loop differ (max rel. error {err:.2e})"
    return {"values": values, "max_rel_grad_error": grad_err, "rtol": rtol, "atol": atol, "grad_tol": grad_tol}


def composition_breakdown(case: PDCRCase, reps: int) -> dict:
    """Time of the composition step alone (label volume + window sums), as PDCRLoss runs it."""
    spatial = tuple(case.target.shape[2:])

    def compositions():
        volume = label_volume(case.target, case.num_classes, case.loss.ignore_label)
        grid = case.config.pdcr.input_grid(spatial, case.network.anchor_layers)
        return [composition_vectors(volume, layer_windows(layer, grid.on_layer(layer.stride), "rf"))
                for layer in case.network.encoder_anchor_layers]

    return {"composition_s": median(time_repeated(compositions, case.device, reps))}


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
        times = time_repeated(lambda: case.forward_backward(case.vectorized_terms), case.device,
                              settings.reps_vectorized, warmup=1)
    finally:
        case.loss = eager_loss
    return {"compiled_s": median(times), "compiled_times_s": times, "compile_first_call_s": compile_s,
            "speedup": loop_s / median(times), "max_rel_grad_error": check["max_rel_grad_error"]}


def run_speed(plan: BenchPlan, device: torch.device, settings: SpeedSettings, amp: bool = False,
        compile_loss: bool = False) -> dict:
    """Part A on ``plan`` (labels B x patch, the plan's anchored layers); with ``compile_loss`` also the compiled
    loss. Returns a JSON-able dict."""
    case = make_case(plan, device, amp=amp)
    check = agreement(case)
    vec_times = time_repeated(lambda: case.forward_backward(case.vectorized_terms), device,
                              settings.reps_vectorized, warmup=1)
    loop_times = time_repeated(lambda: case.forward_backward(reference_fn(case)), device, settings.reps_loop,
                               warmup=settings.warmup_loop)
    breakdown = composition_breakdown(case, settings.reps_vectorized)
    vec, loop = median(vec_times), median(loop_times)
    layers = [{"name": layer.name, "stride": list(layer.stride), "receptive_field": list(layer.receptive_field),
               "channels": case.network.encoder.output_channels[layer.level],
               "feature_shape": list(case.feature_maps[layer.level].shape[2:]), "anchors_per_sample": n}
              for layer, n in zip(case.network.encoder_anchor_layers, case.num_anchors)]
    speedup = loop / vec if vec > 0 else math.inf
    extra = {"compiled": compiled_figures(case, settings, loop)} if compile_loss else {}
    return {**extra,
        "labels_shape": list(case.target.shape), "num_classes": case.num_classes, "amp": amp, "layers": layers,
        "terms": ["encoder", "cross"], "agreement": check,
        "vectorized_s": vec, "vectorized_times_s": vec_times, "loop_s": loop, "loop_times_s": loop_times,
        "speedup": speedup, "target_speedup": TARGET_SPEEDUP, "composition": breakdown,
    }


# --- part C: scaling

def _point(plan: BenchPlan, device: torch.device, reps: int, amp: bool, **kwargs) -> dict:
    case = make_case(plan, device, amp=amp, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = time_repeated(lambda: case.forward_backward(case.vectorized_terms), device, reps, warmup=1)
    point = {"time_s": median(times), "times_s": times, "anchors_per_sample": case.num_anchors,
             "patch": list(case.target.shape[2:]), "num_classes": case.num_classes}
    if device.type == "cuda":
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
