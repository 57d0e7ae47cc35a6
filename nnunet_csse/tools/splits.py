"""Limited-data cross-validation splits (``nnunet-csse split``).

The paper reports that CSSE trained on 25% of the training data matches nnU-Net trained on 100%. This module
derives such a split from the dataset's nnU-Net split, ``<nnUNet_preprocessed>/<Dataset>/splits_final.json``:

* every fold keeps its validation cases unchanged, so results stay comparable with full-data runs;
* the training cases of every fold are subsampled to ``round(fraction * n)`` cases (rounded half up, at least
  one), drawn with a seeded generator (numpy ``RandomState([seed, fold])``); the result depends only on the
  full split, the fraction and the seed. For one seed the subsets are nested: the 25% cases are the first
  cases of the 50% ones.
* if ``splits_final.json`` does not exist yet, the full split is nnU-Net's default one, exactly as
  ``nnUNetTrainer.do_split`` would create it: ``generate_crossval_split(sorted identifiers, seed=12345,
  n_splits=5)`` on the case identifiers of the preprocessed data (``<data_identifier>/*.b2nd|*.npz``;
  fallbacks: ``gt_segmentations/``, then ``nnUNet_raw/<Dataset>``).

Every fold of a limited split carries an extra key ``"csse_limited": {"fraction", "seed", "num_train_full"}``.
nnU-Net only reads ``"train"`` and ``"val"``; the key lets this tool recognise its own files.

How the limited split and ``splits_final.json`` coexist
-------------------------------------------------------
nnU-Net always trains on ``splits_final.json``; it has no option for another split file. Hence:

1. By default the limited split is written next to it as ``splits_final_frac<NN>_seed<S>.json`` (e.g.
   ``splits_final_frac25_seed0.json``) and ``splits_final.json`` is not touched. ``--output FILE`` writes
   elsewhere.
2. ``--install`` makes nnU-Net use it: the current ``splits_final.json`` is copied to
   ``splits_final.full.json`` (only if no backup exists yet, so the backup is always the full split) and the
   limited split is written as ``splits_final.json``. Installing another fraction or seed later derives it
   from the backup again. ``--restore`` moves the backup back, byte for byte. If ``splits_final.json`` did
   not exist, the backup holds nnU-Net's default split, which is what nnU-Net would have created.
   Both refuse to overwrite a ``splits_final.json`` that is neither the backup nor a limited split installed
   by this tool, so a file you edited is never lost.
3. Alternative that leaves the original dataset alone: a copy of the preprocessed dataset under another id,
   e.g. ``Dataset504_HippocampusFrac25`` with ``dataset.json``, the plans files (set ``"dataset_name"`` to the
   new name), symlinks to the ``<data_identifier>`` folders and ``gt_segmentations``, and the limited split
   as its ``splits_final.json``. Its results land under their own dataset name.

The results folder ``<trainer>__<plans>__<configuration>`` does not record which split was used. With
``--install``, a limited-data run and a full-data run of the same trainer and plans write into the same
folder. Keep them apart with a plans identifier of their own: copy ``nnUNetPlans.json`` to
``nnUNetPlansFrac25.json`` and set its ``"plans_name"`` to ``"nnUNetPlansFrac25"`` (the ``data_identifier`` is
unchanged, so nothing is preprocessed again), then train with ``-p nnUNetPlansFrac25``. Compare with
``nnunet-csse compare ... -tr nnUNetTrainer nnUNetTrainerCSSE__nnUNetPlansFrac25``. Restore the full split
before running ``nnUNetv2_plan_and_preprocess`` again if ``nnUNet_raw/<Dataset>/splits_final.json`` exists
(nnU-Net checks that it matches the preprocessed one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_csse.folders import check_writable, dataset_folder, write_json_atomic

SPLITS_FILE = "splits_final.json"
BACKUP_FILE = "splits_final.full.json"
MARKER = "csse_limited"
NNUNET_SPLIT_SEED = 12345  # nnUNetTrainer.do_split
NNUNET_N_SPLITS = 5

Splits = list[dict[str, Any]]


@dataclass
class LimitedSplit:
    """What ``make_limited_split`` did."""

    path: Path  # the file written (splits_final.json when installed)
    splits: Splits  # the limited split as written
    source: str  # where the full split came from
    installed: bool = False
    backup: Path | None = None  # splits_final.full.json when installed
    warnings: list[str] = field(default_factory=list)


def dataset_identifiers(dataset_folder: str | Path, raw_root: str | Path | None = None) -> tuple[list[str], str]:
    """Sorted training case identifiers of a preprocessed dataset and where they were read from.

    Like nnU-Net (``infer_dataset_class(folder).get_identifiers(folder)``) from the preprocessed data folders
    (one per ``data_identifier``; their union if they disagree); fallbacks: ``gt_segmentations/`` with the
    ``file_ending`` of ``dataset.json``, then ``nnUNet_raw/<Dataset>`` (``dataset.json``'s ``"dataset"`` or
    ``labelsTr``). Returns ``([], "")`` when none of them exists.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import file_ending_dataset_mapping

    folder = Path(dataset_folder)
    found: dict[str, set[str]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "gt_segmentations"):
        endings = {f.name.split(".")[-1] for f in sub.iterdir() if f.is_file()} - {"pkl", "npy"}
        if len(endings) == 1 and (ending := endings.pop()) in file_ending_dataset_mapping:
            ids = file_ending_dataset_mapping[ending].get_identifiers(str(sub))
            if ids:
                found[sub.name] = set(ids)
    if found:
        union = set().union(*found.values())
        return sorted(union), "preprocessed folder(s) " + ", ".join(found)

    raw_base = raw_root or os.environ.get("nnUNet_raw")
    raw = Path(raw_base) / folder.name if raw_base else None
    raw_json = json.loads((raw / "dataset.json").read_text()) if raw and (raw / "dataset.json").is_file() else {}
    own_json = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else {}
    ending = own_json.get("file_ending") or raw_json.get("file_ending")
    gt = folder / "gt_segmentations"
    if ending and gt.is_dir():
        ids = sorted(f.name[: -len(ending)] for f in gt.iterdir() if f.name.endswith(ending))
        if ids:
            return ids, str(gt)
    if raw_json.get("dataset"):
        return sorted(raw_json["dataset"]), f"{raw / 'dataset.json'} ('dataset')"
    if raw and ending and (raw / "labelsTr").is_dir():
        ids = sorted(f.name[: -len(ending)] for f in (raw / "labelsTr").iterdir() if f.name.endswith(ending))
        if ids:
            return ids, str(raw / "labelsTr")
    return [], ""


