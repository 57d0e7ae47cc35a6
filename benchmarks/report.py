"""Targets (PASS/MISS from measured figures) and the printed table."""

from __future__ import annotations

import math

from benchmarks.machine import describe

CSSE = "nnUNetTrainerCSSE"


def _row(results: dict, trainer: str) -> dict | None:
    rows = results.get("parts", {}).get("step_time", {}).get("rows", [])
    return next((r for r in rows if r["trainer"] == trainer), None)


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
        row = _row(results, CSSE) or {}
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
    lines.append("placeholders: " + (", ".join(s["placeholders"]) + " are tiny placeholder modules in this run "
                                     "(not installed; no image is read)" if s["placeholders"] else "none"))
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    parts = results.get("parts", {})
    if "pdcr_speed" in parts:
        lines += ["", *_pdcr_lines(parts["pdcr_speed"])]
    if "step_time" in parts:
        lines += ["", *_step_lines(parts["step_time"])]
    if "scaling" in parts:
        lines += ["", *_scaling_lines(parts["scaling"])]
    lines += ["", "Targets"]
    for t in results.get("targets", []):
        lines.append(f"  {t['status']:4s}  {t['target']:70s} measured {_ratio(t['measured'])}"
                     + (f"  ({t['failure']})" if t.get("failure") else ""))
    return "\n".join(lines)


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
    lines = [f"B. nnU-Net train_step (forward + loss + backward + clip + SGD), {b['plan']}",
             f"   compile {'on' if b['compile'] else 'off'}, AMP {'on' if b['amp'] else 'off'}; median of "
             f"{b['steps']} interleaved steps after {b['warmup']} warm-up; memory: {_memory_method(b)}"]
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
    from benchmarks.trainers import VARIANTS

    lines += [f"   {r['trainer']}: benchmark-only variant of {VARIANTS[r['trainer']][0]}: {VARIANTS[r['trainer']][1]}"
              for r in b["rows"] if r["trainer"] in VARIANTS]
    for r in b["rows"]:
        if "failure" in r:
            lines += ["", f"   failure text of {r['trainer']}:", *("     " + x for x in r["failure"].splitlines())]
    if b.get("graph_breaks", {}).get("graph_breaks"):
        lines.append(f"   torch._dynamo graph breaks: {b['graph_breaks']['graph_breaks']}")
    lines.append(f"   how: {b['how']}")
    return lines


def _memory_method(b: dict) -> str:
    methods = {r.get("memory", {}).get("method") for r in b["rows"]} - {None}
    return "; ".join(sorted(methods)) or "n/a"


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
