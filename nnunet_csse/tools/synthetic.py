"""Seeded synthetic segmentation datasets in nnU-Net v2 raw format.

``write_synthetic_dataset`` writes ``<raw_root>/DatasetXXX_<name>/`` with ``dataset.json``,
``imagesTr/<case>_0000.nii.gz`` (one file per channel), ``labelsTr/<case>.nii.gz`` and, when
``num_test_cases > 0``, ``imagesTs/`` (plus ``labelsTs/`` for offline evaluation; nnU-Net ignores it).
Images are float32, labels uint8, both written with SimpleITK. 2D datasets are stored the way nnU-Net
expects 2D NIfTI: as 3D volumes with a singleton first array axis, shape ``(1, H, W)``, whose spacing is
``999 * max(in-plane spacing)`` (what nnU-Net's SimpleITKIO itself assigns to 2D images), so nnU-Net
plans only the ``2d`` configuration. ``generate_case`` is the pure, reusable per-case generator.

``difficulty="hard"`` (default) reproduces the conditions the CSSE paper (Liu et al., TMI 2022) targets:

* **Similar textures / overlapping intensities.** Class means (per channel) sit on a grid only 0.3 apart
  (random order per channel, so each channel of a multi-channel case separates different pairs), every class
  gets the same kind of fine-grained correlated texture with nearly the same amplitude, and the per-class
  intensity distributions overlap each other and the background's.
* **Blurred / partial-volume boundaries.** The piecewise-constant class-mean map is Gaussian smoothed
  (sigma 0.8-1.3 mm, per axis in voxels), i.e. intensities are mixtures of soft class masks.
* **Touching structures.** Structure 2 is always centred on the boundary of structure 1 and grows into the
  free space next to it, so the two share a border; each later structure abuts an earlier one with probability
  1/2 and is otherwise painted at a random position (possibly inside another structure, like a lesion).
* **A small structure class.** With two or more foreground classes the last class is small (radius ~5-8 % of
  the smallest physical extent, at least 1.6 voxels of the coarsest axis).
* **Smooth multiplicative bias field** ``exp(p(x))`` with ``p`` a random polynomial of degree 2 on normalised
  coordinates (per case typically 0.75x-1.3x across the volume, extremes ~0.5x-1.8x), drawn per case and
  channel.
* **Gaussian noise** (sd 0.07-0.12, class means are ~1-2).
* **Random shapes**: superellipsoids (exponent 1.6-3.5) or blobs (a superellipsoid level set deformed by
  thresholded, Gaussian-smoothed noise), at random positions, orientations (random rotation) and sizes
  (structure 1 is large, the middle classes medium).

With ``regions=True`` the structures are nested BraTS-like (structure k lies inside structure k-1, the
innermost is the small one) and ``dataset.json`` declares ``num_classes - 1`` regions, region k = labels
``>= k``, with ``regions_class_order = [1, ..., num_classes - 1]``. With ``ignore_label=True`` a random slab
of each case (20-45 % of one axis, narrower if that would erase a class; as in partially annotated scans)
is relabelled ``num_classes`` ("ignore") without wiping out any class.

``difficulty="easy"`` uses the same placement (sizes, touching, nesting) with plain ellipsoids, well-separated
class means (1.0 apart), crisp boundaries, no texture, no bias field and tiny noise (sd 0.03): a threshold
separates every pair of classes (for quick sanity tests). The image is rendered before the ignore slab is
painted, so ignored voxels keep their true appearance.

Every case contains every foreground class (and background), at least ``MIN_VOXELS_PER_CLASS`` voxels each,
also after ignore painting. Everything is driven by ``numpy.random.Generator`` streams derived from ``seed``
via ``SeedSequence.spawn`` (profile stream + one stream per case), so the same seed gives byte-identical
arrays, and adding test cases does not change the training cases.
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

__all__ = ["MIN_VOXELS_PER_CLASS", "generate_case", "intensity_profile", "write_synthetic_dataset"]

#: every class (background included) has at least this many voxels in every generated case
MIN_VOXELS_PER_CLASS = 6

_DIFFICULTIES = ("easy", "hard")
_MAX_PLACEMENT_ATTEMPTS = 50
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_FILE_ENDING = ".nii.gz"


# ----------------------------------------------------------------------------------------------- validation
def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _normalize_size(size: Sequence[int] | int, dim: int) -> tuple[int, ...]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        shape = (int(size),) * dim
    else:
        try:
            shape = tuple(_as_int(s, "size entries") for s in size)  # type: ignore[union-attr]
        except TypeError:
            raise ValueError(f"size must be an int or a sequence of {dim} ints, got {size!r}") from None
        if len(shape) != dim:
            raise ValueError(f"size must have {dim} entries for dim={dim}, got {size!r}")
    if min(shape) < 8:
        raise ValueError(f"size must be >= 8 along every axis, got {shape}")
    return shape


def _normalize_spacing(spacing: Sequence[float] | None, dim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * dim
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a sequence of {dim} positive numbers, got {spacing!r}") from None
    if len(sp) != dim:
        raise ValueError(f"spacing must have {dim} entries (array axis order) for dim={dim}, got {spacing!r}")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing entries must be finite and > 0, got {spacing!r}")
    return sp


def _validate_common(dim: int, num_classes: int, num_channels: int, difficulty: str, regions: bool) -> None:
    dim = _as_int(dim, "dim")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    num_classes = _as_int(num_classes, "num_classes")
    if not 2 <= num_classes <= 254:
        raise ValueError(f"num_classes (background included) must be in 2..254, got {num_classes}")
    if _as_int(num_channels, "num_channels") < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels}")
    if difficulty not in _DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {_DIFFICULTIES}, got {difficulty!r}")
    if regions and num_classes < 3:
        raise ValueError(
            "regions=True needs num_classes >= 3 (background + at least two nested structures), "
            f"got num_classes={num_classes}"
        )


# ------------------------------------------------------------------------------------------------- geometry
def _random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    if dim == 2:
        a = rng.uniform(0.0, 2.0 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise, normalised to zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="reflect")
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


class _Grid:
    """Physical voxel-centre coordinates as open (broadcastable) grids."""

    def __init__(self, shape: tuple[int, ...], spacing: tuple[float, ...]):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.extent = np.asarray(shape, dtype=np.float64) * self.spacing
        self.ref = float(self.extent.min())
        ndim = len(shape)
        self.coords = [
            ((np.arange(n, dtype=np.float32) + 0.5) * np.float32(s)).reshape([-1 if a == i else 1 for a in range(ndim)])
            for i, (n, s) in enumerate(zip(shape, spacing))
        ]
        self.min_radius = 1.6 * float(self.spacing.max())

    def voxel_center(self, flat_index: int) -> np.ndarray:
        idx = np.asarray(np.unravel_index(flat_index, self.shape), dtype=np.float64)
        return (idx + 0.5) * self.spacing


def _shape_level(rng: np.random.Generator, grid: _Grid, center: np.ndarray, radius: float, hard: bool) -> np.ndarray:
    """Level function of a random (deformed) superellipsoid; the shape is ``level <= 1``."""
    dim = len(grid.shape)
    radii = radius * rng.uniform(0.7, 1.3, size=dim)
    rot = _random_rotation(rng, dim)
    p = rng.uniform(1.6, 3.5) if hard else 2.0
    d = [c - np.float32(x) for c, x in zip(grid.coords, center)]
    level = None
    for j in range(dim):
        u = sum(np.float32(rot[j, i] / radii[j]) * d[i] for i in range(dim))
        term = np.abs(u) ** np.float32(p)
        level = term if level is None else level + term
    level = level ** np.float32(1.0 / p)
    level = np.broadcast_to(level, grid.shape).astype(np.float32, copy=True)
    if hard:
        # blob or (almost) pure superellipsoid; small structures stay compact
        blob = rng.random() < 0.5 and radius > 3.0 * grid.min_radius
        amp = rng.uniform(0.3, 0.5) if blob else rng.uniform(0.0, 0.1)
        sigma = np.maximum(0.35 * radius / grid.spacing, 1.0)
        level += np.float32(amp) * _smooth_noise(rng, grid.shape, sigma)
    return level


def _radius(rng: np.random.Generator, grid: _Grid, role: str) -> float:
    lo, hi = {"large": (0.18, 0.28), "medium": (0.10, 0.18), "small": (0.05, 0.08)}[role]
    return max(rng.uniform(lo, hi) * grid.ref, grid.min_radius)


def _random_center(rng: np.random.Generator, grid: _Grid, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=len(grid.shape)) * grid.extent


def _painted_labels(rng: np.random.Generator, grid: _Grid, num_classes: int, hard: bool) -> np.ndarray:
    """Structures 1..K: 2 abuts 1, later ones abut an earlier one with prob. 1/2, else are painted on top."""
    num_fg = num_classes - 1
    label = np.zeros(grid.shape, dtype=np.uint8)
    for k in range(1, num_fg + 1):
        role = "large" if k == 1 else ("small" if k == num_fg else "medium")
        radius = _radius(rng, grid, role)
        center, abutting = None, False
        if k == 1:
            center = _random_center(rng, grid, 0.3, 0.7)
        elif k == 2 or rng.random() < 0.5:
            target = label == (1 if k == 2 else int(rng.integers(1, k)))
            border = np.flatnonzero(target & ~ndimage.binary_erosion(target))
            if border.size:
                # a border voxel, pushed outwards by half a radius so most of the new shape lies in free space
                center = grid.voxel_center(int(border[rng.integers(border.size)]))
                outward = center - (np.asarray(ndimage.center_of_mass(target)) + 0.5) * grid.spacing
                center = center + 0.5 * radius * outward / max(float(np.linalg.norm(outward)), 1e-6)
                abutting = True
        if center is None:
            center = _random_center(rng, grid, 0.15, 0.85)
        mask = _shape_level(rng, grid, center, radius, hard) <= 1.0
        if abutting:
            mask &= label == 0  # abutting structure: grows only into free space, sharing the target's border
        label[mask] = k  # otherwise painted on top (e.g. a small inclusion inside an organ)
    return label


def _nested_labels(rng: np.random.Generator, grid: _Grid, num_classes: int, hard: bool) -> np.ndarray:
    """BraTS-like nesting: structure k lies inside structure k-1; label = depth of nesting.

    Radii shrink geometrically from a large outer structure to a small innermost one.
    """
    num_fg = num_classes - 1
    label = np.zeros(grid.shape, dtype=np.uint8)
    outer, inner = _radius(rng, grid, "large"), _radius(rng, grid, "small")
    ratio = (inner / outer) ** (1.0 / (num_fg - 1))
    parent_mask = parent_level = None
    radius = outer
    for k in range(1, num_fg + 1):
        if parent_mask is None:
            center = _random_center(rng, grid, 0.3, 0.7)
        else:
            radius = max(radius * ratio * rng.uniform(0.9, 1.1), grid.min_radius)
            candidates = np.flatnonzero(parent_mask & (parent_level < 0.5))
            if candidates.size == 0:
                candidates = np.flatnonzero(parent_mask)
            if candidates.size == 0:
                break  # rejected by the caller's presence check
            center = grid.voxel_center(int(candidates[rng.integers(candidates.size)]))
        level = _shape_level(rng, grid, center, radius, hard)
        mask = level <= 1.0
        if parent_mask is not None:
            mask &= parent_mask
        label[mask] = k
        parent_mask, parent_level = mask, level
    return label


def _label_map(rng: np.random.Generator, grid: _Grid, num_classes: int, hard: bool, regions: bool) -> np.ndarray:
    for _ in range(_MAX_PLACEMENT_ATTEMPTS):
        make = _nested_labels if regions else _painted_labels
        label = make(rng, grid, num_classes, hard)
        counts = np.bincount(label.ravel(), minlength=num_classes)
        if counts.min() < MIN_VOXELS_PER_CLASS:
            continue
        # structures 1 and 2 must share a border (later paintings or blob deformation can break that)
        if num_classes < 3 or (ndimage.binary_dilation(label == 2) & (label == 1)).any():
            return label
    raise RuntimeError(
        f"could not place all {num_classes - 1} foreground classes (>= {MIN_VOXELS_PER_CLASS} voxels each, "
        f"structures 1 and 2 touching) in a {grid.shape} volume after {_MAX_PLACEMENT_ATTEMPTS} attempts; "
        "increase size or reduce num_classes"
    )


def _paint_ignore(rng: np.random.Generator, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Relabel a random slab (20-45 %, later 10-22 %, of one axis) as ``num_classes``; every class stays present."""
    ignore = num_classes
    for attempt in range(40):
        axis = int(rng.integers(label.ndim))
        n = label.shape[axis]
        frac = rng.uniform(0.2, 0.45) * (1.0 if attempt < 20 else 0.5)
        width = max(1, int(round(frac * n)))
        start = int(rng.integers(0, n - width + 1))
        index = [slice(None)] * label.ndim
        index[axis] = slice(start, start + width)
        out = label.copy()
        out[tuple(index)] = ignore
        if np.bincount(out.ravel(), minlength=num_classes)[:num_classes].min() >= MIN_VOXELS_PER_CLASS:
            return out
    # fallback (practically unreachable): ignore only the background of one border slice
    out = label.copy()
    border = out[0]
    border[border == 0] = ignore
    if np.bincount(out.ravel(), minlength=num_classes)[0] < MIN_VOXELS_PER_CLASS:
        return label
    return out


