"""What the benchmark ran on: CPU model, GPU name, library versions, thread count."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict:
    """A JSON-able description of the machine and the libraries used."""
    info = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "nnunetv2": _version("nnunetv2"),
        "dynamic_network_architectures": _version("dynamic_network_architectures"),
        "device": str(device),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def choose_threads(device: torch.device, requested: int | None) -> tuple[int, str]:
    """Torch intra-op threads for the run and why.

    CUDA: 1, as ``nnUNetv2_train -device cuda`` sets. CPU: ``requested``, else 1. The benchmark is after ratios,
    and with one thread the process CPU time of a step is its own compute, which other load on a shared machine
    hardly changes (on the 2-core development VMs, busy with other work, two threads made steps 2-20x slower and
    erratic).
    """
    if device.type == "cuda":
        torch.set_num_threads(1)
        return 1, "as nnUNetv2_train on CUDA"
    if requested:
        torch.set_num_threads(requested)
        return requested, "requested"
    torch.set_num_threads(1)
    return 1, f"CPU default of this benchmark; nnUNetv2_train would use all {os.cpu_count()} cores: --threads N"


def describe(info: dict) -> str:
    where = info.get("gpu") or info["cpu"]
    extra = f", CUDA {info['cuda']}" if info.get("cuda") else f", {info['torch_threads']} torch threads"
    return (f"{info['device']} | {where} | {info['cpu_count']} CPU cores{extra} | load avg (1 min) at start "
            f"{info['load_average_1m']} | torch {info['torch']} | nnunetv2 {info['nnunetv2']} | "
            f"python {info['python']}")
