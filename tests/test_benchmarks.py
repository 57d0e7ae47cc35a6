"""The benchmark entry runs end to end at its tiny size, and the loop reference agrees with the vectorized PDCR.

No timing thresholds here: figures only have to exist and be finite. Speed targets are reported by the benchmark.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.pdcr import PDCR_CONFIG, PDCRCase, agreement
from benchmarks.plans import TINY
from tests.console import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_tiny_run_prints_table_and_writes_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--size", "tiny", "--device", "cpu", "--threads", "1",
                           "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for text in ("nnunet-csse benchmarks", "machine: cpu", "torch " + torch.__version__, "A. PDCR loss",
                 "B. nnU-Net train_step", "C. PDCR forward + backward scaling", "Targets"):
        assert text in out, f"{text!r} missing from the output:\n{out}"
    for trainer in ("nnUNetTrainer ", "nnUNetTrainerUAFS", "nnUNetTrainerPDCR", "nnUNetTrainerCSSE"):
        assert trainer in out
    assert sum(line.strip().startswith(("PASS", "MISS")) for line in out.splitlines()) == 3

    results = json.loads((tmp_path / "benchmark_cpu_tiny.json").read_text())
    assert (tmp_path / "benchmark_cpu_tiny.png").stat().st_size > 0
    assert results["machine"]["torch"] == torch.__version__
    a = results["parts"]["pdcr_speed"]
    assert all(_finite(a[k]) and a[k] > 0 for k in ("vectorized_s", "loop_s", "speedup"))
    rows = results["parts"]["step_time"]["rows"]
    assert [r["trainer"] for r in rows] == ["nnUNetTrainer", "nnUNetTrainerUAFS", "nnUNetTrainerPDCR",
                                            "nnUNetTrainerCSSE"]
    for row in rows:
        assert "failure" not in row, row["failure"]
        for key in ("median_s", "time_ratio", "memory_ratio", "loss_first", "loss_last"):
            assert _finite(row[key]), (row["trainer"], key, row.get(key))
        assert _finite(row["memory"]["step_bytes"]) and row["memory"]["step_bytes"] > 0
    scaling = results["parts"]["scaling"]
    for key in ("anchors", "patch", "classes"):
        assert scaling[key] and all(_finite(p["time_s"]) for p in scaling[key])
    assert [t["status"] for t in results["targets"]] and all(t["status"] in ("PASS", "MISS")
                                                             for t in results["targets"])
    assert all(_finite(t["measured"]) for t in results["targets"])

    from benchmarks.report import summarize  # python -m benchmarks summary FILE.json ...

    summary = summarize([tmp_path / "benchmark_cpu_tiny.json"])
    assert summary.startswith("benchmark_cpu_tiny.json: cpu") and summary.count("  PASS") + summary.count("  MISS") == 3


@pytest.mark.parametrize("variant", ["rf", "hpdcr", "ignore_label"])
def test_loop_reference_agrees_with_vectorized_pdcr(variant):
    config = PDCR_CONFIG.replaced(pdcr_windows=(5, 7, 9)) if variant == "hpdcr" else PDCR_CONFIG
    case = PDCRCase(TINY, torch.device("cpu"), patch=(32, 24, 40), config=config, seed=3,
                    ignore_label=4 if variant == "ignore_label" else None)
    result = agreement(case)  # raises AssertionError on any disagreement of values or gradients
    assert set(result["values"]) == {"encoder", "cross"}
    for v in result["values"].values():
        assert math.isclose(v["vectorized"], v["loop"], rel_tol=1e-4, abs_tol=1e-5)
    assert result["max_rel_grad_error"] < 1e-3


def test_trainers_compile_the_pdcr_loss_when_nnunet_compiles(tmp_path, monkeypatch):
    """nnU-Net compiles only on CUDA; forcing its switch on CPU shows the wiring: the CSSE trainer then wraps its
    PDCRLoss in torch.compile (built lazily: nothing is compiled here), a variant's plans settings included."""
    from torch._dynamo.eval_frame import OptimizedModule

    from benchmarks.plans import nnunet_folders, trainer_class, trainer_plans
    from nnunet_csse.method.pdcr import PDCRLoss

    for name, folder in nnunet_folders(tmp_path).items():
        monkeypatch.setenv(name, folder)  # restored after the test
    losses = {}
    for name in ("nnUNetTrainerCSSE", "nnUNetTrainerCSSE[batch-pairs]"):
        compiling = type("Compiling", (trainer_class(name),), {"_do_i_compile": lambda self: True})
        trainer = compiling(trainer_plans(name, TINY), "3d_fullres", 0, TINY.dataset_json(), torch.device("cpu"))
        trainer.initialize()
        assert isinstance(trainer.network, OptimizedModule)  # nnU-Net's own compile of the network
        losses[name] = trainer.loss.pdcr
    assert isinstance(losses["nnUNetTrainerCSSE"], OptimizedModule)
    assert isinstance(losses["nnUNetTrainerCSSE"]._orig_mod, PDCRLoss)
    assert losses["nnUNetTrainerCSSE"]._orig_mod.settings.pairs == "sample"
    assert losses["nnUNetTrainerCSSE[batch-pairs]"]._orig_mod.settings.pairs == "batch"  # compiled, from the plans


def test_variants_change_what_they_name_and_train(tmp_path):
    """Each benchmark-only variant makes its one change (through the plans' "csse" settings or the built network),
    and the trainer still takes a finite step; building a trainer leaves the process environment as it was."""
    from benchmarks.plans import (
        VARIANTS,
        deep_supervision_scales,
        make_trainer,
        nnunet_folders,
        synthetic_batch,
        uafs_blocks,
    )
    from nnunet_csse.method.uafs import InstanceNormByStatistics

    folders = nnunet_folders(tmp_path)
    def nnunet_environ() -> dict:  # what make_trainer scopes (imports add their own variables, e.g. KMP_*)
        return {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}

    environ = nnunet_environ()
    for name in VARIANTS:
        trainer = make_trainer(name, TINY, torch.device("cpu"), compile_network=False, folders=folders)
        assert nnunet_environ() == environ
        net = trainer.network
        blocks = uafs_blocks(net)
        if name.endswith("[cudnn-IN]"):
            assert all(isinstance(b.branch[1], torch.nn.InstanceNorm3d) for b in blocks)
            assert not any(isinstance(m, InstanceNormByStatistics) for m in net.modules())
        elif name.endswith("[uafs-k1]"):
            assert len(blocks) == len(net.decoder_uafs) and all(b.branch[0].kernel_size == (1, 1, 1) for b in blocks)
        elif name.endswith("[no-full-res-UAFS]"):
            assert isinstance(net.decoder_uafs[-1], torch.nn.Identity) and len(blocks) == len(net.decoder_uafs) - 1
        elif name.endswith("[batch-pairs]"):
            assert trainer.loss.pdcr.settings.pairs == "batch"
        else:
            raise AssertionError(f"no check written for variant {name}")
        step = trainer.train_step(synthetic_batch(TINY, deep_supervision_scales(trainer)))
        assert math.isfinite(step["loss"]), name
