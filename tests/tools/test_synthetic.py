"""Tests for nnunet_csse.tools.synthetic: nnU-Net raw layout, determinism, overwrite safety, hard/easy intensities."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from scipy import ndimage

from nnunet_csse.tools.synthetic import MIN_VOXELS_PER_CLASS, generate_case, write_synthetic_dataset

# dim -> (size, spacing in array axis order); anisotropic on purpose
GEOMETRY = {2: ((24, 32), (0.8, 0.5)), 3: ((12, 20, 16), (3.0, 1.0, 0.8))}
NUM_CASES, NUM_TEST, NUM_CLASSES, NUM_CHANNELS = 3, 2, 4, 2


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _load_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def _labels(folder: Path, split: str = "Tr") -> dict[str, np.ndarray]:
    return {p.name[: -len(".nii.gz")]: _read(p)[0] for p in sorted((folder / f"labels{split}").glob("*.nii.gz"))}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): _read(p)[0] for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def dataset(request, tmp_path_factory) -> tuple[int, Path]:
    dim = request.param
    size, spacing = GEOMETRY[dim]
    folder = write_synthetic_dataset(
        tmp_path_factory.mktemp(f"raw{dim}d"), 17, "Synth", dim=dim, num_cases=NUM_CASES, size=size,
        num_classes=NUM_CLASSES, num_channels=NUM_CHANNELS, num_test_cases=NUM_TEST, seed=3, spacing=spacing,
    )  # fmt: skip
    return dim, folder


def test_layout_names_shapes_dtypes_spacing(dataset):
    dim, folder = dataset
    size, spacing = GEOMETRY[dim]
    assert folder.name == "Dataset017_Synth"
    tr = [f"synth_{i:03d}" for i in range(NUM_CASES)]
    ts = [f"synth_{i:03d}" for i in range(NUM_CASES, NUM_CASES + NUM_TEST)]
    expected = {"dataset.json"}
    for split, cases in (("Tr", tr), ("Ts", ts)):
        expected |= {f"images{split}/{c}_{ch:04d}.nii.gz" for c in cases for ch in range(NUM_CHANNELS)}
        expected |= {f"labels{split}/{c}.nii.gz" for c in cases}
    assert set(_snapshot(folder)) == expected

    shape = (1, *size) if dim == 2 else size
    file_spacing = (999.0 * max(spacing), *spacing) if dim == 2 else spacing
    for rel in expected - {"dataset.json"}:
        arr, img = _read(folder / rel)
        assert arr.shape == shape, rel
        assert img.GetPixelID() == (sitk.sitkUInt8 if rel.startswith("labels") else sitk.sitkFloat32), rel
        np.testing.assert_allclose(img.GetSpacing()[::-1], file_spacing, rtol=1e-6)
        assert np.isfinite(arr).all()

    # what nnU-Net itself sees: (C, 1, H, W) with the singleton axis as the (largest-spacing) first axis for 2D
    images, props = SimpleITKIO().read_images([str(folder / f"imagesTr/{tr[0]}_{c:04d}.nii.gz") for c in range(2)])
    assert images.shape == (NUM_CHANNELS, *shape)
    np.testing.assert_allclose(props["spacing"], file_spacing, rtol=1e-6)
    if dim == 2:
        assert images.shape[1] == 1 and np.argmax(props["spacing"]) == 0


def test_dataset_json_is_valid_for_nnunet(dataset):
    _, folder = dataset
    ds = _load_json(folder)
    assert ds["numTraining"] == NUM_CASES and ds["file_ending"] == ".nii.gz"
    assert ds["channel_names"] == {"0": "MRI", "1": "MRI_1"}
    assert ds["labels"] == {"background": 0, "structure_1": 1, "structure_2": 2, "structure_3": 3}
    lm = LabelManager(ds["labels"], ds.get("regions_class_order"))
    assert lm.num_segmentation_heads == NUM_CLASSES
    assert not lm.has_regions and not lm.has_ignore_label
    assert lm.all_labels == list(range(NUM_CLASSES))


def test_every_class_in_every_case(dataset):
    _, folder = dataset
    for split in ("Tr", "Ts"):
        for case, seg in _labels(folder, split).items():
            counts = np.bincount(seg.ravel(), minlength=NUM_CLASSES)
            assert len(counts) == NUM_CLASSES, case
            assert counts.min() >= MIN_VOXELS_PER_CLASS, (case, counts)


def test_channels_differ(dataset):
    _, folder = dataset
    a = _read(folder / "imagesTr/synth_000_0000.nii.gz")[0]
    b = _read(folder / "imagesTr/synth_000_0001.nii.gz")[0]
    assert not np.allclose(a, b)


def test_nnunet_verify_dataset_integrity(tmp_path, monkeypatch):
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    if "fork" in multiprocessing.get_all_start_methods():
        # nnU-Net's check uses a "spawn" pool whose worker re-imports torch + nnunetv2 (~8 s); a forked worker runs
        # the very same checks without that cost.
        monkeypatch.setattr(
            vdi, "multiprocessing", SimpleNamespace(get_context=lambda _: multiprocessing.get_context("fork"))
        )
    folder = write_synthetic_dataset(
        tmp_path / "nnUNet_raw", 42, num_cases=3, size=(16, 20, 24), num_classes=4, num_channels=2,
        ignore_label=True, regions=True, spacing=(2.0, 1.0, 1.0),
    )  # fmt: skip
    vdi.verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


def test_same_seed_identical_different_seed_differs(tmp_path):
    kw = dict(dim=3, num_cases=2, size=16, num_classes=3, num_test_cases=1)
    a = write_synthetic_dataset(tmp_path / "a", 1, seed=7, **kw)
    b = write_synthetic_dataset(tmp_path / "b", 1, seed=7, **kw)
    c = write_synthetic_dataset(tmp_path / "c", 1, seed=8, **kw)
    arrays_a, arrays_b, arrays_c = _arrays(a), _arrays(b), _arrays(c)
    assert arrays_a.keys() == arrays_b.keys() == arrays_c.keys()
    for k in arrays_a:
        assert arrays_a[k].tobytes() == arrays_b[k].tobytes(), k
        assert arrays_a[k].tobytes() != arrays_c[k].tobytes(), k
    assert _load_json(a) == _load_json(b)

    x = generate_case(np.random.default_rng(5), 2, 20, 3, 2)
    y = generate_case(np.random.default_rng(5), 2, 20, 3, 2)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(x, y))
    assert x[0].dtype == np.float32 and x[1].dtype == np.uint8
    assert x[0].shape == (2, 20, 20) and x[1].shape == (20, 20)


def test_adding_test_cases_keeps_training_cases(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 2, dim=2, num_cases=2, size=16, seed=1)
    b = write_synthetic_dataset(tmp_path / "b", 2, dim=2, num_cases=2, size=16, seed=1, num_test_cases=2)
    arrays_b = _arrays(b)
    for k, v in _arrays(a).items():
        assert v.tobytes() == arrays_b[k].tobytes(), k


def test_refuses_overwrite_then_overwrite_replaces_only_that_id(tmp_path):
    kw = dict(dim=2, num_cases=2, size=12)
    old = write_synthetic_dataset(tmp_path, 5, "First", seed=0, **kw)
    other = write_synthetic_dataset(tmp_path, 6, "Other", seed=0, **kw)
    before, before_other = _snapshot(old), _snapshot(other)

    for name in ("First", "Second"):  # same id, any name
        with pytest.raises(FileExistsError) as err:
            write_synthetic_dataset(tmp_path, 5, name, seed=1, **kw)
        msg = str(err.value)
        assert "Dataset005_First" in msg and "overwrite=True" in msg and "--overwrite" in msg
        assert "another" in msg
    assert _snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset005_First", "Dataset006_Other"]

    new = write_synthetic_dataset(tmp_path, 5, "Second", seed=1, overwrite=True, **kw)
    assert new == tmp_path / "Dataset005_Second" and new.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset005_Second", "Dataset006_Other"]
    assert _snapshot(other) == before_other
    assert set(_labels(new)) == {"second_000", "second_001"}

    again = write_synthetic_dataset(tmp_path, 5, "Second", seed=2, overwrite=True, **kw)  # same folder name
    assert again == new and _snapshot(again) != _snapshot(old)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset_id=0), "dataset_id"),
        (dict(dataset_id=1000), "dataset_id"),
        (dict(dim=4), "dim"),
        (dict(num_classes=1), "num_classes"),
        (dict(size=7), "size"),
        (dict(size=(16, 16)), "size"),
        (dict(num_cases=0), "num_cases"),
        (dict(num_channels=0), "num_channels"),
        (dict(num_test_cases=-1), "num_test_cases"),
        (dict(difficulty="medium"), "difficulty"),
        (dict(regions=True, num_classes=2), "regions"),
        (dict(spacing=(1.0, 1.0)), "spacing"),
        (dict(spacing=(1.0, -1.0, 1.0)), "spacing"),
        (dict(seed=-1), "seed"),
        (dict(name="bad name"), "name"),
    ],
)
def test_argument_validation(tmp_path, kwargs, match):
    args = dict(raw_root=tmp_path, dataset_id=1) | kwargs
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(**args)
    assert not any(tmp_path.iterdir())


def _pooled(difficulty: str, dim: int, num_classes: int = 3, cases: int = 4) -> list[np.ndarray]:
    images, labels = zip(
        *(generate_case(np.random.default_rng(s), dim, 32, num_classes, 1, difficulty) for s in range(cases))
    )
    img, lab = np.stack(images)[:, 0], np.stack(labels)
    return [img[lab == k] for k in range(num_classes)]


@pytest.mark.parametrize("dim", [2, 3])
def test_hard_intensities_overlap_easy_separable(dim):
    hard = [np.quantile(v, [0.05, 0.95]) for v in _pooled("hard", dim)]
    for k in range(len(hard)):
        for j in range(k):  # every pair of classes (background included) overlaps in its 5-95 % range
            assert hard[k][0] < hard[j][1] and hard[j][0] < hard[k][1], (j, k, hard[j], hard[k])

    easy = sorted(_pooled("easy", dim), key=np.median)
    for lower, upper in zip(easy, easy[1:]):  # complete ranges disjoint: a threshold separates every pair
        assert lower.max() < upper.min()


def test_hard_geometry_touching_small_blurred():
    small_fraction = []
    for s in range(6):
        img, lab = generate_case(np.random.default_rng(s), 3, 32, 4, 1, "hard")
        assert (ndimage.binary_dilation(lab == 2) & (lab == 1)).any()  # structures 1 and 2 touch
        counts = np.bincount(lab.ravel(), minlength=4)
        small_fraction.append(counts[3] / counts[1:].sum())
        # partial volume: on the background side of structure 1's border the intensity is pulled towards it
        inner = lab == 1
        ring = ndimage.binary_dilation(inner) & (lab == 0)
        far = ~ndimage.binary_dilation(lab > 0, iterations=4)
        mean_in, mean_ring, mean_far = (float(img[0][m].mean()) for m in (inner, ring, far))
        assert min(mean_in, mean_far) < mean_ring < max(mean_in, mean_far)
    assert np.median(small_fraction) < 0.1  # the last class is a small structure


def test_ignore_label_slab(tmp_path):
    folder = write_synthetic_dataset(
        tmp_path, 3, dim=3, num_cases=3, size=(16, 20, 20), num_classes=3, ignore_label=True
    )
    ds = _load_json(folder)
    assert ds["labels"] == {"background": 0, "structure_1": 1, "structure_2": 2, "ignore": 3}
    lm = LabelManager(ds["labels"], ds.get("regions_class_order"))
    assert lm.has_ignore_label and lm.ignore_label == 3 and lm.num_segmentation_heads == 3
    for case, seg in _labels(folder).items():
        assert set(np.unique(seg)) == {0, 1, 2, 3}, case
        assert np.bincount(seg.ravel())[:3].min() >= MIN_VOXELS_PER_CLASS
        ignore = seg == 3
        (box,) = ndimage.find_objects(ignore.astype(np.uint8))
        assert ignore[box].all(), case  # a solid slab ...
        spans = [sl.stop - sl.start == n for sl, n in zip(box, seg.shape)]
        assert sum(spans) >= seg.ndim - 1, case  # ... spanning the volume in all but one axis
        assert 0.05 < ignore.mean() < 0.6, case


@pytest.mark.parametrize("dim", [2, 3])
def test_regions_nested(tmp_path, dim):
    folder = write_synthetic_dataset(tmp_path, 4, "Nest", dim=dim, num_cases=3, size=32, num_classes=4, regions=True)
    ds = _load_json(folder)
    assert ds["labels"] == {"background": 0, "region_1": [1, 2, 3], "region_2": [2, 3], "region_3": 3}
    assert ds["regions_class_order"] == [1, 2, 3]
    lm = LabelManager(ds["labels"], ds["regions_class_order"])
    assert lm.has_regions and lm.num_segmentation_heads == 3
    assert lm.all_regions == [(1, 2, 3), (2, 3), 3]
    inside = []
    for case, seg in _labels(folder).items():
        seg = seg[0] if dim == 2 else seg
        assert np.bincount(seg.ravel(), minlength=4).min() >= MIN_VOXELS_PER_CLASS, case
        for k in (2, 3):
            region = seg >= k
            ring = ndimage.binary_dilation(region) & ~region
            inside.append(np.mean(seg[ring] == k - 1))  # what surrounds region k is mostly structure k-1
    assert np.mean(inside) > 0.6
    counts = [np.bincount(s.ravel(), minlength=4) for s in _labels(folder).values()]
    assert all(c[3] < c[1] for c in counts)  # innermost structure is the small one


def test_generate_case_profile_shared_across_cases():
    means = []
    for s in range(3):
        img, lab = generate_case(np.random.default_rng(s), 2, 24, 3, 1, "easy")
        means.append([round(float(np.median(img[0][lab == k]))) for k in range(3)])
    assert means[0] == means[1] == means[2]  # default profile: same class-to-intensity mapping in every case
    with pytest.raises(ValueError, match="profile"):
        generate_case(np.random.default_rng(0), 2, 24, 3, 1, profile=np.ones((2, 3)))


@pytest.mark.parametrize("flags, message", [
    (["--classes", "1"], "error: --classes (background included) must be in 2..254, got 1"),
    (["--cases", "0"], "error: --cases must be >= 1, got 0"),
    (["--test-cases", "-1"], "error: --test-cases must be >= 0, got -1"),
    (["--channels", "0"], "error: --channels must be >= 1, got 0"),
    (["--regions", "--classes", "2"], "error: --regions needs --classes >= 3"),
    (["--spacing", "1", "1"], "error: --spacing must have 3 entries (array axis order) for --dim 3"),
])
def test_cli_errors_name_the_flags_the_user_typed(tmp_path, capsys, flags, message):
    from nnunet_csse.tools.cli import main

    assert main(["synth", "-d", "5", "--raw", str(tmp_path / "raw"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not any(word in err for word in ("num_classes", "num_cases", "num_test_cases", "num_channels", "dim="))
    assert not (tmp_path / "raw").exists()


def test_cli_existing_dataset_names_the_overwrite_flag(tmp_path, capsys):
    from nnunet_csse.tools.cli import main

    write_synthetic_dataset(tmp_path, 5, "First", num_cases=1, size=8, dim=2)
    before = sorted(tmp_path.rglob("*"))
    assert main(["synth", "-d", "5", "--raw", str(tmp_path), "--dim", "2", "--size", "8", "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert "Pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_volume_too_small_for_the_classes_is_one_line_and_writes_nothing(tmp_path, capsys):
    from nnunet_csse.tools.cli import main

    assert main(["synth", "-d", "5", "--raw", str(tmp_path), "--dim", "2", "--size", "8", "--classes", "30",
                 "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not place all 29 foreground classes") and err.count("\n") == 1
    assert "increase --size or reduce --classes" in err
    assert list(tmp_path.iterdir()) == []
