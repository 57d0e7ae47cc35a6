"""Uncertainty maps in one sliding-window pass: the logits and H equal the former two-pass prediction, and H is
the one the UAFS block computed in that forward (its branch runs once per network call)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.uafs import keeping_uncertainty, normalized_entropy
from nnunet_csse.network import build_csse_network
from nnunet_csse.uncertainty import (
    LogitsAndUncertainty,
    csse_network_of,
    label_color,
    label_names,
    overlay_figure,
    overlay_title,
    predict_logits_and_uncertainty,
    predict_uncertainty,
    save_overlay,
)
from tests.toy_plans import PLAIN, REQ_IMPORT, arch_kwargs

PATCH = 16
NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def csse_net(dim: int, seed: int = 0):
    torch.manual_seed(seed)
    net = build_csse_network(PLAIN, arch_kwargs(dim, PLAIN), REQ_IMPORT, 1, NUM_CLASSES,
                             CSSEConfig.of(uafs_decoder=True), False)
    return net.eval()


def make_predictor(dim: int, use_mirroring: bool, folds: int = 2) -> nnUNetPredictor:
    """An nnU-Net predictor as the CLI gets it (CPU, Gaussian tiles, step 0.5), ``folds`` different weight sets."""
    configuration = {
        "data_identifier": "toy", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [PATCH] * dim, "spacing": [1.0] * dim, "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
        "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch_kwargs(dim, PLAIN),
                         "_kw_requires_import": REQ_IMPORT},
    }
    plans = PlansManager({"dataset_name": "Dataset042_Toy", "plans_name": "toy", "label_manager": "LabelManager",
                          "configurations": {"c": configuration}, "transpose_forward": [0, 1, 2],
                          "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO"})
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii"}
    parameters = [csse_net(dim, seed).state_dict() for seed in range(folds)]
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=use_mirroring, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(csse_net(dim, 99), plans, plans.get_configuration("c"), parameters,
                                    dataset_json, "nnUNetTrainerCSSE", tuple(range(dim)))
    return predictor


def case_data(dim: int) -> torch.Tensor:
    """(1, *spatial) preprocessed data larger than the patch: several tiles (2d: several slices too)."""
    torch.manual_seed(1)
    return torch.randn(1, 24, 24, 20) if dim == 3 else torch.randn(1, 3, 24, 20)


class _ReferenceUncertaintyAsLogits(nn.Module):
    """The former second pass: the network's output replaced by H, recomputed by running the full-resolution
    UAFS branch again on the block's input, repeated over the K channels of the predictor's buffer."""

    def __init__(self, network, num_heads: int) -> None:
        super().__init__()
        self.network, self.num_heads = network, num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block, kept = self.network.decoder_uafs[-1], {}
        hook = block.register_forward_hook(lambda b, inputs, out: kept.update(h=b.uncertainty(inputs[0])))
        try:
            self.network(x)
        finally:
            hook.remove()
        return kept["h"].repeat(1, self.num_heads, *([1] * (x.ndim - 2)))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


def two_pass_reference(predictor: nnUNetPredictor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (K, *spatial), H (1, *spatial)) from two full predictions, as the command did before."""
    logits = predictor.predict_logits_from_preprocessed_data(data)
    network = predictor.network
    predictor.network = _ReferenceUncertaintyAsLogits(network, predictor.label_manager.num_segmentation_heads)
    try:
        h = predictor.predict_logits_from_preprocessed_data(data)[:1].float()
    finally:
        predictor.network = network
    return logits, h


def count_calls(module: nn.Module) -> tuple[list[int], object]:
    calls = [0]
    return calls, module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))


