"""nnU-Net folders, dataset names, the JSON files this package writes into them and the evaluator summaries it
reads: the one place for each.

Dataset ids follow nnU-Net's convention (``maybe_convert_to_dataset_name``): a value starting with ``Dataset`` is
a dataset name, anything else an integer id matching exactly one ``Dataset%03d_*`` folder. nnU-Net's own function
searches all three of its folders from the environment; these helpers look in the one folder a command works on,
so the message can name it and list what is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NNUNET_FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def root_from_env(value: str | Path | None, variable: str) -> Path:
    """``value`` or the folder in environment variable ``variable`` (nnU-Net's ``nnunetv2.paths`` names); a
    ``ValueError`` with the fix when it is unset or not an existing folder."""
    root = value if value is not None else os.environ.get(variable)
    if not root:
        raise ValueError(f"{variable} is not set: export {variable}=/path (see nnU-Net's "
                         f"documentation/setting_up_paths.md)")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{variable} folder {root} does not exist")
    return root


def known_datasets(root: Path) -> list[str]:
    """The ``Dataset*`` folder names in ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("Dataset"))


def find_dataset_folder(root: Path, dataset: str | int) -> Path | None:
    """``root/DatasetXXX_Name`` for a dataset id or name, or None when there is not exactly one."""
    if not root.is_dir():
        return None
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        return root / text if (root / text).is_dir() else None
    try:
        prefix = f"Dataset{int(text):03d}_"
    except ValueError:
        return None
    matches = [name for name in known_datasets(root) if name.startswith(prefix)]
    return root / matches[0] if len(matches) == 1 else None


def resolve_dataset_name(dataset: str | int, root: Path, what: str) -> str:
    """``DatasetXXX_Name`` of a dataset id or name found in ``root`` (the folder of variable ``what``); a
    ``ValueError`` naming the folder and the datasets it has otherwise."""
    text = str(dataset).strip()
    folder = find_dataset_folder(root, text)
    if folder is not None:
        return folder.name
    if not text.startswith("Dataset"):
        try:
            int(text)
        except ValueError:
            raise ValueError(f"dataset '{text}' is neither an integer id nor a name starting with 'Dataset'") \
                from None
    raise ValueError(f"unknown dataset '{text}': no single folder for it in {what} ({root}); "
                     f"known: {known_datasets(root)}")


def dataset_folder(dataset: str | int, variable: str, root: str | Path | None = None) -> Path:
    """The folder of ``dataset`` in nnU-Net folder ``variable`` (``root`` overrides the environment)."""
    base = root_from_env(root, variable)
    return base / resolve_dataset_name(dataset, base, variable)


class NotWritableError(ValueError):
    """An output path that cannot be written; raised before the command starts its work."""


def check_writable(path: str | Path, what: str, fix: str = "choose a path in a folder you can write to") -> Path:
    """``path`` (a file or folder to create, fill or replace) if it can be written, else a ``NotWritableError``
    naming ``what`` (e.g. "output folder (-o)") and ``fix``. Nothing is created: an existing path must be writable
    (a folder: entries can be added), otherwise its nearest existing parent must be a writable folder."""
    path = Path(path).expanduser()
    target = path.absolute()
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise NotWritableError(f"cannot write the {what} {path}: the folder is not writable; {fix}")
        return path
    if target.exists() and not os.access(target, os.W_OK):
        raise NotWritableError(f"cannot write the {what} {path}: the file is not writable; {fix}")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotWritableError(f"cannot write the {what} {path}: {parent} is a file, not a folder; {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NotWritableError(f"cannot write the {what} {path}: {parent} is not writable; {fix}")
    return path


def write_json_atomic(obj: Any, path: Path, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON indented by 4 (nnU-Net's ``save_json`` format; ``sort_keys`` as it does for splits)
    through a temporary file, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=4, sort_keys=sort_keys))
    os.replace(tmp, path)


FOREGROUND_MEAN = "foreground_mean"


def read_evaluator_summary(path: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The Dice of an nnU-Net evaluator ``summary.json``: (mean per label or region key, plus
    ``FOREGROUND_MEAN``; per case, keyed by the reference file's name, per key). NaN where nnU-Net wrote null
    (the class is absent in both). A ``ValueError`` naming the file when it is not such a summary."""
    try:
        summary = json.loads(Path(path).read_text())
        mean = {str(k): _dice(v) for k, v in summary["mean"].items()}
        mean[FOREGROUND_MEAN] = _dice(summary["foreground_mean"])
        cases: dict[str, dict[str, float]] = {}
        for entry in summary["metric_per_case"]:
            case = Path(entry["reference_file"]).name
            if case in cases:
                raise ValueError(f"case {case} listed twice")
            cases[case] = {str(k): _dice(m) for k, m in entry["metrics"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an nnU-Net summary.json (no Dice in 'mean'/'foreground_mean'/"
                         f"'metric_per_case': {e}); re-run nnUNetv2_train ... --val") from None
    return mean, cases


def _dice(metrics: dict) -> float:
    return float("nan") if metrics["Dice"] is None else float(metrics["Dice"])
