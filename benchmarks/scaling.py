"""Part C: PDCR forward + backward time vs anchors per sample, patch size and number of classes.

Each point is the vectorized encoder + cross-layer PDCR of :mod:`benchmarks.pdcr_case` (the trainer's
computation) on fresh leaf feature maps; the median of ``reps`` timed calls after one warm-up call.

- anchors: fixed patch, anchor spacing swept with the min/max anchor bounds lifted (N per layer, the similarity
  and distance matrices are N x N per sample);
- patch: the trainer's default anchor settings, patch side swept (label volume and anchor count both grow);
- classes: fixed patch and anchors, K swept (the label volume and its window sums have K + 1 channels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from benchmarks.pdcr_case import PDCR_CONFIG, make_case
from benchmarks.plans import BenchPlan
from benchmarks.timing import median, time_repeated


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


def sweep_anchors(plan: BenchPlan, device: torch.device, spacings: Sequence[int], reps: int, amp: bool = False,
                  patch: tuple[int, ...] | None = None) -> list[dict]:
    points = []
    for spacing in spacings:
        config = dataclasses.replace(PDCR_CONFIG, pdcr_anchor_spacing=spacing, pdcr_min_anchors=1,
                                     pdcr_max_anchors=10**7)
        points.append({"spacing": spacing, **_point(plan, device, reps, amp, config=config, patch=patch)})
    return points


def sweep_patch(plan: BenchPlan, device: torch.device, sides: Sequence[int], reps: int,
                amp: bool = False) -> list[dict]:
    return [{"side": s, **_point(plan, device, reps, amp, patch=(s,) * len(plan.patch))} for s in sides]


def sweep_classes(plan: BenchPlan, device: torch.device, classes: Sequence[int], reps: int, amp: bool = False,
                  patch: tuple[int, ...] | None = None) -> list[dict]:
    return [{"classes": k, **_point(plan, device, reps, amp, num_classes=k, patch=patch)} for k in classes]


def run(plan: BenchPlan, device: torch.device, spacings: Sequence[int], sides: Sequence[int],
        classes: Sequence[int], reps: int, amp: bool = False) -> dict:
    return {
        "plan": plan.describe(),
        "anchors": sweep_anchors(plan, device, spacings, reps, amp),
        "patch": sweep_patch(plan, device, sides, reps, amp),
        "classes": sweep_classes(plan, device, classes, reps, amp),
    }
