"""Fine-tune a CSSE trainer from plain nnU-Net weights (``nnunet-csse pretrained``).

``nnUNetv2_train ... -pretrained_weights FILE`` runs nnU-Net's ``load_pretrained_weights``, which requires every
key of the network being trained (segmentation heads aside) to be in FILE. A checkpoint of ``nnUNetTrainer``
lacks the UAFS blocks and projection heads, so nnU-Net refuses it with "Key decoder_uafs... is missing". This
module writes a copy of such a checkpoint that adds those modules, freshly initialized as in a new CSSE
network; every weight of the nnU-Net U-Net itself is kept as pretrained (the CSSE network reuses its keys).
"""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import torch

from nnunet_csse.folders import check_writable, dataset_folder

CSSE_PREFIXES = ("decoder_uafs.", "encoder_uafs.", "pdcr_projections.")


def csse_trainers() -> dict[str, type]:
    """Every CSSE trainer nnU-Net finds through ``nnUNet_extTrainer`` (the re-exports of ``ext_trainers``): name ->
    class; the plain ``nnUNetTrainer`` variants (``nnUNetTrainer_demo``, ...) are not CSSE trainers."""
    import nnunet_csse.ext_trainers.nnunet_csse_trainers as exported
    from nnunet_csse.training import nnUNetTrainerCSSEBase

    return {name: c for name, c in vars(exported).items()
            if inspect.isclass(c) and issubclass(c, nnUNetTrainerCSSEBase) and c is not nnUNetTrainerCSSEBase}


def _trainer_class(name: str) -> type:
    trainers = csse_trainers()
    if name not in trainers:
        raise ValueError(f"'{name}' is not an nnunet-csse trainer; use one of {', '.join(sorted(trainers))}")
    return trainers[name]


def add_csse_modules(
    checkpoint: str | Path,
    output: str | Path,
    dataset: str | int,
    configuration: str,
    trainer: str = "nnUNetTrainerCSSE",
    plans: str = "nnUNetPlans",
    preprocessed_root: str | Path | None = None,
) -> list[str]:
    """Write ``output``: the nnU-Net checkpoint ``checkpoint`` plus freshly initialized CSSE modules.

    The CSSE network is built exactly as ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS`` builds
    it (plans, "csse" settings, input channels, segmentation heads). Returns the added state-dict keys.

    Raises:
        ValueError: unknown trainer/dataset/plans/configuration, ``checkpoint`` is not an nnU-Net checkpoint or
            its U-Net does not match the plans' network, or ``output`` exists.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint, output = Path(checkpoint), Path(output)
    trainer_class = _trainer_class(trainer)
    if checkpoint.is_dir():
        found = sorted(checkpoint.glob("*.pth")) or sorted(checkpoint.glob("fold_*/checkpoint_final.pth"))
        example = found[0] if found else checkpoint / "fold_0" / "checkpoint_final.pth"
        raise ValueError(f"-i {checkpoint} is a folder; pass a checkpoint file, e.g. -i {example}")
    if not checkpoint.is_file():
        raise ValueError(f"-i {checkpoint} does not exist; pass a checkpoint_final.pth written by nnUNetv2_train")
    if output.exists():
        raise ValueError(f"{output} exists; choose a new file name (the pretrained checkpoint is never overwritten)")
    check_writable(output, "output file (-o)")
    folder = dataset_folder(dataset, "nnUNet_preprocessed", preprocessed_root)
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise ValueError(f"no plans '{plans}' in {folder}; pass the plans identifier you will train with (-p)")
    plans_manager = PlansManager(json.loads(plans_file.read_text()))
    if configuration not in plans_manager.available_configurations:
        raise ValueError(f"configuration '{configuration}' is not in {plans_file.name}; available: "
                         f"{', '.join(plans_manager.available_configurations)}")
    configuration_manager = plans_manager.get_configuration(configuration)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, True)
    fresh = network.state_dict()

    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # not a torch file at all
        raise ValueError(f"{checkpoint} is not a PyTorch checkpoint ({type(e).__name__}); use a "
                         f"checkpoint_final.pth / checkpoint_best.pth written by nnUNetv2_train") from None
    if not isinstance(saved, dict) or "network_weights" not in saved:
        raise ValueError(f"{checkpoint} is not an nnU-Net checkpoint (no 'network_weights'); use a "
                         f"checkpoint_final.pth / checkpoint_best.pth written by nnUNetv2_train")
    weights = saved["network_weights"]
    # the same rule as nnU-Net's load_pretrained_weights: everything but the segmentation heads must match
    mismatched = [
        f"{key} (plans: {tuple(value.shape)}, checkpoint: "
        f"{tuple(weights[key].shape) if key in weights else 'missing'})"
        for key, value in fresh.items()
        if not key.startswith(CSSE_PREFIXES) and ".seg_layers." not in key
        and (key not in weights or weights[key].shape != value.shape)
    ]
    if mismatched:
        raise ValueError(f"the U-Net in {checkpoint} does not match the network of plans '{plans}', configuration "
                         f"'{configuration}': {'; '.join(mismatched[:5])}"
                         f"{f' and {len(mismatched) - 5} more' if len(mismatched) > 5 else ''}")
    added = [key for key in fresh if key.startswith(CSSE_PREFIXES) and key not in weights]
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {**weights, **{key: fresh[key] for key in added}}}, output)
    return added
