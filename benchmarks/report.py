"""What a benchmark run reports: the machine it ran on, PASS/MISS per target, the printed table, the PNG, and
``python -m benchmarks summary`` over several runs' JSON files."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import torch
from matplotlib.figure import Figure

from benchmarks.plans import BASELINE, VARIANTS

CSSE = "nnUNetTrainerCSSE"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """A JSON-able description of the machine and the libraries used."""
    info = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            **{dist: metadata.version(dist) for dist in ("nnunetv2", "dynamic_network_architectures")},
            "device": str(device),
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def describe(info: dict) -> str:
    extra = f", CUDA {info['cuda']}" if info.get("cuda") else f", {info['torch_threads']} torch threads"
    return (f"{info['device']} | {info.get('gpu') or info['cpu']} | {info['cpu_count']} CPU cores{extra} | load avg "
            f"(1 min) at start {info['load_average_1m']} | torch {info['torch']} | nnunetv2 {info['nnunetv2']} | "
            f"python {info['python']}")


def targets(results: dict) -> list[dict]:
    """Each target with its measured figure and status PASS, MISS or N/A (part not run)."""
    checks, parts = [], results.get("parts", {})  # (name, measured, ">=" or "<=", limit, failure)
    if "pdcr_speed" in parts:
        a = parts["pdcr_speed"]
        checks.append(("PDCR vectorized vs loop speed-up (loop / vectorized)", a["speedup"], ">=", a["target_speedup"],
                       None))
        if "compiled" in a:
            checks.append(("PDCR compiled vectorized vs loop speed-up", a["compiled"]["speedup"], ">=",
                           a["target_speedup"], None))
    if "step_time" in parts:
        b = parts["step_time"]
        row, cpu = next((r for r in b["rows"] if r["trainer"] == CSSE), {}), b.get("target_time_basis") == "cpu"
        suffix, failure = " (compiled)" if b.get("compile") else "", row.get("failure")
        checks += [(f"CSSE train_step {'process CPU time' if cpu else 'wall time'} / nnUNetTrainer{suffix}",
                    row.get("cpu_time_ratio" if cpu else "time_ratio"), "<=", b["target_time_ratio"], failure),
                   (f"CSSE train_step peak memory / nnUNetTrainer{suffix}", row.get("memory_ratio"), "<=",
                    b["target_memory_ratio"], failure)]
    out = []
    for name, value, op, limit, failure in checks:
        if failure or value is None or not math.isfinite(value):
            status = "MISS" if failure else "N/A"
        else:
            status = "PASS" if (value >= limit if op == ">=" else value <= limit) else "MISS"
        out.append({"target": f"{name} {op} {limit:g}x", "measured": value, "status": status,
                    **({"failure": failure.splitlines()[0]} if failure else {})})
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f} ms"


def _ratio(value: float | None) -> str:
    return f"{value:6.3f}x" if value is not None and math.isfinite(value) else "    n/a"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _target_line(t: dict) -> str:
    value = t["measured"]
    shown = f"{value:.3f}x" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"
    failure = f"  ({t['failure']})" if t.get("failure") else ""
    return f"  {t['status']:4s}  {t['target']:70s} measured {shown}{failure}"


def format_table(results: dict) -> str:
    s, parts = results["settings"], results.get("parts", {})
    lines = ["nnunet-csse benchmarks", f"machine: {describe(results['machine'])}",
             f"settings: size {s['size']}, device {s['device']}, compile {_on(s['compile'])}, AMP {_on(s['amp'])}, "
             f"torch threads {s['threads']} ({s['threads_reason']})", *(f"note: {n}" for n in results.get("notes", []))]
    for key, part_lines in (("pdcr_speed", _pdcr_lines), ("step_time", _step_lines), ("scaling", _scaling_lines)):
        if key in parts:
            lines += ["", *part_lines(parts[key])]
    return "\n".join([*lines, "", "Targets", *map(_target_line, results.get("targets", []))])


def _pdcr_lines(a: dict) -> list[str]:
    layers = "; ".join(f"{x['name']}: stride {x['stride'][0]}, RF {x['receptive_field'][0]}, C {x['channels']}, "
                       f"map {x['feature_shape'][0]}^3, {x['anchors_per_sample']} anchors/sample" for x in a["layers"])
    check = a["agreement"]
    lines = ["A. PDCR loss, vectorized PDCRLoss vs per-anchor loop reference (forward + backward, encoder + cross "
             "terms, weights 0.01)",
             f"   labels {'x'.join(map(str, a['labels_shape']))}, {a['num_classes']} classes, AMP {_on(a['amp'])}; "
             f"{layers}",
             *(f"   loss {name:8s} vectorized {v['vectorized']:.6f}  loop {v['loop']:.6f}"
               for name, v in check["values"].items()),
             f"   values agree (rtol {check['rtol']:g}, atol {check['atol']:g}); gradients max rel. error "
             f"{check['max_rel_grad_error']:.1e}",
             f"   vectorized {_ms(a['vectorized_s'])} (median of {len(a['vectorized_times_s'])})   loop "
             f"{_ms(a['loop_s'])} (median of {len(a['loop_times_s'])})   speed ratio loop/vectorized "
             f"{a['speedup']:.2f}x"]
    if "compiled" in a:
        c = a["compiled"]
        lines.append(f"   torch.compile(PDCRLoss), as the trainers run it when nnU-Net compiles: "
                     f"{_ms(c['compiled_s'])} (median of {len(c['compiled_times_s'])}; first call with compilation "
                     f"{c['compile_first_call_s']:.1f} s; agrees with the loop, gradients max rel. error "
                     f"{c['max_rel_grad_error']:.1e})   speed ratio loop/compiled {c['speedup']:.2f}x")
    return [*lines, "   composition step alone (one-hot label volume + separable window sums): "
                    f"{_ms(a['composition']['composition_s'])}"]


def _step_lines(b: dict) -> list[str]:
    cpu = b.get("target_time_basis") == "cpu"
    memory = "; ".join(sorted({r["memory"]["method"] for r in b["rows"] if "method" in r.get("memory", {})}))
    lines = [f"B. nnU-Net train_step (forward + loss + backward + clip + SGD), {b['plan']}",
             f"   compile {_on(b['compile'])}, AMP {_on(b['amp'])}; median of {b['steps']} interleaved steps after "
             f"{b['warmup']} warm-up; memory: {memory or 'n/a'}"]
    if cpu:
        lines.append("   time target basis: process CPU time (one torch thread: the step's own compute, robust to "
                     "other load on a shared machine); wall time shown too")
    if b.get("interrupted"):
        lines.append(f"   INTERRUPTED: {b['interrupted']}")
    width = max(22, *(len(r["trainer"]) for r in b["rows"]))
    cpu_header = f" {'CPU time':>12s} {'ratio':>8s}" if cpu else ""
    lines.append(f"   {'trainer':{width}s} {'params':>10s} {'wall':>12s} {'ratio':>8s}{cpu_header} {'step MiB':>9s} "
                 f"{'ratio':>8s}   loss first -> last")
    for r in b["rows"]:
        if "failure" in r or "median_s" not in r:
            lines.append(f"   {r['trainer']:{width}s} " + (f"FAILED: {r['failure'].splitlines()[0][:300]}"
                                                             if "failure" in r else "no timed step"))
            continue
        mem = r.get("memory", {})
        step_mib = f"{mem['step_bytes'] / 2**20:9.1f}" if mem.get("step_bytes") is not None else "      n/a"
        cpu_cells = f" {_ms(r['median_cpu_s']):>12s} {_ratio(r.get('cpu_time_ratio')):>8s}" if cpu else ""
        loss = f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if "loss_first" in r else ""
        lines.append(f"   {r['trainer']:{width}s} {r.get('parameters', 0):10d} {_ms(r['median_s']):>12s} "
                     f"{_ratio(r.get('time_ratio')):>8s}{cpu_cells} {step_mib:>9s} "
                     f"{_ratio(r.get('memory_ratio')):>8s}   {loss}"
                     + (f"  memory error: {mem['error'][:200]}" if "error" in mem else ""))
    for name in (r["trainer"] for r in b["rows"] if r["trainer"] in VARIANTS):
        variant = VARIANTS[name]
        how = f' (plans "csse": {dict(variant.settings)})' if variant.settings else ""
        lines.append(f"   {name}: benchmark-only variant of {variant.base}: {variant.differs}{how}")
    for r in b["rows"]:
        if "failure" in r:
            lines += ["", f"   failure text of {r['trainer']}:", *("     " + x for x in r["failure"].splitlines())]
    if b.get("graph_breaks", {}).get("graph_breaks"):
        lines.append(f"   torch._dynamo graph breaks: {b['graph_breaks']['graph_breaks']}")
    return [*lines, f"   how: {b['how']}"]


def _scaling_lines(c: dict) -> list[str]:
    lines = [f"C. PDCR forward + backward scaling ({c['plan']} layers)"]
    for key, label in (("anchors", "spacing"), ("patch", "side"), ("classes", "classes")):
        lines.append(f"   vs {key}:")
        for p in c[key]:
            mem = f"  peak +{p['peak_extra_bytes'] / 2**20:.0f} MiB" if "peak_extra_bytes" in p else ""
            lines.append(f"     {label} {p[label]:>4}  patch {p['patch'][0]}^3  K {p['num_classes']:>2}  "
                         f"anchors/sample {'/'.join(map(str, p['anchors_per_sample'])):>11s}  {_ms(p['time_s'])}{mem}")
    return lines


def summarize(paths: list[Path]) -> str:
    lines = []
    for path in paths:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines.append(f"{path.name}: unreadable ({exc})")
            continue
        s = results["settings"]
        lines.append(f"{path.name}: {describe(results['machine'])}; size {s['size']}, compile {_on(s['compile'])}, "
                     f"AMP {_on(s['amp'])}")
        lines += map(_target_line, results.get("targets", [])) if results.get("targets") else \
            ["  (no targets in this run's parts)"]
    return "\n".join(lines)


def summary_main(argv: list[str]) -> int:
    """``python -m benchmarks summary FILE.json ...``: the targets of several benchmark runs, one line each."""
    p = argparse.ArgumentParser(prog="python -m benchmarks summary", description="Each run's targets, one line each.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.json")
    print(summarize(p.parse_args(argv).files))
    return 0


def write_png(results: dict, path: Path) -> Path | None:
    """Write the scaling curves and the step-time comparison; returns the path, or None if there is nothing."""
    scaling, steps = results.get("parts", {}).get("scaling"), results.get("parts", {}).get("step_time")
    panels = (3 if scaling else 0) + (1 if steps else 0)
    if not panels:
        return None
    fig = Figure(figsize=(5 * panels, 4.2))  # the object API: no pyplot, no process-wide backend
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    for key, label in (("anchors", "anchors per sample and layer (N)"), ("patch", "patch side (voxels, cubic)"),
                       ("classes", "classes K (background included)")) if scaling else ():
        ax, points = axes.pop(0), scaling[key]
        xs = [max(p["anchors_per_sample"]) if key == "anchors" else p["side" if key == "patch" else "classes"]
              for p in points]
        ms = [p["time_s"] * 1e3 for p in points]
        if key == "anchors":
            ax.loglog(xs, ms, "o-", label="PDCR fwd+bwd")
            if len(xs) > 1:
                ax.loglog(xs, [ms[-1] * (x / xs[-1]) ** 2 for x in xs], "--", color="grey",
                          label="~N^2 (through last point)")
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, ms, "o-")
        if key == "patch":
            for x, m, point in zip(xs, ms, points):
                ax.annotate(f"N={max(point['anchors_per_sample'])}", (x, m), fontsize=7)
        ax.set(xlabel=label, ylabel="ms", title=f"vs {key}")
    if steps:
        ax, key = axes.pop(0), "median_cpu_s" if steps.get("target_time_basis") == "cpu" else "median_s"
        rows = [r for r in steps["rows"] if key in r]
        ax.bar([r["trainer"].replace(BASELINE, "") or "nnUNet" for r in rows], [r[key] for r in rows],
               color="tab:blue")
        base = next((r for r in rows if r["trainer"] == BASELINE), None)
        if base is not None:
            ax.axhline(base[key] * steps["target_time_ratio"], color="red", ls="--", lw=1,
                       label=f"{steps['target_time_ratio']:.2f} x nnUNetTrainer")
            ax.legend(fontsize=8)
        ax.set_ylabel("train_step median, " + ("process CPU s" if key == "median_cpu_s" else "wall s"))
        ax.set_title("train_step" + (" (compiled)" if steps.get("compile") else ""))
    fig.suptitle(f"nnunet-csse benchmarks on {results['machine'].get('gpu') or results['machine']['cpu']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
