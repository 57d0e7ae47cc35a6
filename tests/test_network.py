
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_csse.config import CSSEConfig
from nnunet_csse.network import CSSEUNet, build_csse_network
from tests.toy_plans import PLAIN, REQ_IMPORT, RESENC, arch_kwargs

CSSE = CSSEConfig.of(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


def build(arch, kw, config=CSSE, deep_supervision=True, classes=3):
    return build_csse_network(arch, kw, REQ_IMPORT, 1, classes, config, deep_supervision)


def base(arch, kw, deep_supervision=True, classes=3):
    return get_network_from_plans(arch, kw, REQ_IMPORT, 1, classes, deep_supervision=deep_supervision)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", [PLAIN, RESENC])
@pytest.mark.parametrize("config", [CSSEConfig.of(uafs_decoder=True), CSSE,
                                    CSSE.replaced(uafs_encoder=True, pdcr_decoder_weight=0.01)])
def test_same_outputs_shapes_as_nnunet(dim, arch, config):
    kw = arch_kwargs(dim, arch)
    x = torch.randn(2, 1, *([32] * dim))
    for ds in (True, False):
        ours, theirs = build(arch, kw, config, ds), base(arch, kw, ds)
        out, ref = ours(x), theirs(x)
        if ds:
            assert isinstance(out, list) and [o.shape for o in out] == [r.shape for r in ref]
        else:
            assert isinstance(out, torch.Tensor) and out.shape == ref.shape
        # every parameter of nnU-Net's network is there under the same key and shape
        ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
        assert all(ours_sd[k].shape == v.shape for k, v in theirs_sd.items())


@pytest.mark.parametrize("dim", [2, 3])
def test_deep_supervision_switch_and_checkpoint_loading(dim):
    kw = arch_kwargs(dim, PLAIN)
    trained = build(PLAIN, kw, deep_supervision=True).eval()
    x = torch.randn(1, 1, *([32] * dim))
    with torch.no_grad():
        full_res = trained(x)[0]
        inference = build(PLAIN, kw, deep_supervision=False).eval()
        inference.load_state_dict(trained.state_dict())  # strict: every head and UAFS/projection exists
        torch.testing.assert_close(inference(x), full_res)
        trained.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        torch.testing.assert_close(trained(x), full_res)


@pytest.mark.parametrize("dim", [2, 3])
def test_hidden_embeddings_only_in_training_with_flag(dim):
    net = build(PLAIN, arch_kwargs(dim, PLAIN))
    x = torch.randn(2, 1, *([32] * dim))
    assert isinstance(net(x), list)  # flag unset: plain nnU-Net output
    net.return_hidden = True
    seg, hidden = net(x)
    assert isinstance(seg, list) and set(hidden.by_term()) == {"encoder", "cross"}
    enc2, enc3 = hidden.encoder
    assert enc2.shape[0] == 2 and enc2.shape[2] == 16 and enc3.shape[2] == 32  # (B, N, C) at levels 2 and 3
    p2, p3 = hidden.cross
    assert p2.shape[2] == p3.shape[2] == 16  # common projection width
    net.eval()
    assert isinstance(net(x), list)  # validation / inference never sees hidden outputs
    net.decoder.deep_supervision = False
    assert isinstance(net(x), torch.Tensor)


def test_hidden_uses_every_parameter():
    """DDP without find_unused_parameters needs a gradient for every parameter in each step."""
    config = CSSE.replaced(uafs_encoder=True, pdcr_decoder_weight=0.01)
    net = build(PLAIN, arch_kwargs(3, PLAIN), config)
    net.return_hidden = True
    seg, hidden = net(torch.randn(2, 1, 32, 32, 32))
    loss = sum(s.mean() for s in seg) + sum(t.float().pow(2).mean() for v in hidden.by_term().values() for t in v)
    loss.backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []


def test_forward_traces_without_graph_breaks():
    net = build(PLAIN, arch_kwargs(3, PLAIN))
    net.return_hidden = True
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    seg, hidden = compiled(torch.randn(2, 1, 32, 32, 32))
    assert len(seg) == 3 and set(hidden.by_term()) == {"encoder", "cross"}


def test_default_plan_receptive_fields_and_anchor_layers():
    kw = arch_kwargs(3, PLAIN, n_stages=6, features=32)
    net = build(PLAIN, kw)
    fields = [(f.receptive_field[0], f.stride[0]) for f in net.encoder_fields]
    # two 3x3x3 convs per stage, first one strided: R += 2J twice per stage
    assert fields == [(5, 1), (11, 2), (23, 4), (47, 8), (95, 16), (191, 32)]
    (l2, l3) = net.encoder_anchor_layers
    assert (l2.level, l2.stride, l2.receptive_field) == (2, (4, 4, 4), (23, 23, 23))  # authors' R = 23 at J = 4
    assert (l3.level, l3.stride, l3.receptive_field) == (3, (8, 8, 8), (47, 47, 47))  # authors' R = 47 at J = 8


def test_resenc_receptive_fields():
    net = build(RESENC, arch_kwargs(3, RESENC, n_stages=5))
    # stem conv: 3; stage0 1 block (2 convs): 7; stage1 3 blocks, first conv strided: 9, 13, +16 -> 29 (J 2);
    # stage2 4 blocks: 33 (J 4), 41, +48 -> 89; stage3 6 blocks: 97 (J 8), 113, +160 -> 273
    assert [f.receptive_field[0] for f in net.encoder_fields[:4]] == [7, 29, 89, 273]
    assert [f.stride[0] for f in net.encoder_fields] == [1, 2, 4, 8, 16]


def test_anisotropic_plan():
    kw = arch_kwargs(3, PLAIN, n_stages=4, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                     kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])
    net = build(PLAIN, kw)
    l2 = net.encoder_anchor_layers[0]
    assert l2.stride == (2, 4, 4) and l2.receptive_field == (11, 23, 23)
    assert net.decoder_uafs[-1].kernel_size == (1, 3, 3)  # level-0 UAFS follows the stage's in-plane kernel
    wide = build(PLAIN, kw, CSSE.replaced(uafs_kernel_size=5))
    assert wide.decoder_uafs[-1].kernel_size == (1, 5, 5) and wide.decoder_uafs[0].kernel_size == (5, 5, 5)
    x = torch.randn(2, 1, 16, 32, 32)
    assert [o.shape[2:] for o in net(x)] == [o.shape[2:] for o in base(PLAIN, kw)(x)]


