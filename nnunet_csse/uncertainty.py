"""UAFS uncertainty maps at inference, through nnU-Net's own predictor.

The paper visualizes the UAFS entropy H (method.md section 1) as an uncertainty map. Here the full-resolution
decoder stage's H is produced by nnU-Net's sliding-window predictor itself: the network is temporarily wrapped
so that its "logits" are H (``UncertaintyAsLogits``), so tiling, Gaussian weighting, mirroring and fold
ensembling are nnU-Net's. The map then goes back to the input's geometry the way nnU-Net exports probabilities
(resample, undo the crop, undo the transpose).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_csse.network import CSSEUNet


class UncertaintyAsLogits(nn.Module):
    """Wraps a CSSE network so its output is the UAFS uncertainty H of resolution level ``level``.

    Output (B, num_heads, *spatial): H repeated over channels, because nnU-Net's predictor allocates its
    aggregation buffer with the number of segmentation heads. ``load_state_dict`` goes to the wrapped network
    so the predictor can load each fold's weights as usual.
    """

    def __init__(self, network: CSSEUNet, num_heads: int, level: int = 0) -> None:
        super().__init__()
        self.network = network
        self.num_heads = num_heads
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.network.uncertainty_maps(x)[self.level]
        return h.repeat(1, self.num_heads, *([1] * (h.ndim - 2)))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


def csse_network_of(predictor) -> CSSEUNet:
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if not isinstance(network, CSSEUNet) or network.decoder_uafs is None:
        raise ValueError(
            f"this model's network ({type(network).__name__}) has no UAFS blocks; uncertainty maps need a model "
            f"trained with a UAFS trainer (nnUNetTrainerUAFS, nnUNetTrainerCSSE, ...)"
        )
    return network


def predict_uncertainty(predictor, data: torch.Tensor) -> torch.Tensor:
    """H for preprocessed ``data`` (C, *spatial) -> (1, *spatial) float32, in the preprocessed geometry."""
    original = predictor.network
    predictor.network = UncertaintyAsLogits(csse_network_of(predictor),
                                            predictor.label_manager.num_segmentation_heads)
    try:
        return predictor.predict_logits_from_preprocessed_data(data)[:1].float()
    finally:
        predictor.network = original


def to_input_geometry(maps: torch.Tensor | np.ndarray, predictor, properties: dict) -> np.ndarray:
    """(C, *preprocessed spatial) maps -> (C, *input spatial) float32, as nnU-Net exports probabilities."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    target_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape) else \
        [target_spacing[0], *configuration_manager.spacing]
    resampled = configuration_manager.resampling_fn_probabilities(maps, shape, current_spacing, target_spacing)
    resampled = np.asarray(resampled.cpu() if isinstance(resampled, torch.Tensor) else resampled, np.float32)
    full = np.zeros((resampled.shape[0], *properties["shape_before_cropping"]), np.float32)
    full = np.stack([insert_crop_into_image(full[c], resampled[c], properties["bbox_used_for_cropping"])
                     for c in range(full.shape[0])])
    return full.transpose([0] + [i + 1 for i in plans_manager.transpose_backward])


def preprocess_case(predictor, files: Sequence[str]) -> tuple[np.ndarray, torch.Tensor, dict]:
    """Read one case's channel files and preprocess them as nnU-Net's predictor does.

    Returns (image (C, *input spatial) as read, preprocessed data (C, *spatial), properties)."""
    image, properties = predictor.plans_manager.image_reader_writer_class().read_images(list(files))
    data, _, properties = predictor.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
        image, None, properties, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    return image, torch.from_numpy(data), properties


def write_float_image(array: np.ndarray, path: Path, properties: dict) -> None:
    """Write a (1 or Z, Y, X) float map with the input's spacing/origin/direction (SimpleITK-read inputs)."""
    import SimpleITK as sitk

    geometry = properties.get("sitk_stuff")
    if geometry is None:
        raise ValueError("uncertainty maps are written for inputs read with SimpleITK (e.g. NIfTI, .mha); this "
                         "dataset uses another reader")
    image = sitk.GetImageFromArray(array[0] if len(geometry["spacing"]) == 2 else array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(path), True)


def save_overlay(image: np.ndarray, segmentation: np.ndarray, uncertainty: np.ndarray, path: Path,
                 title: str = "") -> None:
    """PNG of the central slice: image, segmentation contours, uncertainty H. Arrays are (Z, Y, X)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = image.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(image[z], cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(image[z], cmap="gray")
    if segmentation[z].max() > 0:
        axes[1].contour(segmentation[z], levels=np.arange(0.5, segmentation.max() + 1), cmap="autumn")
    axes[1].set_title("segmentation")
    shown = axes[2].imshow(uncertainty[z], cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("UAFS uncertainty H")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict_folder_with_uncertainty(
    model_folder: str | Path,
    input_folder: str | Path,
    output_folder: str | Path,
    folds: Sequence[int | str] = (0,),
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    use_mirroring: bool = True,
) -> list[Path]:
    """Segment every case of ``input_folder`` and write its UAFS uncertainty map and a PNG overlay.

    Per case: ``<case><ending>`` (segmentation, nnU-Net's export), ``<case>_uncertainty<ending>`` (H in [0, 1],
    float32, same geometry as the input) and ``<case>_overlay.png``. Returns the uncertainty files.
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    output_folder = Path(output_folder)
    predictor = nnUNetPredictor(device=torch.device(device), use_mirroring=use_mirroring, verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name=checkpoint)
    csse_network_of(predictor)  # fail before reading any image
    ending = predictor.dataset_json["file_ending"]
    cases = create_lists_from_splitted_dataset_folder(str(input_folder), ending)
    if not cases:
        raise ValueError(f"no '{ending}' images named CASE_0000{ending} in {input_folder}")
    output_folder.mkdir(parents=True, exist_ok=True)
    reader = predictor.plans_manager.image_reader_writer_class()
    written = []
    for files in cases:
        case = Path(files[0]).name[: -len(f"_0000{ending}")]
        image, data, properties = preprocess_case(predictor, files)
        logits = predictor.predict_logits_from_preprocessed_data(data)
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
        reader.write_seg(segmentation, str(output_folder / f"{case}{ending}"), properties)
        uncertainty = to_input_geometry(predict_uncertainty(predictor, data), predictor, properties)[0]
        target = output_folder / f"{case}_uncertainty{ending}"
        write_float_image(uncertainty, target, properties)
        save_overlay(image[0], segmentation, uncertainty, output_folder / f"{case}_overlay.png", case)
        written.append(target)
    return written
