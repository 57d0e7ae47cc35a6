"""PDCRLoss (all terms of a step) and the trainer's loss wrapper, on real CSSE networks."""

import math

import pytest
import torch

from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.pdcr import PDCRLoss, centered_windows, composition_vectors, label_volume, pdcr_pair_loss
from nnunet_csse.network import build_csse_network
from nnunet_csse.training import CSSELoss
from tests.toy_plans import PLAIN, REQ_IMPORT, RESENC, arch_kwargs

CSSE = CSSEConfig.of(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


def setup(dim, config=CSSE, arch=PLAIN, classes=3, size=32, batch=2, seed=0):
    torch.manual_seed(seed)
    net = build_csse_network(arch, arch_kwargs(dim, arch), REQ_IMPORT, 1, classes, config, True)
    net.return_hidden = True
    x = torch.randn(batch, 1, *([size] * dim))
    target = torch.randint(0, classes, (batch, 1, *([size] * dim))).float()
    loss = PDCRLoss(net.encoder_anchor_layers, net.decoder_anchor_layers, config.pdcr, classes)
    return net, x, target, loss


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", [PLAIN, RESENC])
def test_terms_finite_and_gradients_reach_anchored_layers_and_heads(dim, arch):
    config = CSSE.replaced(pdcr_decoder_weight=0.01)  # decoder levels 1 and 2
    net, x, target, loss = setup(dim, config, arch)
    _, hidden = net(x)
    terms = loss(hidden, target)
    assert set(terms) == {"encoder", "cross", "decoder"}
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    for proj in net.pdcr_projections:
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    for layer in net.encoder_anchor_layers:  # the stage that produced the anchored map
        stage = net.encoder.stages[layer.level]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters())


def test_encoder_term_is_mean_over_layers_of_direct_evaluation():
    """PDCRLoss wiring (grid, windows = receptive fields, masks) against the pieces called by hand."""
    net, x, target, loss = setup(3)
    _, hidden = net(x)
    terms = loss(hidden, target)
    sat = label_volume(target, 3)
    per_layer, comps = [], []
    grid = CSSE.pdcr.input_grid((32, 32, 32), net.anchor_layers)
    for layer, feats in zip(net.encoder_anchor_layers, hidden.encoder):
        # encoder fields: R voxels centred on the anchor's input voxel J * t
        centers = grid.on_layer(layer.stride).centers(layer.stride)
        comp, ok = composition_vectors(sat, centered_windows(centers, layer.receptive_field))
        comps.append((comp, ok))
        per_layer.append(pdcr_pair_loss(feats, comp, ok, feats, comp, ok, 0.5))
    torch.testing.assert_close(terms["encoder"], (per_layer[0] + per_layer[1]) / 2)
    (c1, v1), (c2, v2) = comps
    p1, p2 = hidden.cross
    torch.testing.assert_close(terms["cross"], pdcr_pair_loss(p1, c1, v1, p2, c2, v2, 0.5))


def test_hierarchical_windows_average_per_size_losses():
    config = CSSE.replaced(pdcr_windows=(5, 7, 9))
    net, x, target, loss = setup(2, config)
    _, hidden = net(x)
    terms = loss(hidden, target)
    sat = label_volume(target, 3)
    per_layer = []
    grid = config.pdcr.input_grid((32, 32), net.anchor_layers)
    for layer, feats in zip(net.encoder_anchor_layers, hidden.encoder):
        centers = grid.on_layer(layer.stride).centers(layer.stride)
        sizes = [pdcr_pair_loss(feats, *composition_vectors(sat, centered_windows(centers, (w, w))),
                                feats, *composition_vectors(sat, centered_windows(centers, (w, w))), 0.5)
                 for w in (5, 7, 9)]
        per_layer.append(sum(sizes) / 3)
    torch.testing.assert_close(terms["encoder"], sum(per_layer) / 2)


def test_regions_and_ignore_label_are_supported():
    net, x, _, _ = setup(2)
    _, hidden = net(x)
    regions = torch.rand(2, 3, 32, 32) > 0.5  # 2 regions + nnU-Net's ignore channel
    loss = PDCRLoss(net.encoder_anchor_layers, (), CSSE.pdcr, 2, has_regions=True, region_ignore_channel=True)
    assert all(torch.isfinite(t) for t in loss(hidden, regions).values())
    labels = torch.randint(0, 4, (2, 1, 32, 32)).float()  # label 3 = ignore
    loss = PDCRLoss(net.encoder_anchor_layers, (), CSSE.pdcr, 3, ignore_label=3)
    assert all(torch.isfinite(t) for t in loss(hidden, labels).values())
    fully_ignored = torch.full((2, 1, 32, 32), 3.0)
    terms = loss(hidden, fully_ignored)
    assert all(t.item() == 0.0 for t in terms.values())