# ---------------------------------------------------------------------------------------------- intensities
def intensity_profile(
    rng: np.random.Generator | None, num_classes: int, num_channels: int = 1, difficulty: str = "hard"
) -> np.ndarray:
    """Per-channel class mean intensities, shape ``(num_channels, num_classes)`` (index 0 = background).

    Hard: means on a grid 0.3 apart (+-0.04 jitter) in random order per channel; easy: 1.0 apart. ``rng=None``
    gives a fixed profile that depends only on the arguments (what ``generate_case`` uses by default).
    """
    _validate_common(2, num_classes, num_channels, difficulty, False)
    if rng is None:
        rng = np.random.default_rng([num_classes, num_channels, _DIFFICULTIES.index(difficulty), 2022])
    gap = 0.3 if difficulty == "hard" else 1.0
    profile = np.empty((num_channels, num_classes), dtype=np.float64)
    for c in range(num_channels):
        profile[c] = 1.0 + gap * rng.permutation(num_classes)
        if difficulty == "hard":
            profile[c] += rng.uniform(-0.04, 0.04, size=num_classes)
    return profile


def _bias_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """exp(random degree-2 polynomial) on coordinates normalised to [-1, 1]."""
    dim = len(grid.shape)
    x = [np.float32(2.0) * c / np.float32(e) - np.float32(1.0) for c, e in zip(grid.coords, grid.extent)]
    poly = np.zeros(grid.shape, dtype=np.float32)
    for i in range(dim):
        poly += np.float32(rng.uniform(-0.15, 0.15)) * x[i]
        for j in range(i, dim):
            poly += np.float32(rng.uniform(-0.1, 0.1)) * (x[i] * x[j])
    return np.exp(poly)


