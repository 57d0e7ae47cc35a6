"""``pdcr_variant: "authors"`` (docs/method.md section 4) against the loop oracle, quirk by quirk, in 2D and 3D."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from nnunet_csse.method.anchors import AnchorLayer, input_grid
from nnunet_csse.method.pdcr import (
    PDCREmbeddings,
    PDCRLoss,
    authors_composition_vectors,
    centered_windows,
    label_volume,
)
from nnunet_csse.method.receptive_field import ExactField, module_geometry
from nnunet_csse.method.settings import PDCRSettings
from tests.oracle.authors_loops import QUIRKS, reference_terms

AUTHORS = PDCRSettings(encoder_weight=0.01, cross_weight=0.01, variant="authors", anchor_spacing=24, min_anchors=1)
# patches where the centred grid and the grid from voxel 0 differ (72: centres 8, 32, 56 against 0, 24, 48)
PATCH = {2: (72, 40), 3: (40, 72, 32)}
CLASSES = 3


def anchor_layers(dim: int, settings: PDCRSettings) -> tuple[AnchorLayer, ...]:
    """The anchored encoder levels of a 4-stage plain U-Net encoder (two 3^d convolutions per stage, stride 2
    after stage 0), from the exact receptive fields of plain torch layers."""
    conv = (nn.Conv2d, nn.Conv3d)[dim - 2]
    field, layers = ExactField(dim), []
    for level in range(4):
        stage = nn.Sequential(conv(1, 1, 3, stride=1 if level == 0 else 2, padding=1), conv(1, 1, 3, padding=1))
        field = field.then(module_geometry(stage, dim))
        if level in settings.encoder_stages:
            layers.append(AnchorLayer(f"encoder{level}", level, field.stride, field))
    return tuple(layers)


def inputs(dim: int, seed: int = 0):
    """Float64 anchored maps, projected maps and a target with windows of every kind: background-free areas
    (classes by position), borders (full volume, short window), several classes."""
    g = torch.Generator().manual_seed(seed)
    layers = anchor_layers(dim, AUTHORS)
    assert [layer.receptive_field for layer in layers] == [(23,) * dim, (47,) * dim]  # the authors' 23 and 47
    patch = PATCH[dim]
    maps = [torch.randn(2, 4 * 2 ** i, *layer.feature_shape(patch), generator=g, dtype=torch.float64,
                        requires_grad=True) for i, layer in enumerate(layers)]
    projected = [torch.randn(2, 5, *layer.feature_shape(patch), generator=g, dtype=torch.float64,
                             requires_grad=True) for layer in layers]
    target = torch.randint(1, CLASSES, (2, 1, *patch), generator=g).double()
    target[(slice(None), slice(None), slice(0, patch[0] // 3))] = 0  # background only in the first third
    target[(0, 0, slice(None), slice(0, 6))] = 0
    return layers, maps, projected, target


def variant_terms(layers, maps, projected, target, config=AUTHORS):
    grid = config.input_grid(tuple(target.shape[2:]), layers)
    take = [grid.on_layer(layer.stride).take for layer in layers]
    hidden = PDCREmbeddings(grid, encoder=tuple(t(m) for t, m in zip(take, maps)),
                            cross=tuple(t(p) for t, p in zip(take, projected)))
    return PDCRLoss(layers, (), config, CLASSES)(hidden, target)


def oracle_terms(layers, maps, projected, target, quirks=QUIRKS, first=None, config=AUTHORS):
    dim = target.ndim - 2
    first = (0,) * dim if first is None else first
    return reference_terms(maps, projected, target, [layer.stride for layer in layers],
                           [layer.receptive_field for layer in layers], first, (config.anchor_spacing,) * dim,
                           config.temperature, CLASSES, quirks)


def values_and_gradients(terms, leaves):
    out = []
    for name in ("encoder", "cross"):
        grads = torch.autograd.grad(terms[name], leaves, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
        out.append((name, terms[name].detach(), grads))
    return out


def assert_same(a, b):
    for (name, va, ga), (_, vb, gb) in zip(a, b):
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12, msg=f"{name} value")
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-12, msg=f"{name} gradient")


def differs(a, b) -> bool:
    return any(not torch.allclose(va, vb, rtol=1e-6, atol=1e-9) or
               any(not torch.allclose(x, y, rtol=1e-4, atol=1e-9) for x, y in zip(ga, gb))
               for (_, va, ga), (_, vb, gb) in zip(a, b))


@pytest.mark.parametrize("dim", [2, 3])
def test_authors_variant_matches_the_loop_oracle_in_values_and_gradients(dim):
    layers, maps, projected, target = inputs(dim)
    leaves = maps + projected
    variant = values_and_gradients(variant_terms(layers, maps, projected, target), leaves)
    assert_same(variant, values_and_gradients(oracle_terms(layers, maps, projected, target), leaves))


@pytest.mark.parametrize("quirk", [*QUIRKS, "grid_from_zero"])
def test_each_quirk_is_reproduced(quirk):
    """The variant matches the oracle with every quirk on, and this input tells that oracle apart from the one
    without ``quirk``: a variant that dropped the quirk fails here."""
    layers, maps, projected, target = inputs(3, seed=1)
    leaves = maps + projected
    variant = values_and_gradients(variant_terms(layers, maps, projected, target), leaves)
    assert_same(variant, values_and_gradients(oracle_terms(layers, maps, projected, target), leaves))
    if quirk == "grid_from_zero":
        patch = tuple(target.shape[2:])
        centred = input_grid(patch, [layer.stride for layer in layers], AUTHORS.anchor_spacing, 1, 512).first
        assert centred != (0, 0, 0)
        without = oracle_terms(layers, maps, projected, target, first=centred)
    else:
        without = oracle_terms(layers, maps, projected, target, quirks=set(QUIRKS) - {quirk})
    assert differs(variant, values_and_gradients(without, leaves))


def test_clean_variant_matches_the_oracle_without_quirks_at_another_temperature():
    """The clean loss with tau = 0.7 equals the oracle without quirks at 0.7 and differs from 0.5: the configured
    temperature reaches the loss."""
    config = replace(AUTHORS, variant="clean", temperature=0.7)
    layers, maps, projected, target = inputs(2, seed=3)
    first = config.input_grid(tuple(target.shape[2:]), layers).first
    leaves = maps + projected
    clean = values_and_gradients(variant_terms(layers, maps, projected, target, config), leaves)
    oracle = values_and_gradients(oracle_terms(layers, maps, projected, target, (), first, config), leaves)
    for (name, va, ga), (_, vb, gb) in zip(clean, oracle):  # float32 composition vectors in the clean loss
        torch.testing.assert_close(va, vb, rtol=1e-6, atol=1e-8, msg=name)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-9, msg=name)
    at_half = replace(config, temperature=0.5)
    assert differs(clean, values_and_gradients(oracle_terms(layers, maps, projected, target, (), first, at_half),
                                               leaves))


def test_classes_by_position_drops_the_lowest_present_class():
    """A window of classes 1 and 2 only puts class 2 in entry 0 (class 1 is lost), a window of one class is all
    zero; division by the full window volume."""
    target = torch.zeros(1, 1, 9, 9)
    target[0, 0, :, 5:] = 1
    target[0, 0, 6:, 5:] = 2
    volume = label_volume(target, 3)
    # 3 x 3 windows at (2, 7) and (6, 7); the far border cuts columns 6..8 to 6..7 (one voxel short)
    comp, valid = authors_composition_vectors(volume, centered_windows([[2, 6], [7]], [3, 3]))
    assert valid.all()
    zero = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(comp[0, 0], zero)  # class 1 only: the one present class is dropped
    # rows 5..7 x columns 6..7: two voxels of class 1, four of class 2: class 2 lands in entry 0, over 9 voxels
    torch.testing.assert_close(comp[0, 1], torch.tensor([4 / 9, 0.0, 0.0], dtype=torch.float64))


def test_authors_variant_refuses_region_training():
    layers = anchor_layers(2, AUTHORS)
    with pytest.raises(ValueError, match="region"):
        PDCRLoss(layers, (), AUTHORS, 2, has_regions=True)