@pytest.mark.parametrize("setting,levels,message", [
    ("pdcr_encoder_stages", (2, 7), r"level\(s\) \[7\] outside this network: its encoder has levels 0\.\.4"),
    ("pdcr_decoder_stages", (1, 4), r"level\(s\) \[4\] outside this network: its decoder has levels 0\.\.3"),
])
def test_chosen_levels_outside_the_network_are_an_error(setting, levels, message):
    config = CSSE.replaced(pdcr_decoder_weight=0.01).with_overrides({setting: list(levels)}, "plans")
    with pytest.raises(ValueError, match=message):
        config.fit_levels(5)
    with pytest.raises(ValueError, match=message):  # the network checks its settings fit
        build(PLAIN, arch_kwargs(2, PLAIN, n_stages=5), config)
    with pytest.raises(ValueError, match="do not fit this network of 3 stages"):  # and takes fitted settings only
        build(PLAIN, arch_kwargs(2, PLAIN, n_stages=3), CSSE)
    # unused settings are not checked: the decoder term is off
    unused = CSSE.with_overrides({"pdcr_decoder_stages": [1, 4]}, "plans")
    assert unused.fit_levels(5) == (unused, [])
    build(PLAIN, arch_kwargs(2, PLAIN, n_stages=5), unused)


def test_default_levels_move_down_on_shallow_networks_and_say_so():
    fitted, notes = CSSE.fit_levels(3)  # e.g. 3d_lowres of a small plan
    net = build(PLAIN, arch_kwargs(2, PLAIN, n_stages=3), fitted)
    assert [layer.level for layer in net.encoder_anchor_layers] == [1, 2]
    assert len(notes) == 1 and "moved to [1, 2]" in notes[0] and "'pdcr_encoder_stages'" in notes[0]
    assert CSSE.fit_levels(4) == (CSSE, [])
    with pytest.raises(ValueError, match="cross-layer PDCR needs two"):
        CSSE.fit_levels(1)


