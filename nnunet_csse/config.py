"""The CSSE settings of a trainer and a plans configuration, under their plans keys.

``CSSEConfig`` composes the method's ``UAFSSettings`` and ``PDCRSettings`` (which define and check every field)
and names each field by its plans key: ``uafs_<field>`` and ``pdcr_<field>``, e.g. ``"configurations":
{"3d_fullres": {..., "csse": {"pdcr_temperature": 1.0}}}``. Unknown keys and bad values raise ``ValueError``
naming the key, what is allowed and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nnunet_csse.method.settings import PDCRSettings, SettingError, SettingText, UAFSSettings, settings_fields

PLANS_KEY = "csse"
#: plans key -> (part, field): every field of the two settings types, prefixed by its part
PLANS_KEYS: dict[str, tuple[str, str]] = {
    f"{part}_{name}": (part, name)
    for part, settings_type in (("uafs", UAFSSettings), ("pdcr", PDCRSettings))
    for name in settings_fields(settings_type)
}
_KEY_OF = {value: key for key, value in PLANS_KEYS.items()}


@dataclass(frozen=True)
class CSSEConfig:
    """UAFS (network) and PDCR (loss) settings; defaults: everything off (the trainers set the authors' 3D setup).

    ``uafs`` and ``pdcr`` change the checkpoint layout (UAFS blocks, projection heads), so they are read from the
    plans at inference too. ``source`` says where the last overrides came from (for messages); ``chosen`` holds
    the plans keys the user set (a chosen level outside the network is an error, a default one is moved).
    """

    uafs: UAFSSettings = field(default_factory=UAFSSettings)
    pdcr: PDCRSettings = field(default_factory=PDCRSettings)
    source: str = field(default="defaults", compare=False, repr=False)
    chosen: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def of(cls, **keys: Any) -> CSSEConfig:
        """The defaults with ``keys`` (plans keys) set: a trainer's defaults, e.g. ``of(uafs_decoder=True)``."""
        return cls().replaced(**keys)

    def replaced(self, **keys: Any) -> CSSEConfig:
        """A copy with ``keys`` (plans keys) set; validated."""
        return self._with(keys, self.source, self.chosen)

    def with_overrides(self, overrides: Mapping[str, Any] | None, source: str = "overrides") -> CSSEConfig:
        """A copy with ``overrides`` (e.g. a plans file's ``"csse"`` dict) applied, validated and marked chosen."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"'{PLANS_KEY}' in {source} must be a JSON object of settings, got "
                             f"{type(overrides).__name__}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
        return self._with(values, source, self.chosen | frozenset(values))

    def _with(self, keys: Mapping[str, Any], source: str, chosen: frozenset[str]) -> CSSEConfig:
        unknown = sorted(set(keys) - set(PLANS_KEYS))
        if unknown:
            close = [m for key in unknown for m in difflib.get_close_matches(key, PLANS_KEYS, n=1)]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown csse setting(s) {unknown} in {source}{hint}; allowed keys: "
                             f"{sorted(PLANS_KEYS)}")
        parts: dict[str, dict[str, Any]] = {"uafs": {}, "pdcr": {}}
        for key, value in keys.items():
            part, name = PLANS_KEYS[key]
            parts[part][name] = value
        built = {}
        for part, values in parts.items():
            try:
                built[part] = dataclasses.replace(getattr(self, part), **values)
            except SettingError as error:
                raise ValueError(_restated(error.text, part, source)) from None
        return CSSEConfig(built["uafs"], built["pdcr"], source, chosen)

    @property
    def uses_pdcr(self) -> bool:
        return self.pdcr.is_on

    def fit_levels(self, n_stages: int) -> tuple[CSSEConfig, list[str]]:
        """This config for a network of ``n_stages`` resolution levels, and notes on what was adapted (see
        ``PDCRSettings.fit_levels``); a chosen level outside the network is a ``ValueError`` naming the key."""
        chosen = frozenset(name for key, (part, name) in PLANS_KEYS.items() if part == "pdcr" and key in self.chosen)
        try:
            pdcr, notes = self.pdcr.fit_levels(n_stages, chosen)
        except SettingError as error:
            raise ValueError(_restated(error.text, "pdcr", self.source, fix=True)) from None
        fitted = dataclasses.replace(self, pdcr=pdcr)
        return fitted, [_restated(note, "pdcr", fix=True) for note in notes]

    def check_windows_fit(self, patch_size: Sequence[int], configuration: str = "") -> None:
        """H-PDCR windows must fit the patch; ``ValueError`` naming the key and the configuration otherwise."""
        try:
            self.pdcr.check_windows_fit(patch_size)
        except SettingError as error:
            raise ValueError(_restated(error.text, "pdcr", f"configuration '{configuration}'")) from None

    def to_json(self) -> dict[str, Any]:
        """The settings by plans key (lists for tuples), as a plans file's ``"csse"`` block holds them."""
        out = {}
        for key, (part, name) in PLANS_KEYS.items():
            value = getattr(getattr(self, part), name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _restated(text: SettingText, part: str, source: str = "", fix: bool = False) -> str:
    """A core message with the plans keys of ``part`` for its field names."""
    message = text.restated(lambda name: _KEY_OF[(part, name)])
    if fix:  # the core says "set X to ...": say where
        where = f"the plans' \"{PLANS_KEY}\" settings"
        message = message.replace(". Set ", f". In {where} set ", 1).replace("(set ", f"(in {where}, set ", 1)
    lead = "csse setting " if text.template.startswith("{}") else "csse settings: "
    return lead + message + (f" (from {source})" if source else "")


def config_from_plans(
    defaults: CSSEConfig, configuration: Mapping[str, Any], configuration_name: str = ""
) -> CSSEConfig:
    """``defaults`` with the configuration's ``"csse"`` overrides (if any) applied."""
    source = f"plans configuration '{configuration_name}' key '{PLANS_KEY}'" if configuration_name else \
        f"plans key '{PLANS_KEY}'"
    return defaults.with_overrides(configuration.get(PLANS_KEY), source=source)
