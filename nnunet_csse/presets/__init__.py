"""Plans presets: derive a new nnU-Net plans identifier with CSSE settings and/or a smaller network.

A preset (``plans/<name>.json``) may hold:
    "description": text
    "csse":        settings merged into each chosen configuration's "csse" dict (see ``CSSEConfig``)
    "network":     {"base_features": F, "max_features": M}: features_per_stage = min(F * 2**i, M)
    "batch_size":  int

``apply_preset`` reads ``<nnUNet_preprocessed>/<dataset>/<source>.json`` and writes
``<source>CSSE_<preset>.json`` (or an identifier of the caller's choice) next to it, optionally with single
settings on top of the preset's (``nnunet-csse plans apply/set --set KEY=VALUE``, parsed by ``parse_settings``);
nnU-Net's own plans file is never written. The new configurations keep their ``data_identifier``, so the
preprocessed data is shared and nothing needs preprocessing again.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_csse import folders
from nnunet_csse.config import CSSEConfig
from nnunet_csse.folders import check_writable

PRESET_KEYS = {"description", "csse", "network", "batch_size"}
MARKER = "csse_preset"  # written into derived plans so we only ever replace our own files


def presets_dir() -> Path:
    """The folder of the shipped preset JSON files (this package)."""
    return Path(__file__).resolve().parent


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_preset(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(name, preset dict) for a shipped preset name or a path to a preset JSON; validated."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = presets_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown plans preset '{name_or_path}'; available: {', '.join(list_presets())} "
                             f"(or pass the path of a preset .json file)")
    preset = json.loads(path.read_text())
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise ValueError(f"preset {path} has unknown key(s) {unknown}; allowed: {sorted(PRESET_KEYS)}")
    CSSEConfig().with_overrides(preset.get("csse"), source=f"preset {path}")  # validates
    network = preset.get("network", {})
    if set(network) - {"base_features", "max_features"} or not all(
            isinstance(v, int) and v >= 1 for v in network.values()):
        raise ValueError(f"preset {path}: 'network' takes positive integers 'base_features' and 'max_features'")
    if "batch_size" in preset and not (isinstance(preset["batch_size"], int) and preset["batch_size"] >= 1):
        raise ValueError(f"preset {path}: 'batch_size' must be a positive integer")
    return path.stem, preset


def derived_identifier(source: str, preset_name: str) -> str:
    return f"{source}CSSE_{preset_name}"


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["pdcr_temperature=1.0", "pdcr_windows=rf"]`` -> ``{"pdcr_temperature": 1.0, "pdcr_windows": "rf"}``.

    A value is read as JSON (true, 0.5, [2, 3], null, "rf"); one that is not JSON is taken as a string (a bare
    word). Only the syntax is checked here; ``apply_preset`` validates the settings as a plans' "csse" block."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got '{item}'; e.g. --set pdcr_temperature=1.0 or --set "
                             f"pdcr_encoder_stages=[2,3] (keys: {', '.join(sorted(CSSEConfig().to_json()))})")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text.strip()
    return settings


IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_identifier(identifier: str, source_plans: str) -> None:
    if not IDENTIFIER.fullmatch(identifier) or "__" in identifier:
        raise ValueError(f"'{identifier}' is not a usable plans identifier: give letters, digits, '_' and '-' "
                         f"without '.json' and without '__' (nnU-Net's results folders are "
                         f"<trainer>__<plans>__<configuration>), e.g. nnUNetPlansMine")
    if identifier == source_plans:
        raise ValueError(f"the new plans identifier '{identifier}' is the source plans; choose another name so the "
                         f"source stays as it is")


def write_plans_preset(
    preset: str | None,
    dataset: str | int,
    configurations: Sequence[str] | None = None,
    source_plans: str = "nnUNetPlans",
    preprocessed_root: str | Path | None = None,
    force: bool = False,
    settings: Mapping[str, Any] | None = None,
    identifier: str | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[Path, bool]:
    """Write ``<source>CSSE_<preset>.json`` (or ``<identifier>.json``) for ``dataset``; returns its path and whether
    it was written (False: an identical file was there and is left as it is).

    Args:
        preset: shipped preset name (``nnunet-csse plans list``) or a path to a preset JSON; None: only
            ``settings`` (then ``identifier`` is required).
        dataset: dataset id or name (``4`` or ``Dataset004_Hippocampus``).
        configurations: configurations to change (default: all); the others are copied unchanged.
        source_plans: the plans identifier to start from.
        preprocessed_root: default ``$nnUNet_preprocessed``.
        force: replace an existing file of ours that differs from what this call writes (without it: a
            ValueError, so hand edits are never lost; an identical file is left as it is). A file not written by
            nnunet-csse (nnU-Net's own plans) is never replaced.
        settings: CSSE settings merged over the preset's into each chosen configuration's "csse" block; the
            merged block is validated as the trainers validate it (``CSSEConfig.with_overrides``).
        identifier: the new plans identifier (default ``<source>CSSE_<preset>``).
        on_warning: called with each warning about settings that train but are unusual (default:
            ``warnings.warn``).

    Before anything is written, every chosen configuration is checked as ``nnUNetv2_train -tr
    nnUNetTrainerCSSE`` checks it (``check_trainable``): a plans file that could not train is never written.
    """
    if preset is None:
        if identifier is None:
            raise ValueError("without a preset, give the new plans identifier (--name), e.g. --name nnUNetPlansMine")
        name, spec = None, {}
    else:
        name, spec = load_preset(preset)
    if settings:
        spec = {**spec, "csse": {**spec.get("csse", {}), **settings}}
    identifier = identifier if identifier is not None else derived_identifier(source_plans, name)
    _check_identifier(identifier, source_plans)
    try:
        dataset_folder = folders.dataset_folder(dataset, "nnUNet_preprocessed", preprocessed_root)
    except ValueError as e:
        raise ValueError(f"{e}. Plan and preprocess it with nnUNetv2_plan_and_preprocess -d {dataset} first") \
            from None
    source_file = dataset_folder / f"{source_plans}.json"
    if not source_file.is_file():
        available = sorted(p.stem for p in dataset_folder.glob("*.json") if "Plans" in p.stem)
        raise ValueError(f"no plans '{source_plans}' in {dataset_folder}; available: {available}. Run "
                         f"nnUNetv2_plan_and_preprocess -d {dataset} first or pass --source-plans")
    plans = json.loads(source_file.read_text())
    available = list(plans["configurations"])
    chosen = list(configurations) if configurations else available
    missing = [c for c in chosen if c not in available]
    if missing:
        raise ValueError(f"configuration(s) {missing} do not exist in {source_file.name} of {dataset_folder.name}; "
                         f"available: {available}")

    derived = copy.deepcopy(plans)
    derived["plans_name"] = identifier
    derived[MARKER] = {"preset": name, "source_plans": source_plans, "configurations": chosen}
    if settings:
        derived[MARKER]["settings"] = dict(settings)
    for config_name in chosen:
        configuration = derived["configurations"][config_name]
        _apply_to_configuration(configuration, spec)
        if settings:  # the block as the trainers will read it: source plans' settings + preset + these
            CSSEConfig().with_overrides(configuration["csse"], source=(
                f"configuration '{config_name}' of {source_plans}.json with settings "
                f"{json.dumps(dict(settings))}"))
    dataset_json_file = dataset_folder / "dataset.json"
    dataset_json = json.loads(dataset_json_file.read_text()) if dataset_json_file.is_file() else None
    for message in check_trainable(derived, chosen, dataset_json):
        (on_warning or warnings.warn)(message)
    target = dataset_folder / f"{identifier}.json"
    check_writable(target, "plans file", "it belongs next to the dataset's nnU-Net plans: make that folder writable")
    if target.exists():
        existing = json.loads(target.read_text())
        if MARKER not in existing:
            raise ValueError(f"{target} exists and was not written by nnunet-csse; refusing to overwrite it. "
                             f"Choose another plans identifier (--name)")
        if existing == derived:
            return target, False
        if not force:
            what = (f"preset '{name}'" + (" with these settings" if settings else "")) if name else "this call"
            raise ValueError(f"{target} exists and differs from what {what} writes (edited by hand, or "
                             f"applied to other configurations or settings); pass --force to replace it")
    folders.write_json_atomic(derived, target)
    return target, True


def apply_preset(*args: Any, **kwargs: Any) -> Path:
    """``write_plans_preset``, returning only the path of the plans file."""
    return write_plans_preset(*args, **kwargs)[0]


CHECKED_TRAINER = "nnUNetTrainerCSSE"  # the trainer ``nnunet-csse plans`` names in its "train with:" line


def check_trainable(plans: dict, configurations: Sequence[str], dataset_json: dict | None) -> list[str]:
    """Run the checks ``nnUNetv2_train -tr nnUNetTrainerCSSE`` runs on ``plans`` (``check_plans_for_trainer``:
    network class, settings, levels against the network, windows against the patch, labels) for each of
    ``configurations``; a ``ValueError`` saying so, or the warnings the trainer would log."""
    from nnunet_csse.training import check_plans_for_trainer, nnUNetTrainerCSSE

    found = []
    for name in configurations:
        try:
            _, _, warnings_ = check_plans_for_trainer(nnUNetTrainerCSSE.csse_defaults, plans, name, dataset_json)
        except ValueError as e:
            raise ValueError(f"{e} (nnUNetv2_train -tr {CHECKED_TRAINER} would stop with this; nothing was "
                             f"written)") from None
        found += warnings_
    return found


def _apply_to_configuration(configuration: dict, spec: dict) -> None:
    if "csse" in spec:
        configuration["csse"] = {**configuration.get("csse", {}), **spec["csse"]}
    if "batch_size" in spec:
        configuration["batch_size"] = spec["batch_size"]
    network = spec.get("network")
    arch = configuration.get("architecture", {}).get("arch_kwargs")
    if network and arch is not None:  # configurations that inherit their architecture get it from the parent
        base, cap = network.get("base_features", 32), network.get("max_features", 320)
        arch["features_per_stage"] = [min(base * 2**i, cap) for i in range(arch["n_stages"])]
