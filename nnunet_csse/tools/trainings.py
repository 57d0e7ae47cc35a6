"""Statistics and tables shared by ``nnunet-csse compare`` and the accuracy benchmark; the training level (one fold,
or one (fold, seed) run, is one sample). The rules: docs/benchmarks.md."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TIE_TOLERANCE = 1e-12  # |difference| below this is a tie
N_RESAMPLES = 10_000  # bootstrap resamples
BOOTSTRAP_SEED = 0
STALL_DICE = 0.1  # a training with a foreground class below this mean validation Dice is stalled
MIN_SIGNED_RANK = 6  # fewer non-zero pair differences: exact sign test instead of Wilcoxon signed-rank
MIN_TRAININGS = 2  # fewer trainings (pairs): no bootstrap CI
LEVEL = 0.95
TRAINER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                  "tab:cyan", "tab:gray")  # no red: red crosses are the stalled trainings
Group = tuple[tuple[str, ...], "Sequence[TrainerTrainings]"]  # (group cells, e.g. (budget, fraction); its trainers)


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample SD, n) of the finite values (None and NaN left out); NaN for what cannot be computed."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return (float(np.mean(finite)), sd, len(finite)) if finite else (math.nan, math.nan, 0)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as in nnU-Net
        return np.nanmean(values, axis=axis)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p; |d| < ``TIE_TOLERANCE`` are ties (dropped by scipy), 1.0 when all tie."""
    from scipy.stats import wilcoxon

    tied = np.abs(differences) < TIE_TOLERANCE
    if tied.all():
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's notes on ties / small samples
        return float(wilcoxon(np.where(tied, 0.0, differences), alternative="two-sided").pvalue)


@dataclass(eq=False)
class Training:
    """One training: its pairing key, mean validation Dice per foreground class and, if known, per-case Dice
    (``cases[i, j]``: case ``case_names[i]``, class j in ``class_dice`` order; NaN where the class is absent)."""

    key: str  # e.g. "fold 0" or "fold 0 seed 1": trainings with the same key are paired
    class_dice: dict[str, float]
    cases: np.ndarray | None = None
    case_names: tuple[str, ...] = ()

    @classmethod
    def from_cases(cls, key: str, cases: Mapping[str, Mapping[str, float]], classes: Sequence[str],
                   names: Mapping[str, str] | None = None) -> Training:
        """A training from per-case Dice (case -> class key -> Dice) of ``classes``; ``names``: class key -> name."""
        case_names = tuple(sorted(cases))
        matrix = np.array([[cases[c].get(k, math.nan) for k in classes] for c in case_names],
                          dtype=float).reshape(len(case_names), len(classes))
        means = {(names or {}).get(k, k): float(m) for k, m in zip(classes, _nanmean(matrix, axis=0))}
        return cls(key, means, matrix, case_names)

    @property
    def foreground(self) -> float:
        """Mean over the classes with a finite mean Dice; NaN when none has one."""
        return mean_std(self.class_dice.values())[0]

    @property
    def stalled_classes(self) -> list[str]:
        return [k for k, v in self.class_dice.items() if math.isfinite(v) and v < STALL_DICE]

    @property
    def stalled(self) -> bool:
        return bool(self.stalled_classes)


def _draws(rng: np.random.Generator, m: int, training: Training, reference: Training | None = None) -> np.ndarray:
    """``m`` case-resampled values of one unit: a training's foreground Dice, or a pair's difference."""
    def foreground(cases: np.ndarray) -> np.ndarray:  # (..., n_cases, n_classes): class means, then their mean
        return _nanmean(_nanmean(cases, axis=-2), axis=-1)

    cases = training.cases
    if reference is not None:
        if cases is not None and reference.cases is not None and len(cases) and \
                training.case_names == reference.case_names:  # the same cases: one draw for both
            rows = rng.integers(0, len(cases), size=(m, len(cases)))
            return foreground(cases[rows]) - foreground(reference.cases[rows])
        return _draws(rng, m, training) - _draws(rng, m, reference)
    if cases is None or len(cases) == 0:
        return np.full(m, training.foreground)
    return foreground(cases[rng.integers(0, len(cases), size=(m, len(cases)))])


