"""``nnunet-csse split``: limited-data versions of a dataset's nnU-Net cross-validation split.

Each fold keeps its validation cases and subsamples its training cases (:func:`nnunet_csse.subsets.training_subset`).
The split is written next to ``splits_final.json`` or installed in its place (the full split backed up), so that every
trainer, the plain ``nnUNetTrainer`` included, trains on it. See docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_csse.folders import check_writable, dataset_folder, write_json_atomic
from nnunet_csse.subsets import check_fraction, fraction_tag, training_subset

SPLITS_FILE, BACKUP_FILE = "splits_final.json", "splits_final.full.json"
MARKER = "csse_limited"  # in every fold of a limited split: {"fraction", "seed", "num_train_full"}
NNUNET_SPLIT_SEED, NNUNET_N_SPLITS = 12345, 5  # nnUNetTrainer.do_split
WRITABLE_FIX = "nnU-Net reads it from the dataset's folder: make that folder writable"
Splits = list[dict[str, Any]]


@dataclass
class LimitedSplit:
    """What :func:`make_limited_split` wrote; ``source``: where the full split came from."""

    path: Path
    splits: Splits
    source: str
    installed: bool = False
    backup: Path | None = None
    warnings: list[str] = field(default_factory=list)


def dataset_identifiers(folder: str | Path) -> tuple[list[str], str]:
    """Sorted case identifiers of a preprocessed dataset (the union over its data folders, read with nnU-Net's
    dataset classes) and those folders; ``([], "")`` when there are none."""
    from nnunetv2.training.dataloading.nnunet_dataset import file_ending_dataset_mapping

    found: dict[str, set[str]] = {}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and p.name != "gt_segmentations"):
        endings = {f.name.split(".")[-1] for f in sub.iterdir() if f.is_file()} - {"pkl", "npy"}
        if len(endings) == 1 and (ending := endings.pop()) in file_ending_dataset_mapping:
            if ids := file_ending_dataset_mapping[ending].get_identifiers(str(sub)):
                found[sub.name] = set(ids)
    return sorted(set().union(*found.values())), ("preprocessed folder(s) " + ", ".join(found) if found else "")


def subsample_splits(splits: Splits, fraction: float, seed: int = 0) -> Splits:
    """Per fold: the validation cases unchanged, ``training_subset(train, fraction, fold, seed)``, :data:`MARKER`."""
    fraction = check_fraction(fraction)
    if any(MARKER in fold for fold in splits):
        raise ValueError("the source split is itself a limited split; start from the full split")
    return [{"train": training_subset(fold["train"], fraction, i, seed), "val": list(fold["val"]),
             MARKER: {"fraction": fraction, "seed": int(seed), "num_train_full": len(fold["train"])}}
            for i, fold in enumerate(splits)]


def limited_split_filename(fraction: float, seed: int) -> str:
    return f"splits_final_{fraction_tag(fraction)}_seed{int(seed)}.json"


def _read(path: Path, what: str | None = None) -> Any:
    """The JSON in ``path`` (None if it is not JSON); with ``what``, a ValueError unless it is an nnU-Net split."""
    try:
        splits = json.loads(path.read_bytes())
    except ValueError:  # UnicodeDecodeError included
        splits = None
    if what and not (isinstance(splits, list) and splits and all(
            isinstance(f, dict) and all(isinstance(f.get(k), list) for k in ("train", "val")) for f in splits)):
        raise ValueError(f"{what} is not an nnU-Net split (a list of {{'train': [...], 'val': [...]}})")
    return splits


def _is_limited(candidate: Any, full: Splits | None = None) -> bool:
    """Written by this tool (with ``full``: exactly the limited split of ``full`` its marker names)."""
    try:
        marker = candidate[0][MARKER]
        return all(isinstance(f[MARKER], dict) for f in candidate) and (
            full is None or subsample_splits(full, marker["fraction"], marker["seed"]) == candidate)
    except (LookupError, TypeError, ValueError):
        return False


def _check_replaceable(current: Path, full: Splits) -> None:
    if current.is_file() and (splits := _read(current)) != full and not _is_limited(splits, full):
        raise ValueError(f"{current} differs from the backup {BACKUP_FILE} and is not a limited split installed by "
                         f"nnunet-csse; refusing to overwrite it. Move one of them away and run again")


def full_split(folder: Path) -> tuple[Splits, str, list[str]]:
    """(full split, where it came from, warnings): the backup while a limited split is installed, else
    ``splits_final.json``, else nnU-Net's default split of the preprocessed cases (as ``do_split`` makes it)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    current = folder / SPLITS_FILE
    for path in (p for p in (folder / BACKUP_FILE, current) if p.is_file()):
        if _is_limited(splits := _read(path, str(path))):
            raise ValueError(f"{path} is a limited split written by nnunet-csse but the backup {BACKUP_FILE} is "
                             f"missing, so the full split is unknown. Put the full split back as {SPLITS_FILE}")
        _check_replaceable(current, splits)
        return splits, str(path), []
    identifiers, where = dataset_identifiers(folder)
    if not identifiers:
        raise ValueError(f"{current} does not exist and {folder} has no preprocessed cases; run "
                         f"nnUNetv2_plan_and_preprocess first")
    if len(identifiers) < NNUNET_N_SPLITS:
        raise ValueError(f"nnU-Net's default {NNUNET_N_SPLITS}-fold split needs at least {NNUNET_N_SPLITS} "
                         f"training cases, the dataset has {len(identifiers)}")
    splits = generate_crossval_split(identifiers, seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_N_SPLITS)
    return [{k: [str(c) for c in s[k]] for k in ("train", "val")} for s in splits], \
        f"nnU-Net default split of {where}", [
        f"{SPLITS_FILE} does not exist yet; using nnU-Net's default 5-fold split (seed {NNUNET_SPLIT_SEED}) of the "
        f"{len(identifiers)} cases in {where}, as nnU-Net would create it"]