@pytest.mark.parametrize("use_mirroring", [False, True], ids=["plain", "mirrored"])
@pytest.mark.parametrize("dim", [2, 3])
def test_one_pass_equals_two_pass_prediction(dim, use_mirroring):
    predictor = make_predictor(dim, use_mirroring)
    data = case_data(dim)
    ref_logits, ref_h = two_pass_reference(predictor, data)
    logits, h = predict_logits_and_uncertainty(predictor, data)
    assert logits.shape == ref_logits.shape == (NUM_CLASSES, *data.shape[1:]) and logits.dtype == ref_logits.dtype
    assert h.shape == (1, *data.shape[1:]) and h.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)  # same network calls, same aggregation
    torch.testing.assert_close(h, ref_h)
    assert torch.equal(logits.argmax(0), ref_logits.argmax(0))
    assert 0 <= h.min() and h.max() <= 1 and h.std() > 0
    torch.testing.assert_close(predict_uncertainty(predictor, data), h, rtol=0, atol=0)
    # the predictor is left as it was: plain logits again
    assert not isinstance(predictor.network, LogitsAndUncertainty)
    assert predictor.label_manager.num_segmentation_heads == NUM_CLASSES
    torch.testing.assert_close(predictor.predict_logits_from_preprocessed_data(data), ref_logits, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_each_branch_runs_once_per_network_call(dim):
    """Mirroring, tiles and two folds: every UAFS branch runs exactly as often as the network (H is kept from the
    forward, never recomputed), whereas the two-pass reference ran the network twice and the full-res branch 3x."""
    predictor = make_predictor(dim, use_mirroring=True)
    network, data = predictor.network, case_data(dim)
    counters = [count_calls(block.branch) for block in network.decoder_uafs]
    net_calls, net_hook = count_calls(network)
    try:
        predict_logits_and_uncertainty(predictor, data)
        one_pass = net_calls[0], [calls[0] for calls, _ in counters]
        net_calls[0] = 0
        for calls, _ in counters:
            calls[0] = 0
        two_pass_reference(predictor, data)
        two_pass = net_calls[0], [calls[0] for calls, _ in counters]
    finally:
        net_hook.remove()
        for _, hook in counters:
            hook.remove()
    forwards = one_pass[0]
    tiles = len(predictor._internal_get_sliding_window_slicers(data.shape[1:]))
    assert forwards == tiles * 2 ** dim * 2  # tiles x mirror combinations x folds
    assert one_pass[1] == [forwards] * len(network.decoder_uafs)
    assert two_pass == (2 * forwards, [2 * forwards] * (len(network.decoder_uafs) - 1) + [3 * forwards])


@pytest.mark.parametrize("dim", [2, 3])
def test_wrapper_outputs_logits_then_the_forwards_entropy(dim):
    net = csse_net(dim)
    wrapper = LogitsAndUncertainty(net)
    block = net.decoder_uafs[-1]
    branch_outputs = []
    hook = block.branch.register_forward_hook(lambda m, i, out: branch_outputs.append(out))
    x = torch.randn(2, 1, *([PATCH] * dim))
    with torch.no_grad():
        out = wrapper(x)
        logits = net(x)
    hook.remove()
    assert out.shape == (2, NUM_CLASSES + 1, *([PATCH] * dim))
    torch.testing.assert_close(out[:, :NUM_CLASSES], logits, rtol=0, atol=0)
    torch.testing.assert_close(out[:, NUM_CLASSES:], normalized_entropy(branch_outputs[0]), rtol=0, atol=0)
    assert block.keep_uncertainty is False and block.kept_uncertainty is None  # nothing kept outside the wrapper
    state = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    wrapper.load_state_dict(state)  # the predictor loads fold weights through the wrapper
    torch.testing.assert_close(net.decoder_uafs[0].branch[0].weight, state["decoder_uafs.0.branch.0.weight"])


def test_keeping_uncertainty_is_opt_in_and_restored():
    net = csse_net(2)
    keys = set(net.state_dict())
    blocks = list(net.decoder_uafs)
    x = torch.randn(1, 1, PATCH, PATCH)
    with torch.no_grad():
        net(x)
        assert all(b.kept_uncertainty is None for b in blocks)  # off by default
        with keeping_uncertainty(blocks) as kept:
            net(x)
            shapes = [tuple(b.kept_uncertainty.shape) for b in kept]
            with keeping_uncertainty(blocks[-1:]):
                pass
            assert blocks[-1].keep_uncertainty and blocks[-1].kept_uncertainty is not None  # outer one restored
    assert shapes == [(1, 1, PATCH // 2 ** (len(blocks) - 1 - i), PATCH // 2 ** (len(blocks) - 1 - i))
                      for i in range(len(blocks))]
    assert all(not b.keep_uncertainty and b.kept_uncertainty is None for b in blocks)
    assert set(net.state_dict()) == keys  # plain attributes, no new state-dict entries


def test_models_without_uafs_are_refused():
    plain = get_network_from_plans(PLAIN, arch_kwargs(2, PLAIN), REQ_IMPORT, 1, 3)
    with pytest.raises(ValueError, match="no UAFS"):
        csse_network_of(SimpleNamespace(network=plain))
    pdcr_only = build_csse_network(PLAIN, arch_kwargs(2, PLAIN), REQ_IMPORT, 1, 3,
                                   CSSEConfig.of(pdcr_encoder_weight=0.01), False)
    with pytest.raises(ValueError, match="UAFS trainer"):
        csse_network_of(SimpleNamespace(network=pdcr_only))
    with pytest.raises(ValueError, match="no decoder UAFS block"):
        LogitsAndUncertainty(copy.deepcopy(pdcr_only))


def test_overlay_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 32, 32)).astype(np.float32)
    segmentation = (image > 0.5).astype(np.uint8)
    backend = plt.get_backend()
    save_overlay(image, segmentation, rng.uniform(size=image.shape), tmp_path / "overlay.png", "case")
    assert plt.imread(tmp_path / "overlay.png").shape[:2] == (440, 1200)
    assert plt.get_backend() == backend  # the library leaves pyplot's backend alone


