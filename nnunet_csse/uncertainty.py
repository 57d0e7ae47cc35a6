"""UAFS uncertainty maps at inference, through nnU-Net's own predictor, in the same pass as the segmentation.

The paper visualizes the UAFS entropy H (docs/method.md section 1) as an uncertainty map. Here the full-resolution
decoder stage's H comes out of nnU-Net's sliding-window prediction of the segmentation itself: the network is
temporarily wrapped (``LogitsAndUncertainty``) so that its output is the K segmentation logits followed by the H
that the UAFS block computed in that same forward (kept by the block, see
``nnunet_csse.method.uafs.keeping_uncertainty``), and the predictor's aggregation buffer gets one channel more.
Tiling, Gaussian weighting, mirroring (flipped back, which is right for H too) and fold ensembling are nnU-Net's,
once per tile for both. The map then goes back to the
input's geometry the way nnU-Net exports probabilities (resample, undo the crop, undo the transpose).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_csse.folders import check_writable
from nnunet_csse.method.uafs import UAFSBlock, keeping_uncertainty
from nnunet_csse.network import CSSEUNet


class LogitsAndUncertainty(nn.Module):
    """Wraps a CSSE network so its output is its segmentation logits and, as one more channel, the UAFS
    uncertainty H of the full-resolution decoder stage, kept from the same forward (the branch runs once).

    Shapes: (B, C_in, *patch) -> (B, K + 1, *patch), channels ``[:K]`` the network's logits (unchanged, same
    dtype), channel ``K`` H in [0, 1] (cast to the logits' dtype). The network must not deep-supervise (nnU-Net's
    predictor builds it without). ``load_state_dict`` goes to the wrapped network so the predictor can load each
    fold's weights as usual.
    """

    def __init__(self, network: CSSEUNet) -> None:
        super().__init__()
        if network.decoder_uafs is None or not isinstance(network.decoder_uafs[-1], UAFSBlock):
            raise ValueError("this network has no decoder UAFS block at full resolution (trained without UAFS)")
        self.network = network

    @property
    def full_resolution_block(self) -> UAFSBlock:
        """The UAFS block after the last decoder stage (resolution level 0)."""
        return self.network.decoder_uafs[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with keeping_uncertainty([self.full_resolution_block]) as (block,):
            logits = self.network(x)
            h = block.kept_uncertainty
        if not isinstance(logits, torch.Tensor):
            raise ValueError("the network returned several outputs; switch deep supervision off for inference")
        if h is None or h.shape[2:] != logits.shape[2:]:
            raise RuntimeError(f"the full-resolution UAFS block kept no H of shape {tuple(logits.shape[2:])}")
        return torch.cat((logits, h.to(logits.dtype)), dim=1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


class _WithUncertaintyChannel:
    """A label manager that reports one segmentation head more (the predictor sizes its buffer with it)."""

    def __init__(self, label_manager) -> None:
        self._label_manager = label_manager

    @property
    def num_segmentation_heads(self) -> int:
        return self._label_manager.num_segmentation_heads + 1

    def __getattr__(self, name: str):
        return getattr(self._label_manager, name)


def csse_network_of(predictor) -> CSSEUNet:
    """The predictor's CSSE network (unwrapped from torch.compile); raises ``ValueError`` if it has no UAFS."""
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if not isinstance(network, CSSEUNet) or network.decoder_uafs is None:
        raise ValueError(
            f"this model's network ({type(network).__name__}) has no UAFS blocks; uncertainty maps need a model "
            f"trained with a UAFS trainer (nnUNetTrainerUAFS, nnUNetTrainerCSSE, ...)"
        )
    return network


@contextmanager
def predicting_logits_and_uncertainty(predictor) -> Iterator[int]:
    """Within the context the predictor's output is (K + 1, *spatial): logits, then H. Yields K.

    Swaps in ``LogitsAndUncertainty`` as the predictor's network and a label manager with one head more; both are
    restored on exit.
    """
    network, label_manager = predictor.network, predictor.label_manager
    predictor.network = LogitsAndUncertainty(csse_network_of(predictor))
    predictor.label_manager = _WithUncertaintyChannel(label_manager)
    try:
        yield label_manager.num_segmentation_heads
    finally:
        predictor.network, predictor.label_manager = network, label_manager