def test_target_with_another_shape_is_rejected():
    net, x, target, loss = setup(2)
    _, hidden = net(x)
    with pytest.raises(ValueError, match="same spatial shape"):
        loss(hidden, target[..., :16, :16])


class _DiceStandIn(torch.nn.Module):
    def forward(self, output, target):
        return sum(o.float().mean() for o in output) * 0 + output[0].float().pow(2).mean()


def test_wrapper_adds_weighted_terms_and_skips_non_finite_ones():
    net, x, target, pdcr = setup(2)
    wrapper = CSSELoss(_DiceStandIn(), pdcr, {"encoder": 0.01, "cross": 0.02, "decoder": 0.0})
    output = net(x)
    seg, hidden = output
    terms = pdcr(hidden, target)
    expected = _DiceStandIn()(seg, [target]) + 0.01 * terms["encoder"] + 0.02 * terms["cross"]
    torch.testing.assert_close(wrapper(output, [target]), expected)
    means, skipped = wrapper.epoch_statistics()
    assert skipped == {"encoder": 0, "cross": 0}
    torch.testing.assert_close(torch.tensor(means["cross"]), terms["cross"].detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(wrapper(seg, [target]), _DiceStandIn()(seg, [target]))  # validation path

    class NonFiniteCross(PDCRLoss):  # e.g. an overflow inside the term while the features are fine
        def forward(self, hidden, target):
            terms = super().forward(hidden, target)
            return dict(terms, cross=terms["cross"] * float("nan"))  # NaN inside the graph, too

    wrapper.pdcr = NonFiniteCross(net.encoder_anchor_layers, (), CSSE.pdcr, 3)
    value = wrapper(output, [target])
    assert torch.isfinite(value)
    means, skipped = wrapper.epoch_statistics()
    assert skipped == {"encoder": 0, "cross": 1}
    assert int(wrapper.counts["cross"]) == 1 and int(wrapper.counts["encoder"]) == 2
    value.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["pdcr_projections.0.weight"].abs().sum() == 0  # the skipped term's heads got a zero gradient
    assert math.isfinite(means["cross"]) and math.isfinite(means["encoder"])


@pytest.mark.parametrize("windows", ["rf", (5, 7)], ids=["RF-PDCR", "H-PDCR"])
def test_loss_traces_into_one_graph_with_equal_values_and_gradients(windows):
    """The trainers compile PDCRLoss when nnU-Net compiles (CUDA): one graph, no break (fullgraph), and the
    traced forward and backward (the closed-form one included) equal eager mode. aot_eager traces exactly what
    inductor would compile, without generating kernels (nnU-Net never compiles on CPU)."""
    config = CSSE.replaced(pdcr_decoder_weight=0.01, pdcr_windows=windows)
    net, x, target, loss = setup(3, config)
    target[:, :, :4] = 3  # an ignore label
    loss = PDCRLoss(net.encoder_anchor_layers, net.decoder_anchor_layers, config.pdcr, 3, ignore_label=3)
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (loss, compiled):
        net.zero_grad()
        _, hidden = net(x)
        terms = fn(hidden, target)
        sum(terms.values()).backward()
        results.append((terms, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (eager_terms, eager_grads), (compiled_terms, compiled_grads) = results
    assert eager_terms.keys() == compiled_terms.keys() == {"encoder", "cross", "decoder"}
    for name in eager_terms:
        torch.testing.assert_close(compiled_terms[name], eager_terms[name], rtol=1e-6, atol=1e-7)
    assert eager_grads.keys() == compiled_grads.keys() and "pdcr_projections.0.weight" in eager_grads
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-5, atol=1e-7)


def _encoder_maps(net, x):
    """Hidden outputs plus the encoder stage outputs (what the network anchors), by level."""
    maps = {}
    hooks = [stage.register_forward_hook(lambda m, inp, out, i=i: maps.__setitem__(i, out))
             for i, stage in enumerate(net.encoder.stages)]
    _, hidden = net(x)
    for hook in hooks:
        hook.remove()
    return hidden, maps


@pytest.mark.parametrize("term,variant", [("encoder", "clean"), ("cross", "clean"), ("cross", "authors")])
def test_each_term_alone_trains_the_anchored_encoder_stages(term, variant):
    """With the other terms off, the term still reaches encoder stages 2 and 3 (a detached encoder feature would
    pass a test that also ran decoder PDCR, which reaches the encoder through the skips; projections fed detached
    anchors would train the cross term's heads alone)."""
    config = CSSEConfig.of(pdcr_variant=variant, **{f"pdcr_{term}_weight": 0.01})
    net, x, target, loss = setup(3, config)
    _, hidden = net(x)
    assert set(hidden.by_term()) == {term}
    loss(hidden, target)[term].backward()
    for level in (2, 3):
        grads = [p.grad for p in net.encoder.stages[level].parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, level
    decoder_own = [*net.decoder.stages.parameters(), *net.decoder.transpconvs.parameters(),
                   *net.decoder.seg_layers.parameters()]  # (nnU-Net's decoder also holds the encoder)
    assert all(p.grad is None for p in decoder_own)  # nothing else was asked for


@pytest.mark.parametrize("pairs", ["sample", "batch"])
@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_terms_match_the_loop_reference(pairs, mode):
    """Value and gradient of the encoder and cross terms against the authors'-style loops (regions: one composition
    entry per region, distance = mean per-region total variation; "batch": one anchor set over the batch)."""
    config = CSSE.replaced(pdcr_pairs=pairs)
    net, x, labels, _ = setup(3, config, batch=3)
    if mode == "regions":
        gen = torch.Generator().manual_seed(3)
        # 3 regions (distance scale 1/3, not the label mode's 1/2) + nnU-Net's ignore channel
        target = (torch.rand((3, 4, 32, 32, 32), generator=gen) > 0.6).float()
        kwargs, classes = {"has_regions": True, "region_ignore_channel": True}, 3
        ref_kwargs = {"regions": True, "region_ignore_channel": True}
    else:
        target = labels.clone()
        target[0, :, :12] = 3  # ignore label
        kwargs, classes, ref_kwargs = {"ignore_label": 3}, 3, {"ignore_label": 3}
    loss = PDCRLoss(net.encoder_anchor_layers, (), config.pdcr, classes, **kwargs)
    hidden, maps = _encoder_maps(net, x)
    terms = loss(hidden, target)
    from tests.oracle.pdcr_loops import reference_terms

    expected = reference_terms(maps, net.encoder_anchor_layers, net.pdcr_projections, config.pdcr, target, classes,
                               **ref_kwargs)
    assert terms.keys() == expected.keys() == {"encoder", "cross"}
    for name in terms:
        torch.testing.assert_close(terms[name], expected[name], rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(sum(t.values()), net.pdcr_projections[0].weight, retain_graph=True)[0]
             for t in (terms, expected)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_batch_pairs_differ_from_per_sample_pairs():
    net, x, target, _ = setup(3, batch=2)
    _, hidden = net(x)
    per_sample = PDCRLoss(net.encoder_anchor_layers, (), CSSE.pdcr, 3)(hidden, target)
    batch_settings = CSSE.replaced(pdcr_pairs="batch").pdcr
    batch = PDCRLoss(net.encoder_anchor_layers, (), batch_settings, 3)(hidden, target)
    assert all(abs(batch[t].item() - per_sample[t].item()) > 1e-4 for t in per_sample)


def test_pdcr_reads_the_full_resolution_target_of_deep_supervision():
    """nnU-Net passes one target per deep-supervision output; PDCR's compositions come from the first one."""
    net, x, target, pdcr = setup(3)
    output = net(x)
    seg, hidden = output
    targets = [target, target[:, :, ::2, ::2, ::2], target[:, :, ::4, ::4, ::4]]
    wrapper = CSSELoss(_DiceStandIn(), pdcr, {"encoder": 0.01, "cross": 0.02})
    terms = pdcr(hidden, target)
    expected = _DiceStandIn()(seg, targets) + 0.01 * terms["encoder"] + 0.02 * terms["cross"]
    torch.testing.assert_close(wrapper(output, targets), expected)


def test_progress_pdcr_png_has_title_and_integer_epoch_ticks(tmp_path, monkeypatch):
    """CSSELocalLogger.plot_progress_png: its own figure (nnU-Net's progress.png skipped here, see test_e2e) with
    the model folder and fold in the title and integer epoch ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    from nnunet_csse.training import CSSELocalLogger

    monkeypatch.setattr(LocalLogger, "plot_progress_png", lambda self, output_folder: None)
    saved, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig) or savefig(fig, path, **kw))
    fold = tmp_path / "nnUNetTrainerCSSE__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    logger = CSSELocalLogger(("encoder", "cross"))
    for epoch in range(3):  # few epochs: matplotlib's default locator would put ticks at 0.25, 0.5, ...
        for key in logger.my_fantastic_logging:  # every key: the plot stops at the shortest list
            logger.log(key, {"pdcr_encoder": 4.0 - epoch, "pdcr_cross": 3.0 - epoch}.get(key, 0.5), epoch)
    logger.plot_progress_png(str(fold))
    assert plt.imread(fold / "progress_pdcr.png").shape[:2] == (500, 1200)
    (ax,) = saved[0].axes
    assert ax.get_title() == "PDCR terms per epoch: nnUNetTrainerCSSE__nnUNetPlans__3d_fullres, fold_0"
    assert type(ax.xaxis.get_major_locator()) is MaxNLocator  # not the default AutoLocator (a subclass)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
    assert ticks == [0, 1, 2]
    assert [line.get_label() for line in ax.lines] == ["pdcr_encoder", "pdcr_cross"]


def test_trainer_loss_weighs_each_term_with_its_own_weight():
    """Encoder 0.1 and cross 0.01 (unequal, so reading one weight for both terms shows)."""
    config = CSSE.replaced(pdcr_encoder_weight=0.1, pdcr_cross_weight=0.01)
    assert config.pdcr.term_weights == {"encoder": 0.1, "cross": 0.01}
    net, x, target, pdcr = setup(2, config)
    wrapper = CSSELoss(_DiceStandIn(), pdcr, config.pdcr.term_weights)
    output = net(x)
    terms = pdcr(output.hidden, target)
    assert not torch.isclose(terms["encoder"], terms["cross"])
    expected = _DiceStandIn()(output.segmentation, [target]) + 0.1 * terms["encoder"] + 0.01 * terms["cross"]
    torch.testing.assert_close(wrapper(output, [target]), expected)


def test_authors_heads_project_the_whole_map_then_sample_and_start_from_he_init():
    """pdcr_variant "authors": 1x1 conv + batch norm + ReLU over the whole map (batch statistics over every
    position), He-initialized (zero bias), anchors taken after; "clean": a linear head on the anchors."""
    config = CSSEConfig.of(pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01, pdcr_variant="authors")
    net, x, target, _ = setup(3, config)
    for head in net.pdcr_projections:
        conv, norm, relu = head
        assert isinstance(conv, torch.nn.Conv3d) and conv.kernel_size == (1, 1, 1)
        assert isinstance(norm, torch.nn.BatchNorm3d) and isinstance(relu, torch.nn.ReLU)
        assert conv.bias.abs().sum() == 0  # InitWeights_He zeroes the bias (PyTorch's default does not)
        expected_std = (2 / (1 + 1e-4)) ** 0.5 / conv.in_channels ** 0.5  # kaiming_normal_, a = 0.01
        assert abs(conv.weight.std().item() / expected_std - 1) < 0.25
    hidden, maps = _encoder_maps(net, x)
    grid = config.pdcr.input_grid(tuple(x.shape[2:]), net.anchor_layers)
    for head, layer, projected in zip(net.pdcr_projections, net.encoder_anchor_layers, hidden.cross):
        expected = grid.on_layer(layer.stride).take(head(maps[layer.level]))
        torch.testing.assert_close(projected, expected)
        if layer.level == 2:  # its anchors are a subset of the map's positions
            assert grid.num_anchors < maps[2][0, 0].numel()
            anchors = grid.on_layer(layer.stride).take(maps[2]).transpose(1, 2)[..., None, None]
            assert not torch.allclose(projected, head(anchors)[..., 0, 0].transpose(1, 2))  # BN saw the whole map
    clean = setup(3, config.replaced(pdcr_variant="clean"))[0]
    assert all(isinstance(h, torch.nn.Linear) for h in clean.pdcr_projections)
