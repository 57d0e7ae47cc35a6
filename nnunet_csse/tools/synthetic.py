"""Seeded synthetic segmentation datasets in nnU-Net v2 raw format (``nnunet-csse synth``).

``difficulty="hard"`` draws the conditions the CSSE paper targets, ``"easy"`` separable classes; docs/results.md
("The demo") describes both. The same arguments give byte-identical files: committed benchmark results rest on them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_csse.folders import check_writable

MIN_VOXELS_PER_CLASS = 6  # every class (background included) has at least this many voxels in every case
DIFFICULTIES = ("easy", "hard")
MAX_PLACEMENT_ATTEMPTS = 50
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
FILE_ENDING = ".nii.gz"
INTEGERS = {"dataset_id": (1, 999), "dim": (2, 3), "num_classes": (2, 254), "num_channels": (1, None),
            "num_cases": (1, None), "num_test_cases": (0, None), "seed": (0, None)}  # name -> minimum, maximum


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _integers(**values: object) -> None:
    for name, value in values.items():
        low, high = INTEGERS[name]
        if not _is_integer(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = "2 or 3" if name == "dim" else f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{name}{' (background included)' if name == 'num_classes' else ''} must be {bound}, "
                             f"got {value}")


def _validate(dim: int, num_classes: int, num_channels: int, difficulty: str, regions: bool,
              size: Sequence[int] | int = 8, spacing: Sequence[float] | None = None,
              **counts: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A ValueError naming the first invalid argument (the CLI maps the names to its flags); else the image shape
    and the spacing (default 1 on every axis), both per array axis."""
    _integers(dim=dim, num_classes=num_classes, num_channels=num_channels)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if regions and num_classes < 3:
        raise ValueError(f"regions=True needs num_classes >= 3 (background + at least two nested structures), got "
                         f"num_classes={num_classes}")
    _integers(**counts)
    shape = (size,) * dim if np.ndim(size) == 0 else tuple(size)  # type: ignore[arg-type]
    if len(shape) != dim or not all(_is_integer(n) and n >= 8 for n in shape):
        raise ValueError(f"size must be one integer or {dim} integers for dim={dim}, each >= 8, got {size!r}")
    if spacing is not None and (np.ndim(spacing) != 1 or len(spacing) != dim):
        raise ValueError(f"spacing must have {dim} entries (array axis order) for dim={dim}, got {spacing!r}")
    try:
        values = (1.0,) * dim if spacing is None else tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing entries must be finite numbers > 0, got {spacing!r}")
    return tuple(int(n) for n in shape), values


class _Grid:
    """Physical voxel-centre coordinates as open (broadcastable) grids."""

    def __init__(self, shape: tuple[int, ...], spacing: tuple[float, ...]):
        self.shape, self.spacing = shape, np.asarray(spacing, dtype=np.float64)
        self.extent = np.asarray(shape, dtype=np.float64) * self.spacing
        self.coords = [((np.arange(n, dtype=np.float32) + 0.5) * np.float32(s)).reshape(
            [-1 if a == i else 1 for a in range(len(shape))]) for i, (n, s) in enumerate(zip(shape, spacing))]
        self.min_radius = 1.6 * float(self.spacing.max())

    def voxel_center(self, flat_index: int) -> np.ndarray:
        return (np.asarray(np.unravel_index(flat_index, self.shape), dtype=np.float64) + 0.5) * self.spacing

    def radius(self, rng: np.random.Generator, role: str) -> float:
        low, high = {"large": (0.18, 0.28), "medium": (0.10, 0.18), "small": (0.05, 0.08)}[role]
        return max(rng.uniform(low, high) * float(self.extent.min()), self.min_radius)

    def random_center(self, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=len(self.shape)) * self.extent


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise, normalised to zero mean and unit standard deviation (float32)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="reflect")
    noise -= noise.mean()
    noise /= noise.std() + 1e-6
    return noise


