import json

import pytest
import torch
from conftest import PLAIN, REQ_IMPORT, arch_kwargs
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_csse.cli import main
from nnunet_csse.network import CSSEUNet
from nnunet_csse.plans import apply_preset, list_presets, load_preset
from nnunet_csse.training import nnUNetTrainerCSSE


def write_plans(preprocessed, dataset="Dataset042_Toy"):
    folder = preprocessed / dataset
    folder.mkdir(parents=True)
    configurations = {}
    for dim, name in ((2, "2d"), (3, "3d_fullres")):
        configurations[name] = {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
            "patch_size": [32] * dim, "spacing": [1.0] * dim, "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
            "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
            "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch_kwargs(dim, PLAIN, features=32),
                             "_kw_requires_import": REQ_IMPORT},
        }
    configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_fullres"}
    plans = {"dataset_name": dataset, "plans_name": "nnUNetPlans", "configurations": configurations,
             "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [32, 32, 32],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=4))
    return folder


def test_shipped_presets_load():
    assert {"authors_3d", "authors_2d", "hpdcr", "cpu_tiny"} <= set(list_presets())
    for name in list_presets():
        assert load_preset(name)[1]["description"]


def test_apply_writes_a_new_identifier_and_leaves_nnunet_plans_alone(tmp_path):
    folder = write_plans(tmp_path)
    original = (folder / "nnUNetPlans.json").read_bytes()
    target = apply_preset("cpu_tiny", 42, ["3d_fullres"], preprocessed_root=tmp_path)
    assert target.name == "nnUNetPlansCSSE_cpu_tiny.json"
    assert (folder / "nnUNetPlans.json").read_bytes() == original
    plans = json.loads(target.read_text())
    assert plans["plans_name"] == "nnUNetPlansCSSE_cpu_tiny"
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 32]
    assert fullres["batch_size"] == 2 and fullres["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 32  # not chosen


def test_csse_settings_reach_the_trainer_network(tmp_path):
    write_plans(tmp_path)
    target = apply_preset("hpdcr", "Dataset042_Toy", preprocessed_root=tmp_path)
    plans = json.loads(target.read_text())
    assert plans["configurations"]["2d"]["csse"] == {"pdcr_windows": [5, 7, 9]}
    manager = PlansManager(plans)
    cascade = manager.get_configuration("3d_cascade_fullres")  # inherits settings from 3d_fullres
    assert cascade.configuration["csse"] == {"pdcr_windows": [5, 7, 9]}
    authors_2d = apply_preset("authors_2d", 42, preprocessed_root=tmp_path)
    manager = PlansManager(json.loads(authors_2d.read_text()))
    net = nnUNetTrainerCSSE.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3, True)
    assert isinstance(net, CSSEUNet) and net.encoder_uafs is not None and net.decoder_anchor_layers
    assert net(torch.randn(1, 1, 32, 32))[0].shape == (1, 3, 32, 32)


def test_errors_name_the_problem(tmp_path):
    write_plans(tmp_path)
    with pytest.raises(ValueError, match="dataset '7' not found"):
        apply_preset("cpu_tiny", 7, preprocessed_root=tmp_path)
    with pytest.raises(ValueError, match=r"\['3d_lowres'\] do not exist"):
        apply_preset("cpu_tiny", 42, ["3d_lowres"], preprocessed_root=tmp_path)
    with pytest.raises(ValueError, match="unknown plans preset 'tiny'"):
        apply_preset("tiny", 42, preprocessed_root=tmp_path)
    with pytest.raises(ValueError, match="no plans 'nnUNetResEncUNetMPlans'"):
        apply_preset("cpu_tiny", 42, source_plans="nnUNetResEncUNetMPlans", preprocessed_root=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"csse": {"pdcr_encoder_weight": -1}}))
    with pytest.raises(ValueError, match="pdcr_encoder_weight"):
        apply_preset(str(bad), 42, preprocessed_root=tmp_path)
    foreign = tmp_path / "Dataset042_Toy" / "nnUNetPlansCSSE_cpu_tiny.json"
    foreign.write_text("{}")
    with pytest.raises(ValueError, match="not written by nnunet-csse"):
        apply_preset("cpu_tiny", 42, preprocessed_root=tmp_path)
    assert foreign.read_text() == "{}"


def test_cli(tmp_path, monkeypatch, capsys):
    write_plans(tmp_path)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["plans", "apply", "cpu_tiny", "-d", "42", "-c", "2d"]) == 0
    assert "-p nnUNetPlansCSSE_cpu_tiny" in capsys.readouterr().out
    assert main(["plans", "apply", "cpu_tiny", "-d", "42"]) == 0  # re-applying replaces our own file
    assert main(["plans", "apply", "cpu_tiny", "-d", "43"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["plans", "list"]) == 0
    assert "authors_3d" in capsys.readouterr().out