def default_splits(identifiers: Sequence[str]) -> Splits:
    """nnU-Net's default 5-fold split, exactly as ``nnUNetTrainer.do_split`` creates it."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    keys = sorted(identifiers)
    if len(keys) < NNUNET_N_SPLITS:
        raise ValueError(f"nnU-Net's default {NNUNET_N_SPLITS}-fold split needs at least {NNUNET_N_SPLITS} "
                         f"training cases, the dataset has {len(keys)}")
    splits = generate_crossval_split(keys, seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_N_SPLITS)
    return [{"train": [str(k) for k in s["train"]], "val": [str(k) for k in s["val"]]} for s in splits]


# ----------------------------------------------------------------------------------------------- the subsampling
def limited_size(fraction: float, n: int) -> int:
    """``round(fraction * n)``, rounded half up, at least 1 (and at most n)."""
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0):  # also rejects nan
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    return fraction


def subsample_splits(splits: Splits, fraction: float, seed: int = 0) -> Splits:
    """The limited split: validation cases unchanged, training cases of fold ``i`` subsampled to
    ``limited_size(fraction, n_i)`` with ``numpy.random.RandomState([seed, i])`` (kept in their original
    order). Deterministic; for one seed a smaller fraction gives a subset of a larger one."""
    import numpy as np

    fraction = check_fraction(fraction)
    _check_structure(splits, "the full split")
    if any(MARKER in fold for fold in splits):
        raise ValueError("the source split is itself a limited split; start from the full split")
    out: Splits = []
    for i, fold in enumerate(splits):
        train = list(fold["train"])
        if not train:
            raise ValueError(f"fold {i} of the full split has no training cases")
        candidates = sorted(train)
        order = np.random.RandomState([int(seed) % 2**32, i]).permutation(len(candidates))
        keep = {candidates[j] for j in order[: limited_size(fraction, len(candidates))]}
        out.append({"train": [k for k in train if k in keep], "val": list(fold["val"]),
                    MARKER: {"fraction": fraction, "seed": int(seed), "num_train_full": len(train)}})
    return out


def limited_split_filename(fraction: float, seed: int) -> str:
    """``splits_final_frac<NN>_seed<S>.json``; NN is the percentage (``25``, ``05``, ``100``, ``12p5``)."""
    percent = round(check_fraction(fraction) * 100, 6)
    nn = f"{int(percent):02d}" if float(percent).is_integer() else f"{percent:g}".replace(".", "p")
    return f"splits_final_frac{nn}_seed{int(seed)}.json"


def _check_structure(splits: Any, what: str) -> None:
    if not isinstance(splits, list) or not splits or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list)
            for f in splits):
        raise ValueError(f"{what} is not an nnU-Net split (a list of {{'train': [...], 'val': [...]}})")


def _load(path: Path) -> Splits:
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    _check_structure(splits, str(path))
    return splits


def _is_limited_of(candidate: Any, full: Splits) -> bool:
    """True if ``candidate`` is exactly what ``subsample_splits(full, f, s)`` gives for its recorded f, s."""
    if not isinstance(candidate, list) or not candidate or not all(
            isinstance(f, dict) and isinstance(f.get(MARKER), dict) for f in candidate):
        return False
    meta = candidate[0][MARKER]
    try:
        return subsample_splits(full, meta["fraction"], meta["seed"]) == candidate
    except (KeyError, TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- the files
def _full_split(folder: Path, raw_root: str | Path | None) -> tuple[Splits, str, list[str]]:
    """(full split, where it came from, warnings); refuses when splits_final.json and the backup conflict."""
    current, backup = folder / SPLITS_FILE, folder / BACKUP_FILE
    warnings: list[str] = []
    if backup.is_file():
        full = _load(backup)
        if current.is_file():
            cur = current.read_bytes()
            same = cur == backup.read_bytes()
            if not same:
                try:
                    parsed = json.loads(cur)
                except json.JSONDecodeError:
                    parsed = None
                same = parsed == full
                if not same and not _is_limited_of(parsed, full):
                    raise ValueError(
                        f"{current} differs from the backup {backup.name} and is not a limited split installed by "
                        f"nnunet-csse; refusing to guess which is the full split. Move one of them away (or delete "
                        f"a stale backup) and run again")
        return full, str(backup), warnings
    if current.is_file():
        full = _load(current)
        if any(MARKER in fold for fold in full):
            raise ValueError(f"{current} is a limited split written by nnunet-csse but its backup {backup.name} is "
                             f"missing, so the full split is unknown. Put the full split back as {SPLITS_FILE}")
        return full, str(current), warnings
    identifiers, where = dataset_identifiers(folder, raw_root)
    if not identifiers:
        raise ValueError(f"{current} does not exist and no case identifiers were found (no preprocessed data "
                         f"folders, gt_segmentations or nnUNet_raw/{folder.name}); run "
                         f"nnUNetv2_plan_and_preprocess first")
    warnings.append(f"{SPLITS_FILE} does not exist yet; using nnU-Net's default 5-fold split (seed "
                    f"{NNUNET_SPLIT_SEED}) of the {len(identifiers)} cases in {where}, as nnU-Net would create it")
    return default_splits(identifiers), f"nnU-Net default split of {where}", warnings


def _validate_ids(splits: Splits, folder: Path, raw_root: str | Path | None, warnings: list[str]) -> None:
    identifiers, where = dataset_identifiers(folder, raw_root)
    used = {k for fold in splits for k in fold["train"] + fold["val"]}
    if not identifiers:
        warnings.append("could not list the dataset's cases (no preprocessed data folders, gt_segmentations or "
                        "raw dataset); case identifiers not checked")
        return
    missing = sorted(used - set(identifiers))
    if missing:
        raise ValueError(f"the split names {len(missing)} case(s) that are not in the dataset ({where}): "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")


def _dataset_folder(dataset: str | int, preprocessed_root: str | Path | None) -> Path:
    return dataset_folder(dataset, "nnUNet_preprocessed", preprocessed_root)


def make_limited_split(
    dataset: str | int,
    fraction: float,
    seed: int = 0,
    output: str | Path | None = None,
    install: bool = False,
    preprocessed_root: str | Path | None = None,
    raw_root: str | Path | None = None,
) -> LimitedSplit:
    """Write a limited-data split of ``dataset``'s nnU-Net split.

    Args:
        dataset: dataset id or name (``4`` or ``Dataset004_Hippocampus``).
        fraction: share of each fold's training cases to keep, in (0, 1].
        seed: seed of the subsampling.
        output: file to write (default ``splits_final_frac<NN>_seed<S>.json`` next to ``splits_final.json``).
        install: write the limited split as ``splits_final.json`` instead, after backing up the full split to
            ``splits_final.full.json`` (once). Exclusive with ``output``.
        preprocessed_root: default ``$nnUNet_preprocessed``; raw_root: default ``$nnUNet_raw`` (only needed
            when no preprocessed data exists to list the cases).

    Raises:
        ValueError: bad fraction, unknown dataset, unknown case ids, or a ``splits_final.json`` that would be lost.
    """
    fraction = check_fraction(fraction)
    if install and output is not None:
        raise ValueError("--install and --output exclude each other")
    folder = _dataset_folder(dataset, preprocessed_root)
    full, source, warnings = _full_split(folder, raw_root)
    _validate_ids(full, folder, raw_root, warnings)
    limited = subsample_splits(full, fraction, seed)
    current, backup = folder / SPLITS_FILE, folder / BACKUP_FILE

    if install:
        check_writable(current, "split file", "nnU-Net reads it from the dataset's folder: make that folder writable")
        if not backup.is_file():
            if current.is_file():
                shutil.copyfile(current, backup)
            else:
                write_json_atomic(full, backup, sort_keys=True)
        write_json_atomic(limited, current, sort_keys=True)
        return LimitedSplit(current, limited, source, installed=True, backup=backup, warnings=warnings)

    target = Path(output) if output is not None else folder / limited_split_filename(fraction, seed)
    if target.resolve() in (current.resolve(), backup.resolve()):
        raise ValueError(f"refusing to write {target}: use --install to replace {SPLITS_FILE} (it keeps a backup)")
    if target.is_file():
        try:
            existing = json.loads(target.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None
        if not (isinstance(existing, list) and existing and all(
                isinstance(f, dict) and MARKER in f for f in existing)):
            raise ValueError(f"{target} exists and is not a limited split written by nnunet-csse; refusing to "
                             f"overwrite it")
    check_writable(target, "split file (--output)" if output is not None else "split file")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(limited, target, sort_keys=True)
    return LimitedSplit(target, limited, source, warnings=warnings)


def restore_full_split(dataset: str | int, preprocessed_root: str | Path | None = None) -> Path:
    """Move ``splits_final.full.json`` back to ``splits_final.json`` (exact bytes); returns its path.

    Refuses if there is no backup, or if ``splits_final.json`` is neither equal to the backup nor a limited
    split installed by nnunet-csse (it would be lost).
    """
    folder = _dataset_folder(dataset, preprocessed_root)
    current, backup = folder / SPLITS_FILE, folder / BACKUP_FILE
    if not backup.is_file():
        raise ValueError(f"no backup {backup} to restore (nothing was installed with --install, or it was "
                         f"restored already)")
    if current.is_file() and current.read_bytes() != backup.read_bytes():
        full = _load(backup)
        try:
            parsed = json.loads(current.read_bytes())
        except json.JSONDecodeError:
            parsed = None
        if parsed != full and not _is_limited_of(parsed, full):
            raise ValueError(f"{current} differs from the backup and is not a limited split installed by "
                             f"nnunet-csse; refusing to overwrite it. Move it away first to restore {backup.name}")
    check_writable(current, "split file", "nnU-Net reads it from the dataset's folder: make that folder writable")
    os.replace(backup, current)
    return current


# ----------------------------------------------------------------------------------------------- CLI
EPILOG = """\
nnU-Net always trains on <nnUNet_preprocessed>/<Dataset>/splits_final.json. By default the limited split is
written next to it as splits_final_frac<NN>_seed<S>.json and splits_final.json is left alone.
  --install   copy splits_final.json to splits_final.full.json (once: the backup is always the full split) and
              write the limited split as splits_final.json, so nnUNetv2_train uses it
  --restore   move splits_final.full.json back to splits_final.json (byte for byte)
