"""The method's settings: every UAFS and PDCR field, its default and its allowed range, defined and checked once
(docs/method.md section 3). ``nnunet_csse.config.CSSEConfig`` composes these and names the plans keys."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from nnunet_csse.method.anchors import AnchorLayer, InputGrid, input_grid

PDCR_TERMS = ("encoder", "cross", "decoder")
PAIR_MODES = ("sample", "batch")
#: "clean": the formulation of docs/method.md section 2; "authors": their 3D code quirk by quirk (section 4)
PDCR_VARIANTS = ("clean", "authors")
#: the UAFS branch's norm and nonlinearity: the plan's own, or batch norm + ReLU (the authors' code)
UAFS_NORMS = ("plan", "batch")


@dataclass(frozen=True)
class SettingText:
    """A message about settings: ``template`` holds one ``{}`` per entry of ``names`` (field names), so a caller
    that knows the fields under other names (plans keys) can restate it."""

    template: str
    names: tuple[str, ...]

    def restated(self, name: Callable[[str], str] = str) -> str:
        return self.template.format(*(f"'{name(n)}'" for n in self.names))

    def __str__(self) -> str:
        return self.restated()


class SettingError(ValueError):
    """A bad setting value; ``text`` restates it under other names."""

    def __init__(self, template: str, *names: str) -> None:
        self.text = SettingText(template, names)
        super().__init__(str(self.text))


def _shown(value: Any) -> str:
    """A value as written in JSON: tuples (lists there) as ``[2, 3]``."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_int(v) for v in value)


