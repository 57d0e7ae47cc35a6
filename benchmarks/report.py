"""What a benchmark run reports: the machine it ran on, PASS/MISS per target, the printed table, the PNG, and
``python -m benchmarks summary`` over several runs' JSON files."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.plans import VARIANTS

# --- the machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict:
    """A JSON-able description of the machine and the libraries used."""
    info = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "nnunetv2": _version("nnunetv2"),
        "dynamic_network_architectures": _version("dynamic_network_architectures"),
        "device": str(device),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def choose_threads(device: torch.device, requested: int | None) -> tuple[int, str]:
    """Torch intra-op threads for the run and why: 1 on CUDA (as ``nnUNetv2_train``); on CPU ``requested``, else 1
    (docs/benchmarks.md)."""
    if device.type == "cuda":
        return 1, "as nnUNetv2_train on CUDA"
    if requested:
        return requested, "requested"
    return 1, f"CPU default of this benchmark; nnUNetv2_train would use all {os.cpu_count()} cores: --threads N"


def describe(info: dict) -> str:
    where = info.get("gpu") or info["cpu"]
    extra = f", CUDA {info['cuda']}" if info.get("cuda") else f", {info['torch_threads']} torch threads"
    return (f"{info['device']} | {where} | {info['cpu_count']} CPU cores{extra} | load avg (1 min) at start "
            f"{info['load_average_1m']} | torch {info['torch']} | nnunetv2 {info['nnunetv2']} | "
            f"python {info['python']}")


# --- targets and the printed table

CSSE = "nnUNetTrainerCSSE"


def targets(results: dict) -> list[dict]:
    """Each target with its measured figure and status PASS, MISS or N/A (part not run)."""
    out = []
    parts = results.get("parts", {})
    if "pdcr_speed" in parts:
        a = parts["pdcr_speed"]
        out.append(_target("PDCR vectorized vs loop speed-up (loop / vectorized)", a["speedup"], ">=",
                           a["target_speedup"], "x"))
        if "compiled" in a:
            out.append(_target("PDCR compiled vectorized vs loop speed-up", a["compiled"]["speedup"], ">=",
                               a["target_speedup"], "x"))
    if "step_time" in parts:
        b = parts["step_time"]
        row = next((r for r in b["rows"] if r["trainer"] == CSSE), {})
        suffix = " (compiled)" if b.get("compile") else ""
        failure = row.get("failure")
        cpu_basis = b.get("target_time_basis") == "cpu"
        basis = "process CPU time" if cpu_basis else "wall time"
        out.append(_target(f"CSSE train_step {basis} / nnUNetTrainer{suffix}",
                           row.get("cpu_time_ratio" if cpu_basis else "time_ratio"), "<=",
                           b["target_time_ratio"], "x", failure))
        out.append(_target(f"CSSE train_step peak memory / nnUNetTrainer{suffix}", row.get("memory_ratio"), "<=",
                           b["target_memory_ratio"], "x", failure))
    return out


def _target(name: str, value: float | None, op: str, limit: float, unit: str, failure: str | None = None) -> dict:
    if failure or value is None or not math.isfinite(value):
        status = "MISS" if failure else "N/A"
    else:
        status = "PASS" if (value >= limit if op == ">=" else value <= limit) else "MISS"
    return {"target": f"{name} {op} {limit:g}{unit}", "measured": value, "status": status,
            **({"failure": failure.splitlines()[0]} if failure else {})}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f} ms"


def _mib(nbytes: float | None) -> str:
    return f"{nbytes / 2**20:9.1f}" if nbytes is not None else "      n/a"


def _ratio(value: float | None) -> str:
    return f"{value:6.3f}x" if value is not None and math.isfinite(value) else "    n/a"


def format_table(results: dict) -> str:
    lines = ["nnunet-csse benchmarks", f"machine: {describe(results['machine'])}"]
    s = results["settings"]
    lines.append(f"settings: size {s['size']}, device {s['device']}, compile {'on' if s['compile'] else 'off'}, "
                 f"AMP {'on' if s['amp'] else 'off'}, torch threads {s['threads']} ({s['threads_reason']})")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    parts = results.get("parts", {})
    if "pdcr_speed" in parts:
        lines += ["", *_pdcr_lines(parts["pdcr_speed"])]
    if "step_time" in parts:
        lines += ["", *_step_lines(parts["step_time"])]
    if "scaling" in parts:
        lines += ["", *_scaling_lines(parts["scaling"])]
    lines += ["", "Targets", *map(_target_line, results.get("targets", []))]
    return "\n".join(lines)


def _target_line(t: dict) -> str:
    value = t["measured"]
    shown = f"{value:.3f}x" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"
    return f"  {t['status']:4s}  {t['target']:70s} measured {shown}" + (f"  ({t['failure']})" if t.get("failure")
                                                                        else "")


def _pdcr_lines(a: dict) -> list[str]:
    layers = "; ".join(f"{x['name']}: stride {x['stride'][0]}, RF {x['receptive_field'][0]}, C {x['channels']}, "
                       f"map {x['feature_shape'][0]}^3, {x['anchors_per_sample']} anchors/sample" for x in a["layers"])
    lines = ["A. PDCR loss, vectorized PDCRLoss vs per-anchor loop reference (forward + backward, encoder + cross "
             "terms, weights 0.01)",
             f"   labels {'x'.join(map(str, a['labels_shape']))}, {a['num_classes']} classes, AMP "
             f"{'on' if a['amp'] else 'off'}; {layers}"]
    for name, v in a["agreement"]["values"].items():
        lines.append(f"   loss {name:8s} vectorized {v['vectorized']:.6f}  loop {v['loop']:.6f}")
    lines.append(f"   values agree (rtol {a['agreement']['rtol']:g}, atol {a['agreement']['atol']:g}); gradients max "
                 f"rel. error {a['agreement']['max_rel_grad_error']:.1e}")
    lines.append(f"   vectorized {_ms(a['vectorized_s'])} (median of {len(a['vectorized_times_s'])})   loop "
                 f"{_ms(a['loop_s'])} (median of {len(a['loop_times_s'])})   speed ratio loop/vectorized "
                 f"{a['speedup']:.2f}x")
    if "compiled" in a:
        comp = a["compiled"]
        lines.append(f"   torch.compile(PDCRLoss), as the trainers run it when nnU-Net compiles: "
                     f"{_ms(comp['compiled_s'])} (median of {len(comp['compiled_times_s'])}; first call with "
                     f"compilation {comp['compile_first_call_s']:.1f} s; agrees with the loop, gradients max rel. "
                     f"error {comp['max_rel_grad_error']:.1e})   speed ratio loop/compiled {comp['speedup']:.2f}x")
    c = a["composition"]
    lines.append(f"   composition step alone (one-hot label volume + separable window sums): "
                 f"{_ms(c['composition_s'])}")
    return lines


def _step_lines(b: dict) -> list[str]:
    cpu = b.get("target_time_basis") == "cpu"
    memory = "; ".join(sorted({r["memory"]["method"] for r in b["rows"] if "method" in r.get("memory", {})}))
    lines = [f"B. nnU-Net train_step (forward + loss + backward + clip + SGD), {b['plan']}",
             f"   compile {'on' if b['compile'] else 'off'}, AMP {'on' if b['amp'] else 'off'}; median of "
             f"{b['steps']} interleaved steps after {b['warmup']} warm-up; memory: {memory or 'n/a'}"]
    if cpu:
        lines.append("   time target basis: process CPU time (one torch thread: the step's own compute, robust to "
                     "other load on a shared machine); wall time shown too")
    if b.get("interrupted"):
        lines.append(f"   INTERRUPTED: {b['interrupted']}")
    width = max(22, *(len(r["trainer"]) for r in b["rows"]))
    header = f"   {'trainer':{width}s} {'params':>10s} {'wall':>12s} {'ratio':>8s}"
    if cpu:
        header += f" {'CPU time':>12s} {'ratio':>8s}"
    lines.append(header + f" {'step MiB':>9s} {'ratio':>8s}   loss first -> last")
    for r in b["rows"]:
        if "failure" in r:
            lines.append(f"   {r['trainer']:{width}s} FAILED: {r['failure'].splitlines()[0][:300]}")
            continue
        if "median_s" not in r:
            lines.append(f"   {r['trainer']:{width}s} no timed step")
            continue
        mem = r.get("memory", {})
        loss = f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if "loss_first" in r else ""
        line = f"   {r['trainer']:{width}s} {r.get('parameters', 0):10d} {_ms(r['median_s']):>12s} " \
               f"{_ratio(r.get('time_ratio')):>8s}"
        if cpu:
            line += f" {_ms(r['median_cpu_s']):>12s} {_ratio(r.get('cpu_time_ratio')):>8s}"
        line += f" {_mib(mem.get('step_bytes')):>9s} {_ratio(r.get('memory_ratio')):>8s}   {loss}"
        if "error" in mem:
            line += f"  memory error: {mem['error'][:200]}"
        lines.append(line)
    for name in (r["trainer"] for r in b["rows"] if r["trainer"] in VARIANTS):
        variant = VARIANTS[name]
        how = f' (plans "csse": {dict(variant.settings)})' if variant.settings else ""
        lines.append(f"   {name}: benchmark-only variant of {variant.base}: {variant.differs}{how}")
    for r in b["rows"]:
        if "failure" in r:
            lines += ["", f"   failure text of {r['trainer']}:", *("     " + x for x in r["failure"].splitlines())]
    if b.get("graph_breaks", {}).get("graph_breaks"):
        lines.append(f"   torch._dynamo graph breaks: {b['graph_breaks']['graph_breaks']}")
    lines.append(f"   how: {b['how']}")
    return lines


def _scaling_lines(c: dict) -> list[str]:
    lines = [f"C. PDCR forward + backward scaling ({c['plan']} layers)"]
    for key, label in (("anchors", "spacing"), ("patch", "side"), ("classes", "classes")):
        lines.append(f"   vs {key}:")
        for p in c[key]:
            mem = f"  peak +{p['peak_extra_bytes'] / 2**20:.0f} MiB" if "peak_extra_bytes" in p else ""
            anchors = "/".join(map(str, p["anchors_per_sample"]))
            lines.append(f"     {label} {p[label]:>4}  patch {p['patch'][0]}^3  K {p['num_classes']:>2}  "
                         f"anchors/sample {anchors:>11s}  {_ms(p['time_s'])}{mem}")
    return lines


# --- summary of several runs

def summarize(paths: list[Path]) -> str:
    lines = []
    for path in paths:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines.append(f"{path.name}: unreadable ({exc})")
            continue
        s = results["settings"]
        lines.append(f"{path.name}: {describe(results['machine'])}; size {s['size']}, compile "
                     f"{'on' if s['compile'] else 'off'}, AMP {'on' if s['amp'] else 'off'}")
        lines += map(_target_line, results.get("targets", []))
        if not results.get("targets"):
            lines.append("  (no targets in this run's parts)")
    return "\n".join(lines)


def summary_main(argv: list[str]) -> int:
    """``python -m benchmarks summary FILE.json ...``: the targets of several benchmark runs, one line each."""
    paths = [Path(p) for p in argv]
    if not paths:
        print("usage: python -m benchmarks summary FILE.json ...", file=sys.stderr)
        return 2
    print(summarize(paths))
    return 0


# --- the PNG of the scaling curves and the step-time comparison

def _total_anchors(point: dict) -> int:
    return max(point["anchors_per_sample"])


def write_png(results: dict, path: Path) -> Path | None:
    """Write the figure; returns its path, or None if there is nothing to plot."""
    scaling = results.get("parts", {}).get("scaling")
    steps = results.get("parts", {}).get("step_time")
    panels = (3 if scaling else 0) + (1 if steps else 0)
    if not panels:
        return None
    fig = Figure(figsize=(5 * panels, 4.2))
    FigureCanvasAgg(fig)  # renders to PNG without pyplot or a process-wide backend
    axes = fig.subplots(1, panels, squeeze=False)
    axes = list(axes[0])
    title = results["machine"].get("gpu") or results["machine"]["cpu"]
    if scaling:
        for key, x_of, label in (("anchors", _total_anchors, "anchors per sample and layer (N)"),
                                 ("patch", lambda p: p["side"], "patch side (voxels, cubic)"),
                                 ("classes", lambda p: p["classes"], "classes K (background included)")):
            ax = axes.pop(0)
            xs, ms = [x_of(p) for p in scaling[key]], [p["time_s"] * 1e3 for p in scaling[key]]
            if key == "anchors":
                ax.loglog(xs, ms, "o-", label="PDCR fwd+bwd")
                if len(xs) > 1:
                    ax.loglog(xs, [ms[-1] * (x / xs[-1]) ** 2 for x in xs], "--", color="grey",
                              label="~N^2 (through last point)")
                ax.legend(fontsize=8)
            else:
                ax.plot(xs, ms, "o-")
            if key == "patch":
                for x, m, point in zip(xs, ms, scaling[key]):
                    ax.annotate(f"N={_total_anchors(point)}", (x, m), fontsize=7)
            ax.set(xlabel=label, ylabel="ms", title=f"vs {key}")
    if steps:
        ax = axes.pop(0)
        key = "median_cpu_s" if steps.get("target_time_basis") == "cpu" else "median_s"
        rows = [r for r in steps["rows"] if key in r]
        ax.bar([r["trainer"].replace("nnUNetTrainer", "") or "nnUNet" for r in rows],
               [r[key] for r in rows], color="tab:blue")
        base = next((r for r in rows if r["trainer"] == "nnUNetTrainer"), None)
        if base is not None:
            ax.axhline(base[key] * steps["target_time_ratio"], color="red", ls="--", lw=1,
                       label=f"{steps['target_time_ratio']:.2f} x nnUNetTrainer")
            ax.legend(fontsize=8)
        ax.set_ylabel("train_step median, " + ("process CPU s" if key == "median_cpu_s" else "wall s"))
        ax.set_title("train_step" + (" (compiled)" if steps.get("compile") else ""))
    fig.suptitle(f"nnunet-csse benchmarks on {title}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
