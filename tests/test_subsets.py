"""The one limited-data subset function: the cases it keeps are pinned, so committed limited-data results stay valid."""

from __future__ import annotations

import pytest

from nnunet_csse import subsets

KEYS = [f"case_{i:02d}" for i in range(13)]


@pytest.mark.parametrize(("keys", "fraction", "fold", "seed", "expected"), [
    # computed with the subset code the committed results were trained with
    (KEYS, 0.25, 0, 0, ["case_02", "case_07", "case_10"]),
    (KEYS[::-1], 0.5, 3, 0, ["case_12", "case_10", "case_08", "case_07", "case_04", "case_01", "case_00"]),
    (KEYS[::-1], 0.25, 1, 7, ["case_07", "case_05", "case_03"]),
    (KEYS, 0.1, 4, 2, ["case_03"]),
])
def test_subset_is_what_the_committed_results_were_trained_on(keys, fraction, fold, seed, expected):
    assert subsets.training_subset(keys, fraction, fold, seed) == expected


def test_subsets_are_nested_at_least_one_and_whole_at_one():
    keys = [f"k{i}" for i in range(20)]
    quarter, half = subsets.training_subset(keys, 0.25, 2), subsets.training_subset(keys, 0.5, 2)
    assert len(quarter) == 5 and len(half) == 10 and set(quarter) <= set(half)
    assert len(subsets.training_subset(keys, 0.01, 0)) == 1
    assert subsets.training_subset(keys, 1.0, 3) == keys
    assert [subsets.limited_size(f, n) for f, n in ((0.25, 16), (0.25, 10), (0.3, 16), (0.01, 16), (1.0, 16))] == \
        [4, 3, 5, 1, 16]  # 2.5 rounds half up; at least one case


def test_fraction_tags():
    assert [subsets.fraction_tag(f) for f in (0.25, 0.05, 1, 0.125)] == ["frac25", "frac05", "frac100", "frac12p5"]


@pytest.mark.parametrize("value", [0, 1.5, -0.25, "nan", "a quarter", True, None])
def test_bad_fractions_are_refused_naming_the_source(value):
    with pytest.raises(ValueError, match=r"^--fractions must be in \(0, 1\], got .*: give a number"):
        subsets.check_fraction(value, "--fractions")