def _check_bool(obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise SettingError("{} must be true or false, got " + _shown(getattr(obj, name)), name)


def _check_int(obj: Any, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if not _is_int(value) or value < minimum:
        raise SettingError("{} must be an integer >= " + f"{minimum}, got {_shown(value)}", name)


def _check_choice(obj: Any, name: str, allowed: Sequence[str]) -> None:
    if getattr(obj, name) not in allowed:
        raise SettingError("{} must be one of " + f"{list(allowed)}, got {getattr(obj, name)!r}", name)


@dataclass(frozen=True)
class UAFSSettings:
    """UAFS blocks (docs/method.md section 1); they change the checkpoint layout.

    Attributes:
        decoder: a UAFS block after every decoder stage (authors' 3D code).
        encoder: a UAFS block after every encoder stage too (authors' 2D configs).
        num_branches: M, the branch's output channels (authors: 2; >= 2, the entropy of one channel is 0).
        kernel_size: k of the branch's first conv (authors: 3; their ablation 1, 3, 5, 7), odd; 1 on the axes
            where the stage's own kernel is 1 (anisotropic plans).
        norm: "plan" (the plan's norm and nonlinearity) or "batch" (batch norm + ReLU, the authors' code).
    """

    decoder: bool = False
    encoder: bool = False
    num_branches: int = 2
    kernel_size: int = 3
    norm: str = "plan"

    def __post_init__(self) -> None:
        _check_bool(self, "decoder", "encoder")
        _check_int(self, "num_branches", 1)
        if self.num_branches < 2:  # the entropy of a 1-way softmax is 0: UAFS would be y = 2x, H all zero
            raise SettingError("{} must be an integer >= 2 (the entropy of one channel is 0, so UAFS would only "
                               f"double the features), got {self.num_branches}", "num_branches")
        k = self.kernel_size
        if not _is_int(k) or k < 1 or k % 2 == 0:
            raise SettingError("{} must be an odd integer >= 1, got " + _shown(k), "kernel_size")
        _check_choice(self, "norm", UAFS_NORMS)

    @property
    def is_on(self) -> bool:
        return self.decoder or self.encoder


@dataclass(frozen=True)
class PDCRSettings:
    """PDCR loss and the network parts it reads (docs/method.md sections 2-4).

    Attributes:
        encoder_weight / cross_weight / decoder_weight: weight of each term in the total loss (0: term off;
            authors' 3D: 0.01, 0.01, 0).
        encoder_stages / decoder_stages: resolution levels (0 = full resolution) whose outputs are anchored
            (encoder, authors' 3D: 2 and 3; decoder, not in their 3D code: 1 and 2). The first two encoder levels
            form the cross-layer pair.
        windows: "rf" (each layer's exact receptive field, RF-PDCR) or window sizes in input voxels (H-PDCR; loss
            per size, then averaged; authors' 2D: 5, 7, 9).
        temperature: tau of the soft contrastive loss (authors: 0.5 in 3D, 1 in 2D).
        anchor_spacing: distance between anchors in input voxels (authors: 32); min_anchors / max_anchors bound
            N per sample and layer (memory is N^2).
        projection_channels: width of the cross-layer projection heads (None: the shallower layer's channels).
        pairs: "sample" (pairs within each sample) or "batch" (the anchors of the whole batch form one set).
        variant: "clean" or "authors" (their 3D code: max shift with its gradient, classes by position, border
            windows divided by the full volume and one voxel short at the far border, distance without 1/2, cross
            term halved, grid from voxel 0, conv + batch norm + ReLU heads over the map; section 4).
    """

    encoder_weight: float = 0.0
    cross_weight: float = 0.0
    decoder_weight: float = 0.0
    encoder_stages: tuple[int, ...] = (2, 3)
    decoder_stages: tuple[int, ...] = (1, 2)
    windows: str | tuple[int, ...] = "rf"
    temperature: float = 0.5
    anchor_spacing: int = 32
    min_anchors: int = 32
    max_anchors: int = 512
    projection_channels: int | None = None
    pairs: str = "sample"
    variant: str = "clean"

    def __post_init__(self) -> None:
        for name in ("encoder_weight", "cross_weight", "decoder_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise SettingError("{} must be a number >= 0 (0 disables the term), got " + _shown(value), name)
        for name in ("anchor_spacing", "min_anchors", "max_anchors"):
            _check_int(self, name, 1)
        if self.min_anchors > self.max_anchors:
            raise SettingError("need {} <= {}, got " + f"{self.min_anchors} > {self.max_anchors}",
                               "min_anchors", "max_anchors")
        if not _is_number(self.temperature) or not self.temperature > 0:
            raise SettingError("{} must be a number > 0, got " + _shown(self.temperature), "temperature")
        for name in ("encoder_stages", "decoder_stages"):
            value = getattr(self, name)
            if not _is_int_tuple(value) or len(value) == 0 or any(v < 0 for v in value):
                raise SettingError("{} must be a non-empty list of resolution levels >= 0 (0 = full resolution), "
                                   "got " + _shown(value), name)
        if self.cross_weight > 0 and len(set(self.encoder_stages)) < 2:
            raise SettingError("cross-layer PDCR pairs two encoder levels: {} needs two distinct levels, got "
                               + _shown(self.encoder_stages) + "; or set {} to 0", "encoder_stages", "cross_weight")
        w = self.windows
        if w != "rf" and (not _is_int_tuple(w) or len(w) == 0 or any(v < 1 for v in w)):
            raise SettingError('{} must be "rf" or a non-empty list of window sizes >= 1 voxel, got ' + _shown(w),
                               "windows")
        p = self.projection_channels
        if p is not None and (not _is_int(p) or p < 1):
            raise SettingError("{} must be null or an integer >= 1, got " + _shown(p), "projection_channels")
        _check_choice(self, "pairs", PAIR_MODES)
        _check_choice(self, "variant", PDCR_VARIANTS)

    @property
    def term_weights(self) -> dict[str, float]:
        """{term: weight} of the terms that are on (weight > 0), in ``PDCR_TERMS`` order."""
        weights = {"encoder": self.encoder_weight, "cross": self.cross_weight, "decoder": self.decoder_weight}
        return {term: float(weights[term]) for term in PDCR_TERMS if weights[term] > 0}

    @property
    def is_on(self) -> bool:
        return bool(self.term_weights)

    @property
    def anchors_encoder(self) -> bool:
        """The encoder levels are anchored (the encoder or the cross-layer term is on)."""
        return self.encoder_weight > 0 or self.cross_weight > 0

    @property
    def window_sizes(self) -> list[str | int]:
        """``["rf"]`` or the H-PDCR window sizes: one loss per entry, averaged."""
        return ["rf"] if self.windows == "rf" else list(self.windows)

    def input_grid(self, input_shape: Sequence[int], layers: Sequence[AnchorLayer]) -> InputGrid:
        """The one anchor grid (input voxels) of all anchored ``layers`` for an input of ``input_shape``."""
        return input_grid(input_shape, [layer.stride for layer in layers], self.anchor_spacing, self.min_anchors,
                          self.max_anchors, centred=self.variant == "clean")

    def check_windows_fit(self, patch_size: Sequence[int]) -> None:
        """H-PDCR windows must fit the patch (receptive-field windows are clipped at the border by design)."""
        if self.is_on and self.windows != "rf" and any(w > min(patch_size) for w in self.windows):
            too_large = [w for w in self.windows if w > min(patch_size)]
            raise SettingError("{} " + f"{list(self.windows)} has window(s) {too_large} larger than the patch "
                               f"{list(patch_size)}; use windows <= {min(patch_size)} voxels", "windows")

    def fit_levels(self, n_stages: int, chosen: frozenset[str] = frozenset()) -> tuple[PDCRSettings, list[SettingText]]:
        """These settings for a network of ``n_stages`` resolution levels, and what was adapted.

        A used level outside the network (encoder: 0..n_stages-1, decoder: 0..n_stages-2) is a ``SettingError``
        when its field is in ``chosen`` (set by the user). Default levels move down as a block on shallower
        networks (e.g. 2, 3 -> 1, 2) and the returned note says so; ``SettingError`` if too few levels remain."""
        fitted, notes = self, []
        used = [("encoder_stages", n_stages - 1, "encoder")] if self.anchors_encoder else []
        if self.decoder_weight > 0:
            used.append(("decoder_stages", n_stages - 2, "decoder"))
        for name, deepest, part in used:
            levels = getattr(self, name)
            outside = [lv for lv in levels if lv > deepest]
            if not outside:
                continue
            allowed = f"0..{deepest}" if deepest >= 0 else "none"
            problem = (f"{{}} {list(levels)} has level(s) {outside} outside this network: its {part} has levels "
                       f"{allowed} ({n_stages} stages; 0 = full resolution)")
            shift = max(levels) - deepest
            moved = tuple(sorted({lv - shift for lv in levels if lv - shift >= 0}))
            needed = 2 if name == "encoder_stages" and self.cross_weight > 0 else 1
            if name in chosen or len(moved) < needed:
                if len(moved) < needed:
                    raise SettingError(problem + f". Set {{}} to levels in {allowed} (cross-layer PDCR needs two), "
                                       "or set {} to 0", name, name, "cross_weight")
                raise SettingError(problem + f". Set {{}} to levels in {allowed}", name, name)
            fitted = replace(fitted, **{name: moved})
            notes.append(SettingText(problem + f": the default levels were moved to {list(moved)} (set {{}} to "
                                     "choose)", (name, name)))
        return fitted, notes


def settings_fields(settings_type: type) -> tuple[str, ...]:
    """The field names of ``UAFSSettings`` or ``PDCRSettings``."""
    return tuple(f.name for f in fields(settings_type))
