"""The README's install and first commands work as written: the CPU path installs torch and torchvision together
from PyTorch's CPU index, and the first nnUNetv2_train command has the export line nnU-Net needs next to it."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def commands(text: str) -> list[str]:
    """The indented command lines of a markdown text, in order."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_first_train_command_has_the_export_line_before_it():
    first_screen = README.split("## Quick start", 1)[0]
    lines = commands(first_screen)
    train = next(i for i, line in enumerate(lines) if line.startswith("nnUNetv2_train"))
    assert "export nnUNet_extTrainer=$(nnunet-csse trainers-path)" in lines[:train]


def test_every_cpu_torch_install_takes_torchvision_from_the_same_index():
    installs = [line for line in commands(README) if CPU_INDEX in line]
    assert installs, "no CPU install command"
    for line in installs:
        assert re.fullmatch(rf"pip install torch(==\S+)? torchvision(==\S+)? {re.escape(CPU_INDEX)}", line), line
    for title in ("Quick start", "Install"):
        lines = commands(section(title))
        cpu = next(i for i, line in enumerate(lines) if CPU_INDEX in line)
        assert any(line.startswith("pip install .") for line in lines[cpu + 1:]), title  # the package after torch


def test_the_install_size_is_stated_with_how_it_was_measured():
    install = section("Install")
    assert "1.9 GB" in install and "6.4 GB" in install and "was not measured here" in install