def _render(rng: np.random.Generator, label: np.ndarray, grid: _Grid, profile: np.ndarray, hard: bool) -> np.ndarray:
    num_channels = profile.shape[0]
    image = np.empty((num_channels, *label.shape), dtype=np.float32)
    if not hard:
        for c in range(num_channels):
            image[c] = profile[c].astype(np.float32)[label]
            image[c] += np.float32(0.03) * rng.standard_normal(label.shape, dtype=np.float32)
        return image
    levels = (profile + rng.normal(0.0, 0.03, size=profile.shape)).astype(np.float32)  # per-case scanner shift
    tex_amp = rng.uniform(0.10, 0.16, size=profile.shape).astype(np.float32)  # similar textures for all classes
    pv_sigma = rng.uniform(0.8, 1.3) / grid.spacing  # partial-volume blur, mm -> voxels per axis
    tex_sigma = rng.uniform(0.7, 1.2) / grid.spacing
    noise_sd = np.float32(rng.uniform(0.07, 0.12))
    for c in range(num_channels):
        mean = ndimage.gaussian_filter(levels[c][label], pv_sigma, mode="nearest")
        amp = ndimage.gaussian_filter(tex_amp[c][label], pv_sigma, mode="nearest")
        texture = _smooth_noise(rng, label.shape, tex_sigma)
        image[c] = (mean + amp * texture) * _bias_field(rng, grid)
        image[c] += noise_sd * rng.standard_normal(label.shape, dtype=np.float32)
    return image