def _shape_level(rng: np.random.Generator, grid: _Grid, center: np.ndarray, radius: float, hard: bool) -> np.ndarray:
    """Level function of a random rotated (and, if hard, deformed) superellipsoid; the shape is ``level <= 1``."""
    dim = len(grid.shape)
    radii = radius * rng.uniform(0.7, 1.3, size=dim)
    if dim == 2:
        a = rng.uniform(0.0, 2.0 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rot = q * np.sign(np.diag(r))
        if np.linalg.det(rot) < 0:
            rot[:, 0] = -rot[:, 0]
    p = rng.uniform(1.6, 3.5) if hard else 2.0
    d = [c - np.float32(x) for c, x in zip(grid.coords, center)]
    level = sum(np.abs(sum(np.float32(rot[j, i] / radii[j]) * d[i] for i in range(dim))) ** np.float32(p)
                for j in range(dim))
    level = np.broadcast_to(level ** np.float32(1.0 / p), grid.shape).astype(np.float32, copy=True)
    if hard:  # a blob or an (almost) pure superellipsoid; small structures stay compact
        blob = rng.random() < 0.5 and radius > 3.0 * grid.min_radius
        amplitude = rng.uniform(0.3, 0.5) if blob else rng.uniform(0.0, 0.1)
        level += np.float32(amplitude) * _smooth_noise(rng, grid.shape, np.maximum(0.35 * radius / grid.spacing, 1.0))
    return level


def _structures(rng: np.random.Generator, grid: _Grid, num_classes: int, hard: bool, regions: bool) -> np.ndarray:
    """Structures 1..K. Plain: 2 abuts 1, later ones abut an earlier one with probability 1/2, else are painted on
    top. Regions: k inside k-1 (label = depth), radii shrinking geometrically to a small innermost one."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    if regions:
        radius, inner = grid.radius(rng, "large"), grid.radius(rng, "small")
        ratio, mask, level = (inner / radius) ** (1.0 / (num_classes - 2)), None, None  # mask, level: the parent's
    for k in range(1, num_classes):
        if not regions:
            radius = grid.radius(rng, "large" if k == 1 else ("small" if k == num_classes - 1 else "medium"))
        elif k > 1:
            radius = max(radius * ratio * rng.uniform(0.9, 1.1), grid.min_radius)
        center, inside = None, None  # inside: where the new structure may grow
        if k == 1:
            center = grid.random_center(rng, 0.3, 0.7)
        elif regions:  # a voxel deep inside the parent if there is one
            candidates = np.flatnonzero(mask & (level < 0.5))
            if candidates.size == 0:
                candidates = np.flatnonzero(mask)
            if candidates.size == 0:
                break  # rejected by the caller's presence check
            center, inside = grid.voxel_center(int(candidates[rng.integers(candidates.size)])), mask
        elif k == 2 or rng.random() < 0.5:
            target = label == (1 if k == 2 else int(rng.integers(1, k)))
            border = np.flatnonzero(target & ~ndimage.binary_erosion(target))
            if border.size:  # a border voxel, pushed outwards by half a radius: the new shape lies mostly outside
                center = grid.voxel_center(int(border[rng.integers(border.size)]))
                outward = center - (np.asarray(ndimage.center_of_mass(target)) + 0.5) * grid.spacing
                center = center + 0.5 * radius * outward / max(float(np.linalg.norm(outward)), 1e-6)
                inside = label == 0  # grows only into free space, sharing the target's border
        if center is None:
            center = grid.random_center(rng, 0.15, 0.85)
        level = _shape_level(rng, grid, center, radius, hard)
        mask = level <= 1.0 if inside is None else (level <= 1.0) & inside
        label[mask] = k  # plain: otherwise painted on top (e.g. a small inclusion inside an organ)
    return label


def _label_map(rng: np.random.Generator, grid: _Grid, num_classes: int, hard: bool, regions: bool) -> np.ndarray:
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        label = _structures(rng, grid, num_classes, hard, regions)
        if np.bincount(label.ravel(), minlength=num_classes).min() < MIN_VOXELS_PER_CLASS:
            continue
        # structures 1 and 2 must share a border (later paintings or blob deformation can break that)
        if num_classes < 3 or (ndimage.binary_dilation(label == 2) & (label == 1)).any():
            return label
    raise ValueError(f"could not place all {num_classes - 1} foreground classes (>= {MIN_VOXELS_PER_CLASS} voxels "
                       f"each, structures 1 and 2 touching) in a {grid.shape} volume after {MAX_PLACEMENT_ATTEMPTS} "
                       f"attempts; increase size or reduce num_classes")


def _paint_ignore(rng: np.random.Generator, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Relabel a random slab (20-45 %, later 10-22 %, of one axis) as ``num_classes``; every class stays present."""
    for attempt in range(40):
        axis = int(rng.integers(label.ndim))
        n = label.shape[axis]
        width = max(1, int(round(rng.uniform(0.2, 0.45) * (1.0 if attempt < 20 else 0.5) * n)))
        start = int(rng.integers(0, n - width + 1))
        out = label.copy()
        out[(slice(None),) * axis + (slice(start, start + width),)] = num_classes
        if np.bincount(out.ravel(), minlength=num_classes)[:num_classes].min() >= MIN_VOXELS_PER_CLASS:
            return out
    out = label.copy()  # fallback (practically unreachable): ignore only the background of one border slice
    out[0][out[0] == 0] = num_classes
    return out if np.bincount(out.ravel(), minlength=num_classes)[0] >= MIN_VOXELS_PER_CLASS else label


def intensity_profile(rng: np.random.Generator | None, num_classes: int, num_channels: int = 1,
                      difficulty: str = "hard") -> np.ndarray:
    """Class mean intensities per channel, ``(num_channels, num_classes)``: hard 0.3 apart (+-0.04 jitter), easy 1.0
    apart, in random order per channel; ``rng=None``: a fixed profile that depends on the arguments only."""
    _validate(2, num_classes, num_channels, difficulty, False)
    if rng is None:
        rng = np.random.default_rng([num_classes, num_channels, DIFFICULTIES.index(difficulty), 2022])
    profile = np.empty((num_channels, num_classes), dtype=np.float64)
    for c in range(num_channels):
        profile[c] = 1.0 + (0.3 if difficulty == "hard" else 1.0) * rng.permutation(num_classes)
        if difficulty == "hard":
            profile[c] += rng.uniform(-0.04, 0.04, size=num_classes)
    return profile


def _bias_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """exp(random degree-2 polynomial) on coordinates normalised to [-1, 1]."""
    x = [np.float32(2.0) * c / np.float32(e) - np.float32(1.0) for c, e in zip(grid.coords, grid.extent)]
    poly = np.zeros(grid.shape, dtype=np.float32)
    for i in range(len(x)):
        poly += np.float32(rng.uniform(-0.15, 0.15)) * x[i]
        for j in range(i, len(x)):
            poly += np.float32(rng.uniform(-0.1, 0.1)) * (x[i] * x[j])
    return np.exp(poly)


def _render(rng: np.random.Generator, label: np.ndarray, grid: _Grid, profile: np.ndarray, hard: bool) -> np.ndarray:
    image = np.empty((profile.shape[0], *label.shape), dtype=np.float32)
    if not hard:
        for c in range(len(image)):
            image[c] = profile[c].astype(np.float32)[label]
            image[c] += np.float32(0.03) * rng.standard_normal(label.shape, dtype=np.float32)
        return image
    levels = (profile + rng.normal(0.0, 0.03, size=profile.shape)).astype(np.float32)  # per-case scanner shift
    texture_amplitude = rng.uniform(0.10, 0.16, size=profile.shape).astype(np.float32)  # similar for all classes
    blur = rng.uniform(0.8, 1.3) / grid.spacing  # partial volume, mm -> voxels per axis
    texture_sigma = rng.uniform(0.7, 1.2) / grid.spacing
    noise_sd = np.float32(rng.uniform(0.07, 0.12))
    for c in range(len(image)):
        mean = ndimage.gaussian_filter(levels[c][label], blur, mode="nearest")
        amplitude = ndimage.gaussian_filter(texture_amplitude[c][label], blur, mode="nearest")
        image[c] = (mean + amplitude * _smooth_noise(rng, label.shape, texture_sigma)) * _bias_field(rng, grid)
        image[c] += noise_sd * rng.standard_normal(label.shape, dtype=np.float32)
    return image


def generate_case(rng: np.random.Generator, dim: int = 3, size: Sequence[int] | int = 32, num_classes: int = 3,
                  num_channels: int = 1, difficulty: str = "hard", regions: bool = False, *,
                  spacing: Sequence[float] | None = None, profile: np.ndarray | None = None,
                  ignore_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One case, a pure function of ``rng``'s state and the arguments: ``(image, label)``, float32
    ``(num_channels, *size)`` and uint8 ``size``. ``spacing`` (mm per array axis) makes shapes and blur physical;
    ``profile`` (class means, default :func:`intensity_profile` with ``rng=None``) is shared across cases."""
    grid = _Grid(*_validate(dim, num_classes, num_channels, difficulty, regions, size, spacing))
    profile = np.asarray(intensity_profile(None, num_classes, num_channels, difficulty) if profile is None
                         else profile, dtype=np.float64)
    if profile.shape != (num_channels, num_classes):
        raise ValueError(f"profile must have shape {(num_channels, num_classes)}, got {profile.shape}")
    label = _label_map(rng, grid, num_classes, difficulty == "hard", regions)
    image = _render(rng, label, grid, profile, difficulty == "hard")  # before the ignore slab: true appearance
    return image, _paint_ignore(rng, label, num_classes) if ignore_label else label


def _write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_synthetic_dataset(raw_root: str | Path, dataset_id: int, name: str = "CSSESynth", *, dim: int = 3,
                            num_cases: int = 8, size: Sequence[int] | int = 32, num_classes: int = 3,
                            num_channels: int = 1, num_test_cases: int = 0, seed: int = 0, difficulty: str = "hard",
                            ignore_label: bool = False, regions: bool = False,
                            spacing: Sequence[float] | None = None, overwrite: bool = False) -> Path:
    """Write and return ``<raw_root>/Dataset{dataset_id:03d}_{name}`` (``dataset.json``, ``images|labelsTr``, with
    ``num_test_cases`` ``images|labelsTs``; cases ``f"{name.lower()}_{i:03d}"``). ``spacing`` is per array axis; 2D
    images are ``(1, H, W)`` with spacing ``999 * max(spacing)`` first, as nnU-Net's SimpleITKIO assigns. Bad
    arguments: ValueError; an existing ``Dataset{dataset_id:03d}_*``: FileExistsError unless ``overwrite`` (replaces
    every folder with this id). Nothing is left behind on failure. One ``SeedSequence(seed).spawn`` stream per case."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    _integers(dataset_id=dataset_id)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"name must start with a letter or digit and contain only letters, digits, '_' or '-', got "
                         f"{name!r}")
    shape, spacing = _validate(dim, num_classes, num_channels, difficulty, regions, size, spacing,
                               num_cases=num_cases, num_test_cases=num_test_cases, seed=seed)
    raw_root = Path(raw_root)
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    existing = sorted(p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()) if raw_root.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"dataset id {dataset_id:03d} already exists: {', '.join(map(str, existing))}. Pass "
                              f"overwrite=True (CLI: --overwrite) to replace it, or choose another dataset id.")

    file_spacing = (999.0 * max(spacing), *spacing) if dim == 2 else spacing
    streams = np.random.SeedSequence(seed).spawn(1 + num_cases + num_test_cases)
    profile = intensity_profile(np.random.default_rng(streams[0]), num_classes, num_channels, difficulty)
    labels: dict[str, int | list[int]] = {"background": 0}  # regions: region k is labels k..K
    for k in range(1, num_classes):
        labels[f"region_{k}" if regions else f"structure_{k}"] = list(range(k, num_classes)) if regions and \
            k < num_classes - 1 else k
    if ignore_label:
        labels["ignore"] = num_classes
    description = (f"Synthetic dataset generated by nnunet_csse.tools.synthetic ({'nested regions, ' * bool(regions)}"
                   f"difficulty={difficulty}); {'the last foreground class is small; ' if num_classes >= 3 else ''}"
                   + ("'ignore' marks unannotated slabs" if ignore_label else "fully annotated"))
    check_writable(raw_root, "nnUNet_raw folder")
    raw_root.mkdir(parents=True, exist_ok=True)
    partial = raw_root / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for i in range(num_cases + num_test_cases):  # test cases numbered after the training cases
            image, label = generate_case(np.random.default_rng(streams[1 + i]), dim, shape, num_classes, num_channels,
                                         difficulty, regions, spacing=spacing, profile=profile,
                                         ignore_label=ignore_label)
            case, split = f"{name.lower()}_{i:03d}", "Tr" if i < num_cases else "Ts"
            if dim == 2:
                image, label = image[:, None], label[None]
            for c in range(num_channels):
                _write_nifti(image[c], file_spacing, partial / f"images{split}" / f"{case}_{c:04d}{FILE_ENDING}")
            _write_nifti(label, file_spacing, partial / f"labels{split}" / f"{case}{FILE_ENDING}")
        generate_dataset_json(
            str(partial), {str(c): "MRI" if c == 0 else f"MRI_{c}" for c in range(num_channels)}, labels, num_cases,
            FILE_ENDING, regions_class_order=tuple(range(1, num_classes)) if regions else None, dataset_name=name,
            reference="nnunet_csse.tools.synthetic", description=description,
            overwrite_image_reader_writer="SimpleITKIO", license="CC0-1.0", converted_by="nnunet-csse synth",
            synthetic_generator={"seed": seed, "dim": dim, "size": list(shape), "spacing": list(spacing),
                                 "num_classes": num_classes, "num_channels": num_channels,
                                 "num_test_cases": num_test_cases, "difficulty": difficulty,
                                 "ignore_label": bool(ignore_label), "regions": bool(regions)})
        for path in existing:  # overwrite: every folder with this id (only those)
            path.unlink() if path.is_symlink() else shutil.rmtree(path)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
