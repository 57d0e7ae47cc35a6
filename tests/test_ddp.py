"""DDP on CPU (gloo, 2 processes): the CSSE network + loss as nnU-Net's DDP path uses them.

nnU-Net's trainer forces CUDA under DDP, so this drives the same pieces the trainer's DDP train_step uses:
the network wrapped in DistributedDataParallel (find_unused_parameters=False, as nnU-Net), nnU-Net's
deep-supervision Dice+CE loss inside CSSELoss with the PDCR terms, backward and an SGD step.
DDP raises if any parameter got no gradient; after the steps both ranks must hold identical weights.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import PLAIN, REQ_IMPORT, arch_kwargs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        from nnunet_csse.config import CSSEConfig
        from nnunet_csse.network import build_csse_network
        from nnunet_csse.pdcr import PDCRLoss
        from nnunet_csse.training import CSSELoss

        torch.manual_seed(0)  # same initial weights on both ranks
        config = CSSEConfig(uafs_decoder=True, uafs_encoder=True, pdcr_encoder_weight=0.01, pdcr_cross_weight=0.01,
                            pdcr_decoder_weight=0.01)
        net = build_csse_network(PLAIN, arch_kwargs(2, PLAIN), REQ_IMPORT, 1, 3, config, True)
        net.return_hidden = True
        pdcr = PDCRLoss(net.encoder_anchor_layers, net.decoder_anchor_layers, config, 3)
        model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=False)
        seg_loss = DeepSupervisionWrapper(
            DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": True}, {},
                           dice_class=MemoryEfficientSoftDiceLoss), [4 / 7, 2 / 7, 1 / 7])
        loss_fn = CSSELoss(seg_loss, pdcr, {"encoder": 0.01, "cross": 0.01, "decoder": 0.01})
        optimizer = torch.optim.SGD(model.parameters(), 1e-2, momentum=0.99, nesterov=True)
        torch.manual_seed(100 + rank)  # different data per rank
        for _ in range(3):
            x = torch.randn(2, 1, 64, 64)
            target = torch.randint(0, 3, (2, 1, 64, 64)).float()
            targets = [target, target[..., ::2, ::2], target[..., ::4, ::4]]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), targets)
            loss.backward()
            optimizer.step()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        results[rank] = {"max_weight_diff": float((gathered[0] - gathered[1]).abs().max()),
                         "counts": {k: int(v) for k, v in loss_fn.counts.items()}, "loss": float(loss)}
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_keep_weights_in_sync():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    assert set(results.keys()) == {0, 1}
    for rank in (0, 1):
        assert results[rank]["counts"] == {"encoder": 3, "cross": 3, "decoder": 3}
        assert torch.isfinite(torch.tensor(results[rank]["loss"]))
    assert results[0]["max_weight_diff"] == 0.0  # gradients were all-reduced for every parameter
