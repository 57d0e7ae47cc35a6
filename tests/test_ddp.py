"""DDP on CPU (gloo, 2 processes) through nnUNetTrainerCSSE's own initialize / train_step / epoch end.

Each rank builds the trainer from plans the way ``nnUNetv2_train -num_gpus 2`` does (process group first, so
the trainer sees DDP), then runs nnU-Net's ``initialize`` (network wrapped in DistributedDataParallel with
find_unused_parameters=False, loss built for DDP), three ``train_step`` calls on different data per rank and
``on_train_epoch_end``. nnU-Net's DDP path assumes CUDA, so only the device, the grad scaler and the DDP
constructor's ``device_ids`` are adapted to CPU. DDP raises if a parameter gets no gradient; afterwards both
ranks must hold identical weights and log the same, all-rank mean PDCR terms and loss.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.toy_plans import TOY_DATASET_JSON, write_toy_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ddp(module, device_ids=None, **kwargs):
    """nnU-Net passes device_ids=[local_rank], which DistributedDataParallel rejects for CPU modules."""
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)


def _worker(rank: int, world: int, port: int, root: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), nnUNet_compile="false",
                      **{n: os.path.join(root, n) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

        from nnunet_csse.training import nnUNetTrainerCSSE

        nnunet_trainer_module.DDP = _cpu_ddp
        folder = os.path.join(root, "nnUNet_preprocessed", "Dataset042_Toy")
        plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
        plans["continue_training"] = False  # set by nnU-Net's get_trainer_from_args
        trainer = nnUNetTrainerCSSE(plans, "2d", 0, TOY_DATASET_JSON, device=torch.device("cpu"))
        assert trainer.is_ddp
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # nnU-Net set cuda:<rank> under DDP
        trainer.initialize()
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert not trainer.network.find_unused_parameters

        trainer.on_train_epoch_start()
        torch.manual_seed(100 + rank)  # different data per rank
        outputs = []
        for _ in range(3):
            x = torch.randn(trainer.batch_size, 1, 32, 32)
            seg = torch.randint(0, 3, (trainer.batch_size, 1, 32, 32)).float()
            outputs.append(trainer.train_step({"data": x, "target": [seg, seg[..., ::2, ::2], seg[..., ::4, ::4]]}))
        local_terms, skipped = trainer.loss.epoch_statistics()
        trainer.on_train_epoch_end(outputs)

        logged = trainer.logger.local_logger.my_fantastic_logging
        flat = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        results[rank] = {
            "max_weight_diff": float((gathered[0] - gathered[1]).abs().max()),
            "local_terms": local_terms, "skipped": skipped, "local_loss": float(np.mean([o["loss"] for o in outputs])),
            "logged_terms": {t: logged[f"pdcr_{t}"][-1] for t in trainer.pdcr_terms},
            "logged_loss": float(logged["train_losses"][-1]), "batch_size": trainer.batch_size,
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_train_steps_keep_ranks_in_sync(tmp_path):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
    write_toy_dataset(tmp_path / "nnUNet_preprocessed")
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), results), nprocs=2, join=True)
    assert set(results.keys()) == {0, 1}
    r0, r1 = results[0], results[1]
    assert r0["batch_size"] == r1["batch_size"] == 2  # the plans' batch size of 4, split over two ranks
    assert r0["max_weight_diff"] == 0.0  # gradients were all-reduced for every parameter
    assert r0["local_terms"] != r1["local_terms"]  # different data per rank ...
    for term in ("encoder", "cross"):  # ... yet every rank logs the same, all-rank mean
        expected = (r0["local_terms"][term] + r1["local_terms"][term]) / 2
        assert np.isfinite(expected) and r0["skipped"][term] == r1["skipped"][term] == 0
        assert r0["logged_terms"][term] == pytest.approx(expected) == r1["logged_terms"][term]
    assert r0["logged_loss"] == pytest.approx((r0["local_loss"] + r1["local_loss"]) / 2) == r1["logged_loss"]