def make_limited_split(dataset: str | int, fraction: float, seed: int = 0, output: str | Path | None = None,
                       install: bool = False, preprocessed_root: str | Path | None = None) -> LimitedSplit:
    """Write the limited split of ``dataset`` at ``fraction`` to ``output`` (default ``splits_final_frac<NN>_seed
    <S>.json`` next to ``splits_final.json``) or, with ``install``, as ``splits_final.json``, the full split backed
    up once as ``splits_final.full.json``. ValueError for bad input or a file of the user's in the way."""
    fraction = check_fraction(fraction)
    folder = dataset_folder(dataset, "nnUNet_preprocessed", preprocessed_root)
    full, source, warnings = full_split(folder)
    identifiers, where = dataset_identifiers(folder)
    if unknown := sorted({k for f in full for k in f["train"] + f["val"]} - set(identifiers)) if identifiers else []:
        raise ValueError(f"the split names {len(unknown)} case(s) that are not in the dataset ({where}): "
                         f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    limited, current, backup = subsample_splits(full, fraction, seed), folder / SPLITS_FILE, folder / BACKUP_FILE
    target = current if install else Path(output) if output is not None else \
        folder / limited_split_filename(fraction, seed)
    if install:
        check_writable(current, "split file", WRITABLE_FIX)
        if current.is_file() and not backup.is_file():
            shutil.copyfile(current, backup)
        elif not backup.is_file():
            write_json_atomic(full, backup, sort_keys=True)
    else:
        if target.resolve() in (current.resolve(), backup.resolve()):
            raise ValueError(f"refusing to write {target}: use --install to replace {SPLITS_FILE} (it keeps a "
                             f"backup)")
        if target.is_file() and not _is_limited(_read(target)):
            raise ValueError(f"{target} exists and is not a limited split written by nnunet-csse; refusing to "
                             f"overwrite it")
        check_writable(target, "split file (--output)" if output is not None else "split file")
        target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(limited, target, sort_keys=True)
    return LimitedSplit(target, limited, source, install, backup if install else None, warnings)


def restore_full_split(dataset: str | int, preprocessed_root: str | Path | None = None,
                       missing_ok: bool = False) -> Path | None:
    """Move ``splits_final.full.json`` back to ``splits_final.json`` (byte for byte) and return its path; without a
    backup None (``missing_ok``) or a ValueError. Refuses to overwrite a ``splits_final.json`` of the user's."""
    folder = dataset_folder(dataset, "nnUNet_preprocessed", preprocessed_root)
    current, backup = folder / SPLITS_FILE, folder / BACKUP_FILE
    if not backup.is_file():
        if missing_ok:
            return None
        raise ValueError(f"no backup {backup} to restore (nothing was installed with --install, or it was "
                         f"restored already)")
    _check_replaceable(current, _read(backup, str(backup)))
    check_writable(current, "split file", WRITABLE_FIX)
    os.replace(backup, current)
    return current


EPILOG = """\
nnU-Net trains on <nnUNet_preprocessed>/<Dataset>/splits_final.json, whatever the trainer. Without --install the
limited split is written next to it as splits_final_frac<NN>_seed<S>.json. --install backs splits_final.json up
as splits_final.full.json (once: the backup is always the full split) and writes the limited split in its place;
--restore moves the backup back. Neither overwrites a splits_final.json that this command did not write. The results
folder does not record the split: train limited-data runs with a copy of the plans under another identifier (same
data_identifier), or on a copy of the dataset under another id.

examples:
  nnunet-csse split -d 4 --fraction 0.25 --install
  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer -p nnUNetPlansFrac25
  nnunet-csse split -d 4 --restore
"""


def _cmd_split(args: argparse.Namespace) -> int:
    if args.restore:
        if args.install or args.output is not None or args.fraction is not None:
            raise ValueError("--restore takes no --fraction, --output or --install")
        print(f"restored the full split as {restore_full_split(args.dataset)}")
        return 0
    if args.fraction is None:
        raise ValueError("--fraction is required (or pass --restore)")
    result = make_limited_split(args.dataset, args.fraction, args.seed, output=args.output, install=args.install)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"full split: {result.source}")
    for i, fold in enumerate(result.splits):
        print(f"fold {i}: {len(fold['train'])} of {fold[MARKER]['num_train_full']} training cases, "
              f"{len(fold['val'])} validation cases (unchanged)")
    print(f"installed as {result.path} (full split backed up in {result.backup}; undo with --restore)"
          if result.installed else f"wrote {result.path} ({SPLITS_FILE} unchanged; pass --install to train on it)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``split`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("split", help="limited-data split: subsample each fold's training cases, keep "
                              "validation cases", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Write a limited-data version of a dataset's nnU-Net cross-validation split.")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--fraction", type=float, help="share of each fold's training cases to keep, in (0, 1], e.g. "
                   "0.25 (no default: required unless --restore)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output", help="file to write (default: splits_final_frac<NN>_seed<S>.json next to "
                       "splits_final.json)")
    where.add_argument("--install", action="store_true", help="back up splits_final.json to splits_final.full.json "
                       "and replace it by the limited split (without it: splits_final.json is left alone)")
    p.add_argument("--restore", action="store_true", help="put splits_final.full.json back as splits_final.json "
                   "(without it: --fraction writes a limited split)")
    p.set_defaults(func=_cmd_split)
