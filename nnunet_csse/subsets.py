"""Limited-data subsets: which training cases of a fold a run on a fraction of the data keeps.

Used by ``nnunet-csse split`` (:mod:`nnunet_csse.tools.splits`) and through it by the accuracy benchmark; numpy
only. See docs/ for the limited-data workflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def check_fraction(fraction: object, source: str = "--fraction") -> float:
    """``fraction`` as a float in (0, 1]; a ValueError naming ``source`` otherwise (NaN, bools and text too)."""
    try:
        if isinstance(fraction, bool):
            raise TypeError
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be in (0, 1], got {fraction!r}: give a number such as 0.25") from None
    if not 0.0 < value <= 1.0:  # also rejects nan
        raise ValueError(f"{source} must be in (0, 1], got {fraction!r}: give a number such as 0.25")
    return value


def limited_size(fraction: float, n: int) -> int:
    """``round(fraction * n)``, rounded half up, at least 1 and at most ``n``."""
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def training_subset(train_keys: Sequence[str], fraction: float, fold: int, seed: int = 0) -> list[str]:
    """The ``limited_size(fraction, n)`` training cases of ``fold`` a limited-data run keeps, in their given order.

    The sorted candidates are permuted with ``numpy.random.RandomState([seed, fold])`` and the first ones kept, so
    the subset depends on the fold's cases, the fraction, the fold index and ``seed`` only, and for one seed a
    smaller fraction gives a subset of a larger one.
    """
    fraction = check_fraction(fraction)
    candidates = sorted(str(k) for k in train_keys)
    if not candidates:
        raise ValueError(f"fold {fold} has no training cases to subsample")
    order = np.random.RandomState([int(seed) % 2**32, int(fold)]).permutation(len(candidates))
    keep = {candidates[i] for i in order[: limited_size(fraction, len(candidates))]}
    return [str(k) for k in train_keys if str(k) in keep]


def fraction_tag(fraction: float) -> str:
    """The percentage of a fraction as a name part: ``frac25`` for 0.25, ``frac05``, ``frac100``, ``frac12p5``."""
    percent = round(check_fraction(fraction) * 100, 6)
    text = f"{int(percent):02d}" if float(percent).is_integer() else f"{percent:g}".replace(".", "p")
    return f"frac{text}"
