from types import SimpleNamespace

import pytest
import torch
from conftest import PLAIN, REQ_IMPORT, arch_kwargs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_csse.config import CSSEConfig
from nnunet_csse.network import build_csse_network
from nnunet_csse.uncertainty import UncertaintyAsLogits, csse_network_of


@pytest.mark.parametrize("dim", [2, 3])
def test_wrapper_outputs_full_resolution_entropy_per_head(dim):
    net = build_csse_network(PLAIN, arch_kwargs(dim, PLAIN), REQ_IMPORT, 1, 3, CSSEConfig(uafs_decoder=True), False)
    net.eval()
    wrapper = UncertaintyAsLogits(net, num_heads=3)
    x = torch.randn(1, 1, *([32] * dim))
    out = wrapper(x)
    assert out.shape == (1, 3, *([32] * dim))
    expected = net.uncertainty_maps(x)[0]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel:channel + 1], expected)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    wrapper.load_state_dict(state)  # the predictor loads fold weights through the wrapper
    torch.testing.assert_close(net.decoder_uafs[0].branch[0].weight, state["decoder_uafs.0.branch.0.weight"])


def test_models_without_uafs_are_refused():
    plain = get_network_from_plans(PLAIN, arch_kwargs(2, PLAIN), REQ_IMPORT, 1, 3)
    with pytest.raises(ValueError, match="no UAFS"):
        csse_network_of(SimpleNamespace(network=plain))
    pdcr_only = build_csse_network(PLAIN, arch_kwargs(2, PLAIN), REQ_IMPORT, 1, 3,
                                   CSSEConfig(pdcr_encoder_weight=0.01), False)
    with pytest.raises(ValueError, match="UAFS trainer"):
        csse_network_of(SimpleNamespace(network=pdcr_only))
