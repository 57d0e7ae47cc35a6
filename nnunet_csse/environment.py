"""Diagnose the environment nnU-Net needs to find the CSSE trainers (``nnunet-csse check``).

nnU-Net finds trainers outside its own package only through ``nnUNet_extTrainer`` (a list of folders joined
with ``os.pathsep``). When the variable is unset or lists other folders only, ``nnUNetv2_train`` and
``nnUNetv2_predict`` stop with "Could not find requested nnunet trainer ..."; this module says why and prints
the export line that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator, Mapping

REEXPORT_MODULE = "nnunet_csse_trainers.py"


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` inside the block only; each variable is restored (or removed) on exit."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def trainers_path() -> str:
    """The folder holding the trainer re-exports, ``nnunet_csse/ext_trainers`` (editable and regular installs)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def _is_csse_trainer_folder(folder: str) -> bool:
    """Our folder, or another copy of it (e.g. the ``trainers/`` folder of a checkout next to a regular
    install): its re-export module imports the installed ``nnunet_csse`` either way."""
    return os.path.isfile(os.path.join(folder, REEXPORT_MODULE))


def ext_trainer_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """None when ``nnUNet_extTrainer`` lists this package's trainer folder, else the problem and its fix."""
    environ = os.environ if environ is None else environ
    ours = trainers_path()
    current = environ.get("nnUNet_extTrainer", "")
    folders = [f for f in current.split(os.pathsep) if f.strip()]
    if any(_is_csse_trainer_folder(folder) for folder in folders):
        return None
    if not folders:
        problem = "nnUNet_extTrainer is not set, so nnU-Net cannot find the CSSE trainers"
        line = f"export nnUNet_extTrainer={shlex.quote(ours)}"
    else:
        problem = (f"nnUNet_extTrainer={current} does not list the CSSE trainer folder, so nnU-Net cannot find "
                   f"the CSSE trainers")
        # keep the user's own trainer folders: nnU-Net searches every folder in the list
        line = f"export nnUNet_extTrainer={shlex.quote(current + os.pathsep + ours)}"
    return (f"{problem} (nnUNetv2_train / nnUNetv2_predict stop with 'Could not find requested nnunet trainer').\n"
            f"Fix: run\n    {line}\n(add it to your shell profile next to nnUNet_raw, nnUNet_preprocessed and "
            f"nnUNet_results).")


def nnunet_folder_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """nnU-Net's three folder variables that are unset or point to no existing folder."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = environ.get(name)
        if not value:
            problems.append(f"{name} is not set. Fix: export {name}=/path/to/{name} (see nnU-Net's "
                            f"documentation/setting_up_paths.md)")
        elif not os.path.isdir(value):
            problems.append(f"{name}={value} is not an existing folder. Fix: create it or point {name} elsewhere")
    return problems


def resolve_device(requested: str | None) -> tuple[str, str]:
    """(device, sentence saying which and why) for our commands' ``--device``: CUDA when available, else CPU.

    Raises ``ValueError`` when CUDA is asked for but torch finds no CUDA device (checked before any model is
    loaded or any file is written)."""
    import torch

    available = torch.cuda.is_available()
    if requested is None:
        device = "cuda" if available else "cpu"
        return device, f"device: {device} ({'CUDA device found' if available else 'no CUDA device found'})"
    if requested == "cuda" and not available:
        raise ValueError("--device cuda, but torch finds no CUDA device on this machine; use --device cpu")
    return requested, f"device: {requested} (as requested)"
