"""PNG of the PDCR scaling curves and the step-time comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _total_anchors(point: dict) -> int:
    return max(point["anchors_per_sample"])


def write_png(results: dict, path: Path) -> Path | None:
    """Write the figure; returns its path, or None if there is nothing to plot."""
    scaling = results.get("parts", {}).get("scaling")
    steps = results.get("parts", {}).get("step_time")
    panels = (3 if scaling else 0) + (1 if steps else 0)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    title = results["machine"].get("gpu") or results["machine"]["cpu"]
    if scaling:
        ax = axes.pop(0)
        pts = scaling["anchors"]
        n = [_total_anchors(p) for p in pts]
        t = [p["time_s"] * 1e3 for p in pts]
        ax.loglog(n, t, "o-", label="PDCR fwd+bwd")
        if len(n) > 1:
            ref = [t[-1] * (x / n[-1]) ** 2 for x in n]
            ax.loglog(n, ref, "--", color="grey", label="~N^2 (through last point)")
        ax.set_xlabel("anchors per sample and layer (N)")
        ax.set_ylabel("ms")
        ax.set_title("vs anchors")
        ax.legend(fontsize=8)
        ax = axes.pop(0)
        pts = scaling["patch"]
        ax.plot([p["side"] for p in pts], [p["time_s"] * 1e3 for p in pts], "o-")
        for p in pts:
            ax.annotate(f"N={_total_anchors(p)}", (p["side"], p["time_s"] * 1e3), fontsize=7)
        ax.set_xlabel("patch side (voxels, cubic)")
        ax.set_ylabel("ms")
        ax.set_title("vs patch size")
        ax = axes.pop(0)
        pts = scaling["classes"]
        ax.plot([p["classes"] for p in pts], [p["time_s"] * 1e3 for p in pts], "o-")
        ax.set_xlabel("classes K (background included)")
        ax.set_ylabel("ms")
        ax.set_title("vs classes")
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
    plt.close(fig)
    return path