def predict_logits_and_uncertainty(predictor, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation logits and H for preprocessed ``data`` (C, *spatial), from one sliding-window prediction.

    Returns (logits (K, *spatial), exactly as ``predictor.predict_logits_from_preprocessed_data(data)``; H
    (1, *spatial) float32), both in the preprocessed geometry, on the CPU.
    """
    with predicting_logits_and_uncertainty(predictor) as num_heads:
        both = predictor.predict_logits_from_preprocessed_data(data)
    return both[:num_heads], both[num_heads:].float()


def predict_uncertainty(predictor, data: torch.Tensor) -> torch.Tensor:
    """H for preprocessed ``data`` (C, *spatial) -> (1, *spatial) float32, in the preprocessed geometry."""
    return predict_logits_and_uncertainty(predictor, data)[1]


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


UNCERTAINTY_LABEL = "H: normalized entropy of the UAFS branch\n0 = certain, 1 = maximally uncertain"


def label_color(label: int) -> str:
    """The colour of foreground label ``label`` (1, 2, ...) in the figures: matplotlib's tab10 cycle."""
    return f"C{(int(label) - 1) % 10}"


def label_names(dataset_json: Mapping) -> dict[int, str]:
    """Foreground label value -> name from a dataset.json; region datasets: the value ``regions_class_order``
    gives the region in the exported segmentation."""
    foreground = [(name, value) for name, value in dataset_json.get("labels", {}).items()
                  if value not in (0, [0], (0,))]
    order = dataset_json.get("regions_class_order")
    if order is not None:
        return {int(v): name for (name, _), v in zip(foreground, order)}
    return {int(value): name for name, value in foreground if isinstance(value, int)}


def show_uncertainty(ax, h: np.ndarray):
    """Draw a 2D H map in [0, 1] into ``ax`` with a colorbar of the panel's own height just right of it (an inset,
    so the panel keeps the size of its neighbours), labelled with what H is. Returns the colorbar."""
    shown = ax.imshow(h, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    colorbar = ax.figure.colorbar(shown, cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
    colorbar.set_label(UNCERTAINTY_LABEL, fontsize="small")
    colorbar.ax.tick_params(labelsize="small")
    return colorbar


def overlay_title(case: str, model_folder: str | Path, folds: Sequence[int | str]) -> str:
    """``case: <Dataset> <trainer>__<plans>__<configuration>, fold(s) ...`` for the overlay PNG."""
    model = Path(model_folder).resolve()
    dataset = f"{model.parent.name} " if model.parent.name.startswith("Dataset") else ""
    folds = [str(f) for f in folds]
    which = f"fold {folds[0]}" if len(folds) == 1 else f"folds {', '.join(folds)} (ensemble)"
    return f"{case}: {dataset}{model.name}, {which}"


def overlay_figure(image: np.ndarray, segmentation: np.ndarray, uncertainty: np.ndarray, title: str = "",
                   labels: Mapping[int, str] | None = None):
    """Figure of the central slice: image, one contour per label (legend under it), uncertainty H with its colorbar;
    the three panels have the same size. Arrays are (Z, Y, X); ``labels``: label value -> name (default: the
    values found in ``segmentation``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    z = image.shape[0] // 2
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image[z], cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(image[z], cmap="gray")
    labels = dict(labels) if labels is not None else {int(v): f"label {v}" for v in np.unique(segmentation) if v}
    for value in labels:
        if (segmentation[z] == value).any():
            axes[1].contour(segmentation[z] == value, levels=[0.5], colors=[label_color(value)], linewidths=1.5)
    axes[1].set_title("segmentation (contours)")
    show_uncertainty(axes[2], uncertainty[z])
    axes[2].set_title("UAFS uncertainty H")
    for ax in axes:
        ax.axis("off")
    if labels:
        axes[1].legend(handles=[Line2D([], [], color=label_color(v), lw=2, label=f"{v}: {name}")
                                for v, name in labels.items()], loc="upper center", bbox_to_anchor=(0.5, -0.01),
                       ncol=min(len(labels), 4), fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig


def save_overlay(image: np.ndarray, segmentation: np.ndarray, uncertainty: np.ndarray, path: Path,
                 title: str = "", labels: Mapping[int, str] | None = None) -> None:
    """``overlay_figure`` as PNG (100 dpi, 1200 x 440 px)."""
    overlay_figure(image, segmentation, uncertainty, title, labels).savefig(path, dpi=100)


def check_uncertainty_inputs(model_folder: str | Path, input_folder: str | Path, folds: Sequence[int | str],
                             checkpoint: str, output_folder: str | Path | None = None) -> list[list[str]]:
    """The cases of ``input_folder`` (channel files per case), after checking what ``nnunet-csse uncertainty``
    needs before it loads a model: the model folder with its dataset.json and plans, each fold's checkpoint,
    inputs named ``CASE_0000<ending>`` that are readable images, an output folder outside the input folder that
    can be written, and ``nnUNet_extTrainer`` finding the CSSE trainers. ``ValueError``s name the problem and the
    fix."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from nnunet_csse.environment import ext_trainer_problem

    model = Path(model_folder)
    if not (model / "dataset.json").is_file() or not (model / "plans.json").is_file():
        raise ValueError(f"{model} is not a trained nnU-Net model folder (no dataset.json / plans.json); pass "
                         f"-m <nnUNet_results>/<Dataset>/<trainer>__<plans>__<configuration>")
    for fold in folds:
        path = model / f"fold_{fold}" / checkpoint
        if not path.is_file():
            present = sorted(p.name for p in model.glob("fold_*"))
            raise ValueError(f"no {checkpoint} for fold {fold} in {model} (folds present: {present}); pass -f with "
                             f"a trained fold or -chk checkpoint_best.pth")
    ending = json.loads((model / "dataset.json").read_text())["file_ending"]
    input_path = Path(input_folder)
    if not input_path.is_dir():
        raise ValueError(f"input folder {input_path} does not exist")
    misnamed = sorted(p.name for p in input_path.iterdir()
                      if p.name.endswith(ending) and not re.search(rf"_\d{{4}}{re.escape(ending)}$", p.name))
    cases = create_lists_from_splitted_dataset_folder(str(input_path), ending)
    if misnamed or not cases:
        found = misnamed[:3] or sorted(p.name for p in input_path.iterdir())[:3]
        raise ValueError(f"no images named CASE_0000{ending} in {input_path} (found e.g. {found}); name them as "
                         f"nnUNetv2_predict expects, e.g. case_0000{ending}")
    if output_folder is not None:
        output = Path(output_folder)
        if output.absolute().resolve() == input_path.absolute().resolve() or \
                input_path.absolute().resolve() in output.absolute().resolve().parents:
            raise ValueError(f"the output folder -o {output} is the input folder -i {input_path} or inside it: the "
                             f"outputs would be read as inputs next time; choose an output folder outside {input_path}")
        if output.exists() and not output.is_dir():
            raise ValueError(f"the output folder -o {output} is a file; choose a folder")
        check_writable(output, "output folder (-o)")
    problem = ext_trainer_problem()
    if problem:
        raise ValueError(problem)
    plans = json.loads((model / "plans.json").read_text())
    if plans.get("image_reader_writer", "SimpleITKIO") == "SimpleITKIO":
        for files in cases:
            for file in files:
                _check_image_header(file)
    return cases


def _check_image_header(file: str) -> None:
    """A ``ValueError`` unless SimpleITK can read the image header of ``file`` (cheap: no voxels are read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError(f"{file} is not a readable image (SimpleITK cannot read it); remove it from the input "
                         f"folder or replace it by the image") from None


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
    float32, same geometry as the input) and ``<case>_overlay.png``; segmentation and H come from one
    sliding-window prediction (``predict_logits_and_uncertainty``). Returns the uncertainty files.
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    output_folder = Path(output_folder)
    cases = check_uncertainty_inputs(model_folder, input_folder, folds, checkpoint, output_folder)
    predictor = nnUNetPredictor(device=torch.device(device), use_mirroring=use_mirroring, verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name=checkpoint)
    csse_network_of(predictor)  # fail before reading any image
    ending = predictor.dataset_json["file_ending"]
    reader = predictor.plans_manager.image_reader_writer_class()
    names = label_names(predictor.dataset_json)
    written = []
    for files in cases:
        case = Path(files[0]).name[: -len(f"_0000{ending}")]
        try:
            image, data, properties = preprocess_case(predictor, files)
        except RuntimeError as e:  # e.g. a header SimpleITK reads but voxels it cannot
            raise ValueError(f"case {case} ({', '.join(files)}) could not be read as an image: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        output_folder.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        logits, h = predict_logits_and_uncertainty(predictor, data)
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
        reader.write_seg(segmentation, str(output_folder / f"{case}{ending}"), properties)
        uncertainty = to_input_geometry(h, predictor, properties)[0]
        target = output_folder / f"{case}_uncertainty{ending}"
        write_float_image(uncertainty, target, properties)
        save_overlay(image[0], segmentation, uncertainty, output_folder / f"{case}_overlay.png",
                     overlay_title(case, model_folder, folds), names)
        written.append(target)
    return written
