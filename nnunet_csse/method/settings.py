"""The settings the method's core reads (docs/method.md section 3).

Users set them through the plans' ``"csse"`` block, which ``nnunet_csse.config.CSSEConfig`` validates with
messages naming each plans key; ``CSSEConfig.pdcr`` hands the loss this narrow, already valid view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nnunet_csse.method.anchors import AnchorLayer, InputGrid, input_grid

PDCR_TERMS = ("encoder", "cross", "decoder")
PAIR_MODES = ("sample", "batch")
#: "clean": the formulation of docs/method.md section 2; "authors": their 3D code quirk by quirk (section 4)
PDCR_VARIANTS = ("clean", "authors")


@dataclass(frozen=True)
class PDCRSettings:
    """PDCR loss settings.

    Attributes:
        encoder_weight / cross_weight / decoder_weight: weight of each term in the total loss (0: term off).
        windows: "rf" (each layer's exact receptive field, RF-PDCR) or window sizes in input voxels (H-PDCR).
        temperature: tau of the soft contrastive loss.
        anchor_spacing: distance between anchors in input voxels; min_anchors / max_anchors bound N per sample.
        pairs: "sample" (pairs within each sample) or "batch" (the anchors of the whole batch form one set).
        variant: "clean" or "authors" (the authors' 3D code: max shift with its gradient, classes by position,
            border windows divided by the full volume and one voxel short at the far border, distance without
            1/2, cross term halved, grid from voxel 0; docs/method.md section 4).
    """

    encoder_weight: float = 0.0
    cross_weight: float = 0.0
    decoder_weight: float = 0.0
    windows: str | tuple[int, ...] = "rf"
    temperature: float = 0.5
    anchor_spacing: int = 32
    min_anchors: int = 32
    max_anchors: int = 512
    pairs: str = "sample"
    variant: str = "clean"

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_MODES:
            raise ValueError(f"PDCR pairs must be one of {list(PAIR_MODES)}, got {self.pairs!r}")
        if self.variant not in PDCR_VARIANTS:
            raise ValueError(f"PDCR variant must be one of {list(PDCR_VARIANTS)}, got {self.variant!r}")

    @property
    def term_weights(self) -> dict[str, float]:
        """{term: weight} of the terms that are on (weight > 0), in ``PDCR_TERMS`` order."""
        weights = {"encoder": self.encoder_weight, "cross": self.cross_weight, "decoder": self.decoder_weight}
        return {term: float(weights[term]) for term in PDCR_TERMS if weights[term] > 0}

    @property
    def window_sizes(self) -> list[str | int]:
        """``["rf"]`` or the H-PDCR window sizes: one loss per entry, averaged."""
        return ["rf"] if self.windows == "rf" else list(self.windows)

    def input_grid(self, input_shape: Sequence[int], layers: Sequence[AnchorLayer]) -> InputGrid:
        """The one anchor grid (input voxels) of all anchored ``layers`` for an input of ``input_shape``; the
        network and the loss both call this, so anchors and composition vectors line up."""
        return input_grid(input_shape, [layer.stride for layer in layers], self.anchor_spacing, self.min_anchors,
                          self.max_anchors, centred=self.variant == "clean")