Both refuse to overwrite a splits_final.json that is neither the backup nor a split installed by this command.
Validation cases of every fold are unchanged; training cases are subsampled (seeded) to round(fraction * n),
rounded half up, at least 1.

The results folder <trainer>__<plans>__<config> does not record the split: train limited-data runs with a copy
of the plans (nnUNetPlans.json -> nnUNetPlansFrac25.json, "plans_name": "nnUNetPlansFrac25"; same
data_identifier, no new preprocessing) and -p nnUNetPlansFrac25. Alternative: a copy of the preprocessed
dataset under another id (plans with the new "dataset_name", symlinked data folders) whose splits_final.json
is the limited split.

examples:
  nnunet-csse split -d 4 --fraction 0.25 --seed 0            # writes splits_final_frac25_seed0.json
  nnunet-csse split -d 4 --fraction 0.25 --install
  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerCSSE -p nnUNetPlansFrac25
  nnunet-csse split -d 4 --restore
"""


def _cmd_split(args: argparse.Namespace) -> int:
    if args.restore:
        if args.install or args.output is not None or args.fraction is not None:
            raise ValueError("--restore takes no --fraction, --output or --install")
        path = restore_full_split(args.dataset)
        print(f"restored the full split as {path}")
        return 0
    if args.fraction is None:
        raise ValueError("--fraction is required (or pass --restore)")
    result = make_limited_split(args.dataset, args.fraction, args.seed, output=args.output, install=args.install)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"full split: {result.source}")
    for i, fold in enumerate(result.splits):
        print(f"fold {i}: {len(fold['train'])} of {fold[MARKER]['num_train_full']} training cases, "
              f"{len(fold['val'])} validation cases (unchanged)")
    if result.installed:
        print(f"installed as {result.path} (full split backed up in {result.backup}; undo with --restore)")
    else:
        print(f"wrote {result.path} ({SPLITS_FILE} unchanged; pass --install to train on it)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``split`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "split", help="limited-data split: subsample each fold's training cases, keep validation cases",
        description="Write a limited-data version of a dataset's nnU-Net cross-validation split.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--fraction", type=float, default=None,
                   help="share of each fold's training cases to keep, in (0, 1], e.g. 0.25 (no default: required "
                        "unless --restore)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output", default=None, help="file to write (default: splits_final_frac<NN>_seed<S>.json "
                                                      "next to splits_final.json)")
    where.add_argument("--install", action="store_true",
                       help="back up splits_final.json to splits_final.full.json and replace it by the limited split "
                            "(without it: splits_final.json is left alone)")
    p.add_argument("--restore", action="store_true",
                   help="put splits_final.full.json back as splits_final.json (without it: --fraction writes a "
                        "limited split)")
    p.set_defaults(func=_cmd_split)
