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
    assert c.uafs.decoder and not c.uafs.encoder and c.uafs.num_branches == 2 and c.uafs.kernel_size == 3
    assert (c.pdcr.encoder_weight, c.pdcr.cross_weight, c.pdcr.decoder_weight) == (0.01, 0.01, 0.0)
    assert c.pdcr.encoder_stages == (2, 3) and c.pdcr.windows == "rf" and c.pdcr.temperature == 0.5
    assert c.pdcr.anchor_spacing == 32
    assert nnUNetTrainerCSSE_HPDCR.csse_defaults.pdcr.windows == (5, 7, 9)
    assert not nnUNetTrainerUAFS.csse_defaults.uses_pdcr and nnUNetTrainerUAFS.csse_defaults.uafs.decoder
    assert nnUNetTrainerPDCR.csse_defaults.uses_pdcr and not nnUNetTrainerPDCR.csse_defaults.uafs.decoder


def test_authors_trainer_sets_both_authors_settings_and_the_loss_reads_the_variant():
    from nnunet_csse.training import nnUNetTrainerCSSE_authors

    c = nnUNetTrainerCSSE_authors.csse_defaults
    assert (c.pdcr.variant, c.uafs.norm) == ("authors", "batch")
    assert c.pdcr.variant == "authors" and nnUNetTrainerCSSE.csse_defaults.pdcr.variant == "clean"
    assert dataclasses_replace_equal(c, nnUNetTrainerCSSE.csse_defaults)


def dataclasses_replace_equal(a: CSSEConfig, b: CSSEConfig) -> bool:
    """a equals b but for the two authors' settings."""

    return a.replaced(pdcr_variant=b.pdcr.variant, uafs_norm=b.uafs.norm) == b


def test_plans_overrides_apply_and_lists_become_tuples():
    config = config_from_plans(nnUNetTrainerCSSE.csse_defaults,
                               {"csse": {"pdcr_temperature": 1.0, "pdcr_windows": [3, 5]}}, "3d_fullres")
    assert config.pdcr.temperature == 1.0 and config.pdcr.windows == (3, 5)
    assert config.pdcr.encoder_weight == 0.01  # untouched keys keep the trainer's defaults
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


def test_pair_mode_is_validated():
    assert CSSEConfig.of(pdcr_pairs="batch").pdcr.pairs == "batch"
    with pytest.raises(ValueError, match="'pdcr_pairs' must be one of \\['sample', 'batch'\\]"):
        CSSEConfig.of(pdcr_pairs="image")


def test_hierarchical_windows_must_fit_the_patch():
    hpdcr = nnUNetTrainerCSSE_HPDCR.csse_defaults
    hpdcr.check_windows_fit((40, 56, 40))
    nnUNetTrainerCSSE.csse_defaults.check_windows_fit((8, 8))  # RF windows are clipped, never too large
    with pytest.raises(ValueError, match=r"'pdcr_windows' \[5, 7, 9\] has window\(s\) \[9\] larger than the patch "
                                         r"\[8, 64\].*configuration '2d'"):
        hpdcr.check_windows_fit((8, 64), "2d")


def test_a_misspelt_plans_key_names_the_setting_it_is_close_to():
    expected = r"unknown csse setting\(s\) \['uafs_kernal_size'\].*did you mean 'uafs_kernel_size'"
    with pytest.raises(ValueError, match=expected):
        CSSEConfig().with_overrides({"uafs_kernal_size": 5}, source="plans")
