"""Shared fixtures. Helpers live in tests/console.py (nnU-Net's console scripts) and tests/toy_plans.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread avoids thread-pool overhead on busy 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders in the environment."""
    dirs = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    return dirs
