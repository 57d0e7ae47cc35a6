import dataclasses

import pytest
import torch
from conftest import PLAIN, REQ_IMPORT, RESENC, arch_kwargs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_csse.config import CSSEConfig
from nnunet_csse.network import CSSEUNet, build_csse_network, resolve_levels

CSSE = CSSEConfig(uafs_decoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01)


def build(arch, kw, config=CSSE, deep_supervision=True, classes=3):
    return build_csse_network(arch, kw, REQ_IMPORT, 1, classes, config, deep_supervision)


def base(arch, kw, deep_supervision=True, classes=3):
    return get_network_from_plans(arch, kw, REQ_IMPORT, 1, classes, deep_supervision=deep_supervision)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", [PLAIN, RESENC])
@pytest.mark.parametrize("config", [CSSEConfig(uafs_decoder=True), CSSE,
                                    dataclasses.replace(CSSE, uafs_encoder=True, pdcr_decoder_weight=0.01)])
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
    assert isinstance(seg, list) and set(hidden) == {"encoder", "cross"}
    enc2, enc3 = hidden["encoder"]
    assert enc2.shape[0] == 2 and enc2.shape[2] == 16 and enc3.shape[2] == 32  # (B, N, C) at levels 2 and 3
    p2, p3 = hidden["cross"]
    assert p2.shape[2] == p3.shape[2] == 16  # common projection width
    net.eval()
    assert isinstance(net(x), list)  # validation / inference never sees hidden outputs
    net.decoder.deep_supervision = False
    assert isinstance(net(x), torch.Tensor)


def test_hidden_uses_every_parameter():
    """DDP without find_unused_parameters needs a gradient for every parameter in each step."""
    config = dataclasses.replace(CSSE, uafs_encoder=True, pdcr_decoder_weight=0.01)
    net = build(PLAIN, arch_kwargs(3, PLAIN), config)
    net.return_hidden = True
    seg, hidden = net(torch.randn(2, 1, 32, 32, 32))
    loss = sum(s.mean() for s in seg) + sum(t.float().pow(2).mean() for v in hidden.values() for t in v)
    loss.backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []


def test_forward_traces_without_graph_breaks():
    net = build(PLAIN, arch_kwargs(3, PLAIN))
    net.return_hidden = True
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    seg, hidden = compiled(torch.randn(2, 1, 32, 32, 32))
    assert len(seg) == 3 and set(hidden) == {"encoder", "cross"}


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
    x = torch.randn(2, 1, 16, 32, 32)
    assert [o.shape[2:] for o in net(x)] == [o.shape[2:] for o in base(PLAIN, kw)(x)]


def test_shallow_network_falls_back_to_available_levels():
    assert resolve_levels((2, 3), 3) == (1, 2)
    assert resolve_levels((2, 3), 6) == (2, 3)
    assert resolve_levels((5,), 2) == (1,)
    net = build(PLAIN, arch_kwargs(2, PLAIN, n_stages=3))
    assert [layer.level for layer in net.encoder_anchor_layers] == [1, 2]
    with pytest.raises(ValueError, match="cross-layer"):
        build(PLAIN, arch_kwargs(2, PLAIN, n_stages=1))


def test_unsupported_architecture_is_named():
    kw = arch_kwargs(2, RESENC)
    with pytest.raises(ValueError, match="ResidualUNet"):
        build("dynamic_network_architectures.architectures.unet.ResidualUNet", kw)
    with pytest.raises(ValueError, match="ResidualUNet"):
        CSSEUNet(base("dynamic_network_architectures.architectures.unet.ResidualUNet", kw), CSSE)


@pytest.mark.parametrize("dim", [2, 3])
def test_uncertainty_maps(dim):
    net = build(PLAIN, arch_kwargs(dim, PLAIN), deep_supervision=False).eval()
    maps = net.uncertainty_maps(torch.randn(1, 1, *([32] * dim)))
    assert sorted(maps) == [0, 1, 2]
    assert maps[0].shape == (1, 1, *([32] * dim)) and maps[2].shape == (1, 1, *([8] * dim))
    assert all(((m >= 0) & (m <= 1)).all() for m in maps.values())
    with pytest.raises(ValueError, match="UAFS"):
        build(PLAIN, arch_kwargs(dim, PLAIN), CSSEConfig()).uncertainty_maps(torch.randn(1, 1, *([32] * dim)))
