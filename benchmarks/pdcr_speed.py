"""Part A (issue "PDCR"): vectorized PDCRLoss vs the per-anchor loop reference, forward + backward.

Both compute the encoder and cross-layer terms of the authors' 3D setup on the same leaf feature maps, the same
projection heads and the same target; their values (and gradients) must agree before any time is reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from benchmarks.pdcr_case import PDCRCase, make_case
from benchmarks.pdcr_reference import reference_terms
from benchmarks.plans import BenchPlan
from benchmarks.timing import median, time_repeated
from nnunet_csse.method.pdcr import composition_vectors, label_volume, layer_windows

TARGET_SPEEDUP = 100.0


@dataclass(frozen=True)
class SpeedSettings:
    reps_vectorized: int
    reps_loop: int
    warmup_loop: int


def reference_fn(case: PDCRCase):
    def run() -> dict[str, torch.Tensor]:
        with case.autocast():
            return reference_terms(case.feature_maps, case.network.encoder_anchor_layers,
                                   case.network.pdcr_projections, case.config, case.target, case.num_classes,
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


def run(plan: BenchPlan, device: torch.device, settings: SpeedSettings, amp: bool = False,
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