def hierarchical_bootstrap_ci(units: Sequence[tuple[Training, Training | None]], n_resamples: int = N_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile CI of the mean over ``units`` (training, reference or None): units with replacement, then the
    cases inside each drawn unit; NaN below ``MIN_TRAININGS`` units."""
    if len(units) < MIN_TRAININGS:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(units), size=(n_resamples, len(units)))
    values = np.empty(picked.shape)
    for index, (training, reference) in enumerate(units):
        values[picked == index] = _draws(rng, int((picked == index).sum()), training, reference)
    low, high = np.nanpercentile(_nanmean(values, axis=1), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def pair_test(differences: Sequence[float]) -> tuple[float, str]:
    """(two-sided p, test): Wilcoxon signed-rank with >= ``MIN_SIGNED_RANK`` non-zero differences, else the exact
    sign test (ties dropped; p = 1 when all tie)."""
    from scipy.stats import binomtest

    d = np.asarray(differences, dtype=float)
    nonzero = d[np.abs(d) >= TIE_TOLERANCE]
    if len(d) == 0:
        return math.nan, ""
    if len(nonzero) >= MIN_SIGNED_RANK:
        return wilcoxon_p(d), "Wilcoxon"
    return (float(binomtest(int(np.sum(nonzero > 0)), len(nonzero)).pvalue) if len(nonzero) else 1.0), "sign test"


def stall_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion k/n; (NaN, NaN) for n = 0."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact") if n else None
    return (float(ci.low), float(ci.high)) if ci else (math.nan, math.nan)


@dataclass(eq=False)
class TrainerTrainings:
    """The training-level statistics of one trainer; ``pairs``: (its training, the reference's of the same key)."""

    name: str
    trainings: list[Training]
    reference: str | None = None  # the trainer it is paired with; None for the reference itself
    pairs: list[tuple[Training, Training]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n, self.stalled = len(self.trainings), sum(t.stalled for t in self.trainings)
        self.stall_ci = stall_interval(self.stalled, self.n)
        self.values = [v for t in self.trainings if math.isfinite(v := t.foreground)]  # finite foreground Dice
        self.mean, self.sd, _ = mean_std(self.values)
        self.mean_ci = hierarchical_bootstrap_ci([(t, None) for t in self.trainings if math.isfinite(t.foreground)])
        self.differences = np.array([t.foreground - r.foreground for t, r in self.pairs], dtype=float)
        self.difference = float(self.differences.mean()) if self.pairs else math.nan
        self.difference_ci = hierarchical_bootstrap_ci(self.pairs)
        self.p_value, self.test = pair_test(self.differences)


def summarize_trainings(trainers: Mapping[str, Sequence[Training]], reference: str | None) -> list[TrainerTrainings]:
    """The statistics of every trainer (in the order given), each paired by training key with ``reference``."""
    reference_by_key = {t.key: t for t in trainers.get(reference, ()) if math.isfinite(t.foreground)}
    result = []
    for name, trainings in trainers.items():
        keys = [t.key for t in trainings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"trainer {name}: two trainings named {sorted(k for k in keys if keys.count(k) > 1)[0]}; "
                             f"give each (fold, seed) once")
        paired = reference in trainers and name != reference
        pairs = [(t, reference_by_key[t.key]) for t in trainings if math.isfinite(t.foreground)
                 and t.key in reference_by_key] if paired else []
        result.append(TrainerTrainings(name, list(trainings), reference if paired else None, pairs))
    return result


# ----------------------------------------------------------------------------------------------- reporting
def format_p(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def format_interval(low: float, high: float, signed: bool = False, digits: int = 4) -> str:
    sign = "+" if signed else ""
    return "n/a" if math.isnan(low) else f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def table_rows(groups: Sequence[Group], group_columns: Sequence[str] = ()) -> list[list[str]]:
    """Header and one row per (group, trainer): trainings, stalled k/n [95% CI], foreground Dice mean ± SD [95% CI],
    difference to the reference [95% CI], pairs, p (test)."""
    rows = [[*group_columns, "trainer", "trainings", "stalled k/n [95% CI]", "foreground Dice mean ± SD [95% CI]",
             "difference to reference [95% CI]", "pairs", "p (test)"]]
    for cells, summaries in groups:
        for s in summaries:
            dice = "-" if not s.values else f"{s.mean:.4f} (one training)" if len(s.values) == 1 else \
                f"{s.mean:.4f} ± {s.sd:.4f} {format_interval(*s.mean_ci)}"
            paired = [f"{s.difference:+.4f} {format_interval(*s.difference_ci, signed=True)}", str(len(s.pairs)),
                      f"{format_p(s.p_value)} ({s.test})"] if s.pairs else ["-", "0", ""]
            if s.reference is None:
                paired = ["reference" if any(o.reference == s.name for o in summaries) else "-", "", ""]
            rows.append([*cells, s.name, str(s.n), f"{s.stalled}/{s.n} {format_interval(*s.stall_ci, digits=3)}"
                         if s.n else "-", dice, *paired])
    return rows


def per_training_rows(groups: Sequence[Group], group_columns: Sequence[str] = ()) -> list[list[str]]:
    """Header and one row per (group, trainer) listing each training's foreground Dice (stalled ones marked)."""
    def listed(t: Training) -> str:
        stalled = ", ".join(f"{k} {t.class_dice[k]:.3f}" for k in t.stalled_classes)
        return f"{t.key}: {t.foreground:.4f}" + (f" (stalled: {stalled})" if stalled else "")

    return [[*group_columns, "trainer", "foreground Dice per training"]] + [
        [*cells, s.name, "; ".join(map(listed, s.trainings))] for cells, summaries in groups for s in summaries]


def render(rows: list[list[str]], markdown: bool = False, separator_before: int | None = None) -> str:
    """``rows`` (header first) as aligned text (a dashed line before row ``separator_before``) or markdown."""
    if markdown:
        return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] +
                         ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]])
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(rows[0]))]
    lines = ["".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if separator_before is not None:
        lines.insert(separator_before, "-" * sum(widths))
    return "\n".join(lines)


def method_note(what: str) -> str:
    """How the training-level table is computed; ``what`` names a training (e.g. "one fold")."""
    return (f"A training is {what}. foreground Dice of a training: per foreground class the mean Dice over its "
            f"validation cases, then the mean over classes (classes absent from every case left out). stalled: some "
            f"foreground class has mean validation Dice < {STALL_DICE:g}; 95% CI exact (Clopper-Pearson). Difference: "
            f"mean over pairs of trainings with the same key of (trainer - reference). 95% CIs: hierarchical "
            f"bootstrap, {N_RESAMPLES} resamples (seed {BOOTSTRAP_SEED}) of the trainings, for the difference of the "
            f"pairs of trainings, then of the validation cases inside each (one draw for both trainings of a pair); a "
            f"training without per-case Dice enters with its own value; n/a below {MIN_TRAININGS} trainings. p: "
            f"two-sided Wilcoxon signed-rank over the pair differences with >= {MIN_SIGNED_RANK} non-zero ones, else "
            f"the exact sign test (ties |d| < {TIE_TOLERANCE:g} dropped).")


# ----------------------------------------------------------------------------------------------- figures
def new_figure(width: float, height: float) -> Figure:
    """A figure with constrained layout on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def mean_whisker(ax: Axes, x: float, mean: float, ci: tuple[float, float]) -> None:
    """The mean as a black diamond at ``x``, its CI as a whisker (none where n/a)."""
    ax.errorbar([x], [mean], yerr=None if math.isnan(ci[0]) else [[mean - ci[0]], [ci[1] - mean]], fmt="D",
                color="black", markersize=5, capsize=4, lw=1.5)


def trainings_figure(groups: Sequence[tuple[str, Sequence[TrainerTrainings]]], title: str) -> Figure:
    """One panel per group (e.g. budget and fraction): per trainer each training's foreground Dice as a dot
    (stalled: red cross) and the mean over trainings with its 95% hierarchical bootstrap CI as a whisker."""
    import textwrap

    from matplotlib.lines import Line2D

    width = max(7.5, sum(1.2 + 1.1 * len(summaries) for _, summaries in groups))
    fig = new_figure(width, 5.6)
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True,
                        gridspec_kw={"width_ratios": [max(1, len(s)) for _, s in groups]})[0]
    jitter = np.random.default_rng(0)  # fixed: the same figure on every run
    colors: dict[str, str] = {}
    for ax, (label, summaries) in zip(axes, groups):
        for x, s in enumerate(summaries):
            color = colors.setdefault(s.name, TRAINER_COLORS[len(colors) % len(TRAINER_COLORS)])
            values = np.array([t.foreground for t in s.trainings])
            xs = x - 0.12 + jitter.uniform(-0.1, 0.1, len(values))
            stalled = np.array([t.stalled for t in s.trainings], dtype=bool)
            ax.scatter(xs[~stalled], values[~stalled], s=22, color=color, alpha=0.8, linewidths=0)
            ax.scatter(xs[stalled], values[stalled], s=40, color="tab:red", marker="x")
            if s.values:
                mean_whisker(ax, x + 0.2, s.mean, s.mean_ci)
        ax.set_xticks(range(len(summaries)), [f"{s.name}\nn={s.n}, stalled {s.stalled}" for s in summaries],
                      fontsize="small")
        ax.set(xlim=(-0.6, len(summaries) - 0.4), ylim=(0, 1))
        ax.set_title(label, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("foreground Dice of a training")
    handles = [Line2D([], [], ls="", marker="o", color="grey", label="one training"),
               Line2D([], [], ls="", marker="x", color="tab:red", label=f"stalled training (a class < {STALL_DICE:g})"),
               Line2D([], [], ls="-", marker="D", color="black",
                      label="mean over trainings, 95% hierarchical bootstrap CI")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if width < 10 else 3, fontsize="small",
               frameon=False)
    fig.suptitle(textwrap.fill(title, int(width * 11)), fontsize="medium")
    return fig