# ------------------------------------------------------------------------------------------------ public API
def generate_case(
    rng: np.random.Generator,
    dim: int = 3,
    size: Sequence[int] | int = 32,
    num_classes: int = 3,
    num_channels: int = 1,
    difficulty: str = "hard",
    regions: bool = False,
    *,
    spacing: Sequence[float] | None = None,
    profile: np.ndarray | None = None,
    ignore_label: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic case (pure function of ``rng`` and the arguments).

    Args:
        rng: random generator; it is advanced, the same generator state gives identical arrays.
        dim: 2 or 3 spatial dimensions.
        size: spatial shape (int for a cube/square), every axis >= 8.
        num_classes: number of label classes including background (labels ``0..num_classes-1``).
        num_channels: number of image channels.
        difficulty: ``"hard"`` (see module docstring) or ``"easy"``.
        regions: nested structures (label k inside label k-1), for region-based training.
        spacing: voxel spacing per array axis (mm), default isotropic 1.0; shapes and blur are physical.
        profile: ``(num_channels, num_classes)`` class means; default ``intensity_profile(None, ...)``, a fixed
            profile, so that independently generated cases share their class-to-intensity mapping.
        ignore_label: additionally relabel a random slab as ``num_classes`` (the nnU-Net ignore label).

    Returns:
        ``(image, label)``: float32 ``(num_channels, *size)`` and uint8 ``size``.
    """
    _validate_common(dim, num_classes, num_channels, difficulty, regions)
    shape = _normalize_size(size, dim)
    grid = _Grid(shape, _normalize_spacing(spacing, dim))
    if profile is None:
        profile = intensity_profile(None, num_classes, num_channels, difficulty)
    profile = np.asarray(profile, dtype=np.float64)
    if profile.shape != (num_channels, num_classes):
        raise ValueError(f"profile must have shape {(num_channels, num_classes)}, got {profile.shape}")
    hard = difficulty == "hard"
    label = _label_map(rng, grid, num_classes, hard, regions)
    image = _render(rng, label, grid, profile, hard)
    if ignore_label:
        label = _paint_ignore(rng, label, num_classes)
    return image, label


def _write_dataset_json(
    folder: Path,
    name: str,
    num_cases: int,
    num_classes: int,
    num_channels: int,
    ignore_label: bool,
    regions: bool,
    settings: dict,
) -> None:
    """``folder/dataset.json`` through nnU-Net's ``generate_dataset_json``."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    channel_names = {str(c): ("MRI" if c == 0 else f"MRI_{c}") for c in range(num_channels)}
    num_fg = num_classes - 1
    labels: dict[str, int | list[int]] = {"background": 0}
    if regions:
        for k in range(1, num_fg + 1):
            members = list(range(k, num_classes))
            labels[f"region_{k}"] = members if len(members) > 1 else members[0]
    else:
        for k in range(1, num_fg + 1):
            labels[f"structure_{k}"] = k
    if ignore_label:
        labels["ignore"] = num_classes
    description = ("Synthetic dataset generated by nnunet_csse.tools.synthetic "
                   + ("(nested regions, " if regions else "(")
                   + f"difficulty={settings['difficulty']}); "
                   + ("the last foreground class is small; " if num_fg >= 2 else "")
                   + ("'ignore' marks unannotated slabs" if ignore_label else "fully annotated"))
    generate_dataset_json(
        str(folder), channel_names, labels, num_cases, _FILE_ENDING,
        regions_class_order=tuple(range(1, num_classes)) if regions else None, dataset_name=name,
        reference="nnunet_csse.tools.synthetic", description=description, overwrite_image_reader_writer="SimpleITKIO",
        license="CC0-1.0", converted_by="nnunet-csse synth", synthetic_generator=settings,
    )


def _write_nifti(array: np.ndarray, spacing_zyx: tuple[float, ...], path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(img, str(path), useCompression=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def write_synthetic_dataset(
    raw_root: str | Path,
    dataset_id: int,
    name: str = "CSSESynth",
    *,
    dim: int = 3,
    num_cases: int = 8,
    size: Sequence[int] | int = 32,
    num_classes: int = 3,
    num_channels: int = 1,
    num_test_cases: int = 0,
    seed: int = 0,
    difficulty: str = "hard",
    ignore_label: bool = False,
    regions: bool = False,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a seeded synthetic dataset ``<raw_root>/Dataset{dataset_id:03d}_{name}`` in nnU-Net v2 raw format.

    Args:
        raw_root: the nnU-Net raw folder (``nnUNet_raw``); created if missing.
        dataset_id: nnU-Net dataset id, 1..999.
        name: dataset name (letters, digits, ``_``, ``-``); cases are ``f"{name.lower()}_{i:03d}"``, training
            cases ``0..num_cases-1``, test cases (``imagesTs``/``labelsTs``) numbered after them.
        dim: 2 (stored as ``(1, H, W)`` NIfTI) or 3.
        num_cases: number of training cases (>= 1).
        size: spatial shape per case (int or ``dim`` ints, each >= 8).
        num_classes: classes including background (3 -> background + 2 structures).
        num_channels: image channels (``_0000``, ``_0001``, ...).
        num_test_cases: cases written to ``imagesTs`` (with reference labels in ``labelsTs``).
        seed: non-negative seed; same seed -> byte-identical arrays.
        difficulty: ``"hard"`` (the paper's conditions, see module docstring) or ``"easy"``.
        ignore_label: add label ``"ignore" = num_classes`` painted over a random slab of each case.
        regions: nested structures and BraTS-like region definitions plus ``regions_class_order``.
        spacing: voxel spacing per array axis in mm (``dim`` values, (z, y, x) order for 3D); default 1.0.
        overwrite: replace an existing dataset folder with the same id (any name); otherwise refuse.

    Returns:
        The dataset folder.

    Raises:
        ValueError: invalid arguments.
        FileExistsError: a ``Dataset{dataset_id:03d}_*`` folder exists and ``overwrite`` is False.
    """
    dataset_id = _as_int(dataset_id, "dataset_id")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"name must start with a letter or digit and contain only letters, digits, '_' or '-', got {name!r}"
        )
    _validate_common(dim, num_classes, num_channels, difficulty, regions)
    if _as_int(num_cases, "num_cases") < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if _as_int(num_test_cases, "num_test_cases") < 0:
        raise ValueError(f"num_test_cases must be >= 0, got {num_test_cases}")
    if _as_int(seed, "seed") < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    shape = _normalize_size(size, dim)
    sp = _normalize_spacing(spacing, dim)

    raw_root = Path(raw_root)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    folder = raw_root / folder_name
    existing = sorted(p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()) if raw_root.is_dir() else []
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise FileExistsError(
            f"dataset id {dataset_id:03d} already exists: {names}. Pass overwrite=True (CLI: --overwrite) to replace "
            f"it, or choose another dataset id."
        )

    file_spacing = (999.0 * max(sp), *sp) if dim == 2 else sp
    case_prefix = name.lower()
    streams = np.random.SeedSequence(seed).spawn(1 + num_cases + num_test_cases)
    profile = intensity_profile(np.random.default_rng(streams[0]), num_classes, num_channels, difficulty)
    settings = {
        "seed": seed,
        "dim": dim,
        "size": list(shape),
        "spacing": list(sp),
        "num_classes": num_classes,
        "num_channels": num_channels,
        "num_test_cases": num_test_cases,
        "difficulty": difficulty,
        "ignore_label": bool(ignore_label),
        "regions": bool(regions),
    }

    check_writable(raw_root, "nnUNet_raw folder")
    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = raw_root / f".{folder_name}.partial-{os.getpid()}"
    if tmp.exists():
        _remove(tmp)
    try:
        for split, first, count in (("Tr", 0, num_cases), ("Ts", num_cases, num_test_cases)):
            if count == 0:
                continue
            (tmp / f"images{split}").mkdir(parents=True)
            (tmp / f"labels{split}").mkdir(parents=True)
            for i in range(first, first + count):
                image, label = generate_case(
                    np.random.default_rng(streams[1 + i]),
                    dim,
                    shape,
                    num_classes,
                    num_channels,
                    difficulty,
                    regions,
                    spacing=sp,
                    profile=profile,
                    ignore_label=ignore_label,
                )
                case = f"{case_prefix}_{i:03d}"
                if dim == 2:
                    image, label = image[:, None], label[None]
                for c in range(num_channels):
                    _write_nifti(image[c], file_spacing, tmp / f"images{split}" / f"{case}_{c:04d}{_FILE_ENDING}")
                _write_nifti(label, file_spacing, tmp / f"labels{split}" / f"{case}{_FILE_ENDING}")
        _write_dataset_json(tmp, name, num_cases, num_classes, num_channels, ignore_label, regions, settings)
        for p in existing:  # overwrite=True: drop every folder with this id (only those)
            _remove(p)
        tmp.rename(folder)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
