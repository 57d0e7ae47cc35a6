"""Awkward datasets through nnU-Net's console scripts with nnUNetTrainerCSSE (CPU, tiny budget).

Regions with an ignore label and two input channels (BraTS-like), many classes. A single foreground class and
patches without foreground are covered by the cascade dataset of ``test_workflows.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.console import PLANS, logged_pdcr, nnunet_env, run

pytestmark = pytest.mark.e2e
TRAINER = "nnUNetTrainerCSSE_2epochs_10iters"


@pytest.mark.parametrize("name,synth,config", [
    ("regions_ignore_2channels", ["--dim", "3", "--size", "32", "--classes", "4", "--regions", "--ignore-label",
                                  "--channels", "2"], "3d_fullres"),
    ("six_classes", ["--dim", "2", "--size", "64", "--classes", "7"], "2d"),
])
def test_csse_trains_on_awkward_datasets(name, synth, config, tmp_path):
    env = nnunet_env(tmp_path)
    run(["nnunet-csse", "synth", "-d", "910", "--cases", "5", "--seed", "3", *synth], env)
    run(["nnUNetv2_plan_and_preprocess", "-d", "910", "-c", config, "-np", "1", "-npfp", "1"], env)
    run(["nnunet-csse", "plans", "apply", "cpu_tiny", "-d", "910"], env)
    run(["nnUNetv2_train", "910", config, "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"],
        dict(env, nnUNet_n_proc_DA="0"))
    fold = next((tmp_path / "nnUNet_results").glob("Dataset910_*")) / f"{TRAINER}__{PLANS}__{config}" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    for term in ("encoder", "cross"):
        values = logged_pdcr(log, term)
        assert len(values) == 2 and all(np.isfinite(values)), values
    assert "non-finite" not in log
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["mean"]) == {"regions_ignore_2channels": 3, "six_classes": 6}[name]