def test_overlay_figure_legend_colorbar_equal_panels_and_title(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 32, 48)).astype(np.float32)  # wide slices: a colorbar taking width shrank H's panel
    segmentation = np.zeros(image.shape, np.uint8)
    segmentation[:, 4:12, 4:20], segmentation[:, 16:28, 24:40] = 1, 2
    title = overlay_title("case", tmp_path / "Dataset042_Toy" / "nnUNetTrainerCSSE__toy__c", (0, 1))
    assert title == "case: Dataset042_Toy nnUNetTrainerCSSE__toy__c, folds 0, 1 (ensemble)"
    assert overlay_title("case", tmp_path / "m" / "T__P__2d", ("all",)) == "case: T__P__2d, fold all"
    fig = overlay_figure(image, segmentation, rng.uniform(size=image.shape), title, {1: "a", 2: "b", 3: "absent"})
    fig.canvas.draw()
    assert fig.get_suptitle() == title
    panels = fig.axes[:3]
    heights = {round(ax.get_window_extent().height, 3) for ax in panels}
    widths = {round(ax.get_window_extent().width, 3) for ax in panels}
    assert len(heights) == 1 and len(widths) == 1  # all panels the same size
    (colorbar,) = [im.colorbar for im in panels[2].images if im.colorbar is not None]
    assert "normalized entropy" in colorbar.ax.get_ylabel() and colorbar.mappable.get_clim() == (0, 1)
    assert colorbar.ax.get_window_extent().height == pytest.approx(panels[2].get_window_extent().height, abs=1)
    # one contour per label in the slice, in the legend's colour
    legend = panels[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["1: a", "2: b", "3: absent"]
    contours = list(panels[1].collections)
    assert len(contours) == 2
    for value, contour, handle in zip((1, 2), contours, legend.legend_handles):
        assert handle.get_color() == label_color(value)
        assert tuple(contour.get_edgecolor()[0]) == pytest.approx(matplotlib.colors.to_rgba(label_color(value)))


def test_label_names_from_dataset_json():
    assert label_names({"labels": {"background": 0, "a": 1, "b": 2}}) == {1: "a", 2: "b"}
    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]},
               "regions_class_order": [1, 2, 3]}
    assert label_names(regions) == {1: "whole", 2: "core", 3: "enhancing"}
