"""Placeholder modules for nnU-Net's image-I/O dependencies (SimpleITK, imagecodecs) on bare GPU machines.

Importing ``nnunetv2.training.nnUNetTrainer.nnUNetTrainer`` imports SimpleITK and (through tifffile's codecs)
imagecodecs at module level, but a training step on synthetic tensors never reads an image. Where they are not
installed, for a benchmark run only, this module writes tiny
stand-in packages to a temporary folder and puts it first on ``sys.path`` (and on ``PYTHONPATH`` for the
benchmark's own subprocesses). A stand-in hands back another stand-in for any ordinary attribute and raises
``AttributeError`` for dunder names (``inspect`` asks for ``__file__``); calling one raises, so any real use
fails loudly instead of computing something wrong.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

MODULES = ("SimpleITK", "imagecodecs")
ENV_FLAG = "CSSE_BENCH_PLACEHOLDERS"

_STUB = '''"""Benchmark placeholder for {name} (benchmarks/placeholders.py): no image I/O happens in this run."""
import types as _types

PLACEHOLDER = True


class _Stand(_types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _Stand(f"{{self.__name__}}.{{attr}}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{{self.__name__}} is a benchmark placeholder: {name} is not installed in this run")


def __getattr__(attr):
    if attr.startswith("__") and attr.endswith("__"):
        raise AttributeError(attr)
    return _Stand(f"{name}.{{attr}}")
'''


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_modules() -> list[str]:
    """The image-I/O modules that cannot be imported here."""
    return [m for m in MODULES if not _importable(m)]


def install(mode: str = "auto") -> list[str]:
    """Put placeholder packages first on ``sys.path`` and return the names placed.

    Args:
        mode: "auto" (only modules missing here), "on" (always, shadowing installed ones: used to test the GPU
            path on a full install) or "off" (none).

    The folder is also prepended to ``PYTHONPATH`` so this run's worker subprocesses see the same modules; the
    caller's shell environment is untouched.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"placeholder mode must be auto, on or off, got {mode!r}")
    names = [] if mode == "off" else list(MODULES) if mode == "on" else missing_modules()
    if not names:
        return []
    already = [n for n in names if n in sys.modules and not getattr(sys.modules[n], "PLACEHOLDER", False)]
    if already:
        raise RuntimeError(f"cannot place placeholders for {already}: already imported")
    folder = Path(tempfile.mkdtemp(prefix="csse_bench_placeholders_"))
    for name in names:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(_STUB.format(name=name))
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    os.environ[ENV_FLAG] = ",".join(names)
    importlib.invalidate_caches()
    return names


def active() -> list[str]:
    """Placeholder modules that are actually imported in this process."""
    return [m for m in MODULES if getattr(sys.modules.get(m), "PLACEHOLDER", False)]
