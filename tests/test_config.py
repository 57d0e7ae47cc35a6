import pytest

from nnunet_csse.config import CSSEConfig, config_from_plans
from nnunet_csse.training import (
    nnUNetTrainerCSSE,
    nnUNetTrainerCSSE_HPDCR,
    nnUNetTrainerPDCR,
    nnUNetTrainerUAFS,
)


def test_trainer_defaults_follow_the_authors_3d_setup():
    c = nnUNetTrainerCSSE.csse_defaults
    assert c.uafs_decoder and not c.uafs_encoder and c.uafs_num_branches == 2 and c.uafs_kernel_size == 3
    assert (c.pdcr_encoder_weight, c.pdcr_cross_weight, c.pdcr_decoder_weight) == (0.01, 0.01, 0.0)
    assert c.pdcr_encoder_stages == (2, 3) and c.pdcr_windows == "rf" and c.pdcr_temperature == 0.5
    assert c.pdcr_anchor_spacing == 32
    assert nnUNetTrainerCSSE_HPDCR.csse_defaults.pdcr_windows == (5, 7, 9)
    assert not nnUNetTrainerUAFS.csse_defaults.uses_pdcr and nnUNetTrainerUAFS.csse_defaults.uafs_decoder
    assert nnUNetTrainerPDCR.csse_defaults.uses_pdcr and not nnUNetTrainerPDCR.csse_defaults.uafs_decoder


def test_authors_trainer_sets_both_authors_settings_and_the_loss_reads_the_variant():
    from nnunet_csse.training import nnUNetTrainerCSSE_authors

    c = nnUNetTrainerCSSE_authors.csse_defaults
    assert (c.pdcr_variant, c.uafs_norm) == ("authors", "batch")
    assert c.pdcr.variant == "authors" and nnUNetTrainerCSSE.csse_defaults.pdcr.variant == "clean"
    assert dataclasses_replace_equal(c, nnUNetTrainerCSSE.csse_defaults)


def dataclasses_replace_equal(a: CSSEConfig, b: CSSEConfig) -> bool:
    """a equals b but for the two authors' settings."""
    import dataclasses

    return dataclasses.replace(a, pdcr_variant=b.pdcr_variant, uafs_norm=b.uafs_norm) == b


def test_plans_overrides_apply_and_lists_become_tuples():
    config = config_from_plans(nnUNetTrainerCSSE.csse_defaults,
                               {"csse": {"pdcr_temperature": 1.0, "pdcr_windows": [3, 5]}}, "3d_fullres")
    assert config.pdcr_temperature == 1.0 and config.pdcr_windows == (3, 5)
    assert config.pdcr_encoder_weight == 0.01  # untouched keys keep the trainer's defaults
    assert config_from_plans(CSSEConfig(), {}) == CSSEConfig()
    assert config.to_json()["pdcr_windows"] == [3, 5]


@pytest.mark.parametrize("overrides,message", [
    ({"pdcr_temprature": 1.0}, "unknown csse setting"),
    ({"pdcr_encoder_weight": -0.1}, "pdcr_encoder_weight"),
    ({"pdcr_cross_weight": "0.01"}, "pdcr_cross_weight"),
    ({"pdcr_temperature": 0}, "pdcr_temperature"),
    ({"pdcr_windows": "receptive"}, "pdcr_windows"),
    ({"pdcr_windows": [5, 0]}, "pdcr_windows"),
    ({"uafs_kernel_size": 4}, "uafs_kernel_size"),
    ({"pdcr_variant": "author"}, "'pdcr_variant' must be one of \\['clean', 'authors'\\]"),
    ({"uafs_norm": "instance"}, "'uafs_norm' must be one of \\['plan', 'batch'\\]"),
    ({"uafs_num_branches": 0}, "uafs_num_branches"),
    ({"uafs_num_branches": 1}, r"'uafs_num_branches' must be an integer >= 2 \(the entropy of one channel is 0"),
    ({"pdcr_windows": []}, r"non-empty list of window sizes >= 1 voxel, got \[\]"),
    ({"uafs_decoder": 1}, "uafs_decoder"),
    ({"pdcr_encoder_stages": []}, "pdcr_encoder_stages"),
    ({"pdcr_encoder_stages": [2]}, "two"),
    ({"pdcr_min_anchors": 600}, "pdcr_min_anchors"),
    ({"pdcr_projection_channels": 0}, "pdcr_projection_channels"),
])
def test_bad_overrides_name_the_key_and_the_source(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        config_from_plans(nnUNetTrainerCSSE.csse_defaults, {"csse": overrides}, "3d_fullres")
    assert "3d_fullres" in str(info.value)


def test_overrides_must_be_an_object():
    with pytest.raises(ValueError, match="JSON object"):
        config_from_plans(CSSEConfig(), {"csse": [1, 2]}, "2d")


def test_anchor_grid_is_shared_and_bounded():
    from nnunet_csse.method.anchors import input_grid

    config = CSSEConfig(pdcr_min_anchors=8, pdcr_max_anchors=27)
    # 128^3, one layer at J = 4: spacing 32 -> 4 per axis = 64 > 27, so sparser
    grid = input_grid((128, 128, 128), [(4, 4, 4)], 32, 8, 27)
    assert 8 <= grid.num_anchors <= 27 and all(f % 4 == 0 and s % 4 == 0 for f, s in zip(grid.first, grid.spacing))
    # Hippocampus-sized patch at J = 4 and 8: centres on multiples of 8, denser than 32 to reach 8 anchors
    tiny = input_grid((40, 56, 40), [(4, 4, 4), (8, 8, 8)], 32, config.pdcr_min_anchors, config.pdcr_max_anchors)
    assert tiny.num_anchors >= 8 and all(f % 8 == 0 and s % 8 == 0 for f, s in zip(tiny.first, tiny.spacing))
    extent = zip(tiny.first, tiny.spacing, tiny.counts, (40, 56, 40))
    assert all(f + s * (n - 1) <= size - 1 for f, s, n, size in extent)


def test_pair_mode_is_validated():
    assert CSSEConfig(pdcr_pairs="batch").pdcr_pairs == "batch"
    with pytest.raises(ValueError, match="'pdcr_pairs' must be one of \\['sample', 'batch'\\]"):
        CSSEConfig(pdcr_pairs="image")


def test_hierarchical_windows_must_fit_the_patch():
    from nnunet_csse.training import check_windows_fit_patch

    hpdcr = nnUNetTrainerCSSE_HPDCR.csse_defaults
    check_windows_fit_patch(hpdcr, (40, 56, 40))
    check_windows_fit_patch(nnUNetTrainerCSSE.csse_defaults, (8, 8))  # RF windows are clipped, never too large
    with pytest.raises(ValueError, match=r"larger than the patch \[8, 64\]"):
        check_windows_fit_patch(hpdcr, (8, 64), "2d")


def test_a_misspelt_plans_key_names_the_setting_it_is_close_to():
    expected = r"unknown csse setting\(s\) \['uafs_kernal_size'\].*did you mean 'uafs_kernel_size'"
    with pytest.raises(ValueError, match=expected):
        CSSEConfig().with_overrides({"uafs_kernal_size": 5}, source="plans")
