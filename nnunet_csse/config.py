"""All CSSE settings in one validated object.

A trainer class carries defaults (``csse_defaults``); a plans file may override any field per configuration
under the key ``"csse"``, e.g. ``"configurations": {"3d_fullres": {..., "csse": {"pdcr_temperature": 1.0}}}``.
Unknown keys and bad values raise ``ValueError`` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nnunet_csse.method.settings import PAIR_MODES, PDCR_VARIANTS, PDCRSettings

UAFS_NORMS = ("plan", "batch")

PLANS_KEY = "csse"


@dataclass(frozen=True)
class CSSEConfig:
    """Settings of UAFS (network) and PDCR (loss). Defaults are the authors' 3D setup (docs/method.md).

    Network (change the checkpoint layout, so they are read from the plans at inference too):
        uafs_decoder: UAFS after every decoder stage (authors' 3D code).
        uafs_encoder: UAFS after every encoder stage too (authors' 2D configs).
        uafs_num_branches: M, branch output channels (authors: 2).
        uafs_kernel_size: k of the branch's first conv (authors: 3; their ablation: 1, 3, 5, 7), built on every axis
            where the stage's own kernel is > 1 and 1 on the axes where the stage uses 1 (anisotropic plans).
        uafs_norm: normalization and nonlinearity of the UAFS branch: "plan" (the plan's own, nnU-Net: instance
            norm + leaky ReLU) or "batch" (batch norm + ReLU, the authors' code).
        pdcr_projection_channels: width of the cross-layer 1x1 projection heads (None: the shallower layer's
            channel count).
        pdcr_variant: "clean" (docs/method.md section 2; linear heads on the sampled anchors) or "authors" (their
            3D code quirk by quirk, with their heads: 1x1 conv + batch norm + ReLU over the whole map, He init,
            then sampled; section 4). Changes the loss and the checkpoint layout.
    Loss:
        pdcr_encoder_weight / pdcr_cross_weight / pdcr_decoder_weight: weights of the encoder, cross-layer and
            decoder PDCR terms (authors' 3D: 0.01, 0.01, 0).
        pdcr_encoder_stages / pdcr_decoder_stages: resolution levels (0 = full resolution) whose outputs are
            anchored. Encoder, authors' 3D: levels 2 and 3 (cumulative stride 4 and 8 in nnU-Net's default plans).
            Decoder (not in the authors' 3D code): levels 1 and 2, which every plan of 4 or more stages has.
            Levels outside the network (encoder: 0..n_stages-1, decoder: 0..n_stages-2) are an error.
        pdcr_windows: "rf" (window = each layer's theoretical receptive field, RF-PDCR) or a list of window
            sizes in input voxels (H-PDCR; loss per size, then averaged; authors' 2D: [5, 7, 9]).
        pdcr_temperature: tau (authors: 0.5 in 3D, 1 in 2D).
        pdcr_anchor_spacing: distance between anchors in input voxels (authors: 32).
            All anchored layers sample one input-space grid (see ``anchors.input_grid``).
        pdcr_min_anchors / pdcr_max_anchors: bounds on anchors per sample and layer (memory is N^2).
        pdcr_pairs: "sample" (the paper: pairs within each sample, B matrices N x N) or "batch" (the anchors of all
            samples of the batch form one set: one (B N) x (B N) matrix; cross-image pairs).
    """

    uafs_decoder: bool = False
    uafs_encoder: bool = False
    uafs_num_branches: int = 2
    uafs_kernel_size: int = 3
    pdcr_encoder_weight: float = 0.0
    pdcr_cross_weight: float = 0.0
    pdcr_decoder_weight: float = 0.0
    pdcr_encoder_stages: tuple[int, ...] = (2, 3)
    pdcr_decoder_stages: tuple[int, ...] = (1, 2)
    pdcr_windows: str | tuple[int, ...] = "rf"
    pdcr_temperature: float = 0.5
    pdcr_anchor_spacing: int = 32
    pdcr_min_anchors: int = 32
    pdcr_max_anchors: int = 512
    pdcr_projection_channels: int | None = None
    pdcr_pairs: str = "sample"
    pdcr_variant: str = "clean"
    uafs_norm: str = "plan"
    _source: str = field(default="defaults", compare=False, repr=False)
    _given: frozenset = field(default=frozenset(), compare=False, repr=False)  # keys set by overrides

    def __post_init__(self) -> None:
        where = self._where()
        for name in ("uafs_decoder", "uafs_encoder"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"csse setting '{name}' must be true or false{where}")
        for name in ("pdcr_encoder_weight", "pdcr_cross_weight", "pdcr_decoder_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"csse setting '{name}' must be a number >= 0 (0 disables the term), got "
                                 f"{value!r}{where}")
        positive_ints = ("uafs_num_branches", "pdcr_anchor_spacing", "pdcr_min_anchors", "pdcr_max_anchors")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"csse setting '{name}' must be an integer >= 1, got {value!r}{where}")
        if self.uafs_num_branches < 2:  # the entropy of a 1-way softmax is 0: UAFS would be y = 2x, H all zero
            raise ValueError(f"csse setting 'uafs_num_branches' must be an integer >= 2 (the entropy of one channel "
                             f"is 0, so UAFS would only double the features), got {self.uafs_num_branches}{where}")
        k = self.uafs_kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"csse setting 'uafs_kernel_size' must be an odd integer >= 1, got {k!r}{where}")
        if self.pdcr_min_anchors > self.pdcr_max_anchors:
            raise ValueError(f"csse settings need pdcr_min_anchors <= pdcr_max_anchors, got "
                             f"{self.pdcr_min_anchors} > {self.pdcr_max_anchors}{where}")
        t = self.pdcr_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"csse setting 'pdcr_temperature' must be a number > 0, got {t!r}{where}")
        for name in ("pdcr_encoder_stages", "pdcr_decoder_stages"):
            value = getattr(self, name)
            if not _is_int_tuple(value) or len(value) == 0 or any(v < 0 for v in value):
                raise ValueError(f"csse setting '{name}' must be a non-empty list of resolution levels >= 0 "
                                 f"(0 = full resolution), got {_shown(value)}{where}")
        if self.pdcr_cross_weight > 0 and len(set(self.pdcr_encoder_stages)) < 2:
            raise ValueError(f"csse cross-layer PDCR pairs two encoder levels: 'pdcr_encoder_stages' needs two "
                             f"distinct levels, got {_shown(self.pdcr_encoder_stages)}{where}; or set "
                             f"'pdcr_cross_weight' to 0")
        w = self.pdcr_windows
        if w != "rf" and (not _is_int_tuple(w) or len(w) == 0 or any(v < 1 for v in w)):
            raise ValueError(f"csse setting 'pdcr_windows' must be \"rf\" or a non-empty list of window sizes "
                             f">= 1 voxel, got {_shown(w)}{where}")
        if self.pdcr_pairs not in PAIR_MODES:
            raise ValueError(f"csse setting 'pdcr_pairs' must be one of {list(PAIR_MODES)}, got "
                             f"{self.pdcr_pairs!r}{where}")
        for name, allowed in (("pdcr_variant", PDCR_VARIANTS), ("uafs_norm", UAFS_NORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"csse setting '{name}' must be one of {list(allowed)}, got "
                                 f"{getattr(self, name)!r}{where}")
        p = self.pdcr_projection_channels
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"csse setting 'pdcr_projection_channels' must be null or an integer >= 1, "
                             f"got {p!r}{where}")

    @property
    def uses_pdcr(self) -> bool:
        return self.pdcr_encoder_weight > 0 or self.pdcr_cross_weight > 0 or self.pdcr_decoder_weight > 0

    @functools.cached_property
    def pdcr(self) -> PDCRSettings:
        """The loss settings the method's core reads (already validated here; built once per config)."""
        return PDCRSettings(
            encoder_weight=self.pdcr_encoder_weight, cross_weight=self.pdcr_cross_weight,
            decoder_weight=self.pdcr_decoder_weight, windows=self.pdcr_windows, temperature=self.pdcr_temperature,
            anchor_spacing=self.pdcr_anchor_spacing, min_anchors=self.pdcr_min_anchors,
            max_anchors=self.pdcr_max_anchors, pairs=self.pdcr_pairs, variant=self.pdcr_variant,
        )

    def fit_levels(self, n_stages: int) -> tuple[CSSEConfig, list[str]]:
        """This config for a network of ``n_stages`` resolution levels, and what was adapted.

        A used PDCR level outside the network (encoder: 0..n_stages-1, decoder: 0..n_stages-2) is a ``ValueError``
        when the plans set it. The trainers' default levels (the authors' 2 and 3) are moved down as a block on
        shallower networks (e.g. 3d_lowres of a small plan: 1 and 2), and the returned note says so (logged)."""
        fitted, notes = self, []
        checks = []
        if self.pdcr_encoder_weight > 0 or self.pdcr_cross_weight > 0:
            checks.append(("pdcr_encoder_stages", n_stages - 1, "encoder"))
        if self.pdcr_decoder_weight > 0:
            checks.append(("pdcr_decoder_stages", n_stages - 2, "decoder"))
        for name, deepest, part in checks:
            levels = getattr(self, name)
            outside = [lv for lv in levels if lv > deepest]
            if not outside:
                continue
            allowed = f"0..{deepest}" if deepest >= 0 else "none"
            problem = (f"csse setting '{name}' {list(levels)} has level(s) {outside} outside this network: its {part} "
                       f"has levels {allowed} ({n_stages} stages; 0 = full resolution)")
            shift = max(levels) - deepest
            moved = tuple(sorted({lv - shift for lv in levels if lv - shift >= 0}))
            needed = 2 if name == "pdcr_encoder_stages" and self.pdcr_cross_weight > 0 else 1
            if name in self._given or len(moved) < needed:
                fix = f"Set '{name}' in the plans' \"{PLANS_KEY}\" settings to levels in {allowed}"
                if len(moved) < needed:
                    fix += " (cross-layer PDCR needs two), or set 'pdcr_cross_weight' to 0"
                raise ValueError(f"{problem}. {fix}{self._where()}")
            fitted = dataclasses.replace(fitted, **{name: moved})
            notes.append(f"{problem}: the default levels were moved to {list(moved)} (set '{name}' in the plans' "
                         f"\"{PLANS_KEY}\" settings to choose)")
        return fitted, notes

    def _where(self) -> str:
        return f" (from {self._source})"

    def with_overrides(self, overrides: Mapping[str, Any] | None, source: str = "overrides") -> CSSEConfig:
        """A copy with ``overrides`` (e.g. a plans file's ``"csse"`` dict) applied and validated."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"'{PLANS_KEY}' in {source} must be a JSON object of settings, got "
                             f"{type(overrides).__name__}")
        known = {f.name for f in dataclasses.fields(self) if not f.name.startswith("_")}
        unknown = sorted(set(overrides) - known)
        if unknown:
            close = [m for key in unknown for m in difflib.get_close_matches(key, known, n=1)]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown csse setting(s) {unknown} in {source}{hint}; allowed keys: {sorted(known)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
        return dataclasses.replace(self, **values, _source=source, _given=self._given | frozenset(values))

    def to_json(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if not f.name.startswith("_")}


def _shown(value: Any) -> str:
    """A setting's value as the user wrote it in JSON: lists (kept as tuples here) as ``[2, 3]``, ``[]``."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def config_from_plans(
    defaults: CSSEConfig, configuration: Mapping[str, Any], configuration_name: str = ""
) -> CSSEConfig:
    """``defaults`` with the configuration's ``"csse"`` overrides (if any) applied."""
    source = f"plans configuration '{configuration_name}' key '{PLANS_KEY}'" if configuration_name else \
        f"plans key '{PLANS_KEY}'"
    return defaults.with_overrides(configuration.get(PLANS_KEY), source=source)