def test_unsupported_architecture_is_named():
    kw = arch_kwargs(2, RESENC)
    with pytest.raises(ValueError, match="ResidualUNet"):
        build("dynamic_network_architectures.architectures.unet.ResidualUNet", kw)
    with pytest.raises(ValueError, match="ResidualUNet"):
        CSSEUNet(base("dynamic_network_architectures.architectures.unet.ResidualUNet", kw), CSSE)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_uafs_branch_is_built_with_the_configured_kernel(dim, k):
    net = build(PLAIN, arch_kwargs(dim, PLAIN), CSSE.replaced(uafs_kernel_size=k))
    for block in net.decoder_uafs:
        conv = block.branch[0]
        assert tuple(conv.kernel_size) == (k,) * dim and tuple(conv.padding) == (k // 2,) * dim
    x = torch.randn(1, 1, *([32] * dim))
    assert [o.shape for o in net(x)] == [o.shape for o in base(PLAIN, arch_kwargs(dim, PLAIN))(x)]


def _record_outputs(modules, store, key=lambda i: i):
    return [m.register_forward_hook(lambda mod, inp, out, i=i: store.__setitem__(key(i), out))
            for i, m in enumerate(modules)]


@pytest.mark.parametrize("dim", [2, 3])
def test_uafs_output_feeds_the_segmentation_head_and_the_next_decoder_stage(dim):
    """Wiring by identity: what each decoder UAFS block returns is the very tensor its stage's segmentation head
    and the next stage's transposed convolution receive."""
    net = build(PLAIN, arch_kwargs(dim, PLAIN))
    uafs_out, head_in, transp_in, stage_out = {}, {}, {}, {}
    hooks = _record_outputs(net.decoder_uafs, uafs_out) + _record_outputs(net.decoder.stages, stage_out)
    for i, head in enumerate(net.decoder.seg_layers):
        hooks.append(head.register_forward_hook(lambda m, inp, out, i=i: head_in.__setitem__(i, inp[0])))
    for i, transp in enumerate(net.decoder.transpconvs):
        hooks.append(transp.register_forward_hook(lambda m, inp, out, i=i: transp_in.__setitem__(i, inp[0])))
    net(torch.randn(1, 1, *([32] * dim)))
    for hook in hooks:
        hook.remove()
    n = len(net.decoder.stages)
    assert set(uafs_out) == set(head_in) == set(range(n))
    for i in range(n):
        assert head_in[i] is uafs_out[i]
        assert uafs_out[i] is not stage_out[i]  # the block re-weights the stage output, it does not pass it on
        if i + 1 < n:
            assert transp_in[i + 1] is uafs_out[i]


def _field_of(fmap: torch.Tensor, x: torch.Tensor, position: tuple[int, ...]) -> list[tuple[int, int]]:
    """Empirical receptive field: the bounding box of the input voxels with a non-zero gradient."""
    (grad,) = torch.autograd.grad(fmap[(0, slice(None), *position)].sum(), x, retain_graph=True)
    support = (grad[0, 0] != 0).nonzero()
    return [(int(support[:, a].min()), int(support[:, a].max())) for a in range(support.shape[1])]


@pytest.mark.parametrize("dim,n_stages,arch", [(2, 5, PLAIN), (2, 5, RESENC), (3, 4, PLAIN)])  # 3D ResEnc: > 20 GB
def test_exact_fields_match_the_gradient_support(dim, n_stages, arch):
    """Per position, the computed input interval of the anchorable encoder and decoder maps (levels 2, 3) equals
    the support of the gradient of that position's features. Batch norm in eval mode (a per-channel affine map)
    instead of instance norm, which would couple the whole map; norm weights non-zero (ResEnc starts the last norm
    of each block at 0, which would hide the block's main path), with the statistics of the input itself (so deep
    residual sums do not saturate the UAFS softmax, whose gradient would then vanish)."""
    kw = dict(arch_kwargs(dim, arch, n_stages=n_stages, features=2),
              norm_op=f"torch.nn.BatchNorm{dim}d", norm_op_kwargs={"eps": 1e-5, "affine": True})
    torch.manual_seed(0)
    dtype = torch.float64 if dim == 2 else torch.float32  # 3D in float32: half the time, supports still exact
    net = build(arch, kw, CSSE.replaced(uafs_encoder=True)).to(dtype)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            module.momentum = 1.0
    checked = {("encoder", 2): net.encoder_fields[2], ("decoder", 2): net.decoder_fields[2]}
    if dim == 2:
        checked["encoder", 3] = net.encoder_fields[3]
    # 2D plain: every parity after the two transposed convolutions below level 2; elsewhere two positions (time)
    offsets = range(4) if (dim, arch) == (2, PLAIN) else range(2)
    # an input large enough that the fields of the positions checked are interior
    unit = 2 ** (n_stages - 1)
    size = -(-(max(f.receptive_field[0] for f in checked.values()) + 4 * unit) // unit) * unit
    maps = {}
    hooks = _record_outputs(net.encoder_uafs, maps, lambda i: ("encoder", i))
    hooks += _record_outputs(net.decoder_uafs, maps, lambda i: ("decoder", n_stages - 2 - i))
    x = torch.randn(1, 1, *([size] * dim), dtype=dtype, requires_grad=True)
    with torch.no_grad():
        net(x)  # training mode, momentum 1: the running statistics become this input's
    net.eval()
    net(x)
    for hook in hooks:
        hook.remove()
    widths_seen = {}
    for key, field in checked.items():
        fmap = maps[key]
        centre = fmap.shape[2] // 2
        for u in (centre + o for o in offsets):
            expected = [tuple(v[0] for v in field.intervals(a, [u])) for a in range(dim)]
            assert all(0 < lo and hi < size - 1 for lo, hi in expected), "test setup: field must be interior"
            assert _field_of(fmap, x, (u,) * dim) == expected, (key, u)
            widths_seen.setdefault(key, set()).add(expected[0][1] - expected[0][0] + 1)
    if (dim, arch) == (2, PLAIN):
        assert len(widths_seen["decoder", 2]) > 1, "test setup: the decoder field should depend on the position"
    assert len(widths_seen["encoder", 2]) == 1


def test_decoder_fields_depend_on_the_position():
    """nnU-Net's 5-stage 2D decoder (with UAFS) at level 2 sees 159 or 175 input voxels, depending on the position;
    the classic recursion R' = R + (ceil(k / s) - 1) J gives 167 for all."""
    net = build(PLAIN, arch_kwargs(2, PLAIN, n_stages=5))
    assert net.decoder_fields[2].widths(0) == (159, 175)
    lo, hi = net.decoder_fields[2].intervals(0, [40, 41, 42, 43])
    assert [b - a + 1 for a, b in zip(lo, hi)] == [175, 159, 159, 175]
    assert net.encoder_fields[2].widths(0) == (23, 23) and net.encoder_fields[2].intervals(0, [5]) == ((9,), (31,))


@pytest.mark.parametrize("dim,strides,spacing,expected", [
    # isotropic 3D, the authors' setup: centres 8, 40, 72, 104 at stride 4 (positions 2, 10, ...) and 8 (1, 5, ...)
    (3, [[1, 1, 1]] + [[2, 2, 2]] * 4, (32, 32, 32), {"first": (8, 8, 8), "counts": (4, 4, 4)}),
    # anisotropic: the first downsampling in-plane only, so stride (2, 4, 4) at level 2 and (4, 8, 8) at level 3
    (3, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], (32, 32, 32),
     {"first": (12, 8, 8), "counts": (4, 4, 4)}),
    # 2D: 4 x 4 = 16 anchors is below pdcr_min_anchors (32), so the spacing halves to 16 (every L = 8 voxels * 2)
    (2, [[1, 1]] + [[2, 2]] * 4, (16, 16), {"first": (0, 0), "counts": (8, 8)}),
])
def test_every_anchored_layer_samples_one_input_grid(dim, strides, spacing, expected):
    kw = arch_kwargs(dim, PLAIN, n_stages=len(strides), strides=strides)
    config = CSSE.replaced(pdcr_decoder_weight=0.01)
    net = build(PLAIN, kw, config)
    patch = (128,) * dim
    grid = config.pdcr.input_grid(patch, net.anchor_layers)
    assert grid.spacing == spacing and grid.first == expected["first"] and grid.counts == expected["counts"]
    centres = {layer.name: grid.on_layer(layer.stride).centers(layer.stride) for layer in net.anchor_layers}
    assert len({str(c) for c in centres.values()}) == 1  # the same input voxels on every layer
    assert [list(range(f, 128, s)) for f, s in zip(grid.first, grid.spacing)] == list(next(iter(centres.values())))
    # and the network takes its anchors at exactly those feature positions: compare with a direct slice
    net.return_hidden = True
    maps = {}
    hooks = _record_outputs(net.encoder.stages, maps)
    _, hidden = net(torch.randn(1, 1, *patch))
    for hook in hooks:
        hook.remove()
    for layer, anchors in zip(net.encoder_anchor_layers, hidden.encoder):
        fmap = maps[layer.level]
        index = [[c // j for c in axis] for axis, j in zip(centres[layer.name], layer.stride)]
        direct = fmap[(0, slice(None), *torch.meshgrid(*map(torch.tensor, index), indexing="ij"))]
        torch.testing.assert_close(anchors[0], direct.reshape(fmap.shape[1], -1).T)


@pytest.mark.parametrize("dim", [2, 3])
def test_uafs_branch_norm_is_the_plans_or_the_authors_batch_norm(dim):
    from nnunet_csse.method.uafs import InstanceNormByStatistics

    batch_norm = {2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dim]
    for norm, expected in (("plan", (InstanceNormByStatistics, torch.nn.LeakyReLU)),
                           ("batch", (batch_norm, torch.nn.ReLU))):
        net = build(PLAIN, arch_kwargs(dim, PLAIN), CSSE.replaced(uafs_norm=norm))
        for block in net.decoder_uafs:
            kinds = [type(m) for m in block.branch]
            assert kinds[1:3] == list(expected), (norm, kinds)
