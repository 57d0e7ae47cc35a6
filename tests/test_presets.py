import json

import pytest
import torch
from conftest import write_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_csse.network import CSSEUNet
from nnunet_csse.presets import apply_preset, list_presets, load_preset
from nnunet_csse.tools.cli import main
from nnunet_csse.training import nnUNetTrainerCSSE


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
    folder = write_plans(tmp_path)
    before = sorted(folder.iterdir())
    with pytest.raises(ValueError, match="unknown dataset '7'.*nnUNet_preprocessed.*nnUNetv2_plan_and_preprocess -d 7"):
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
    assert sorted(folder.iterdir()) == before  # nothing written by the failed calls
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
    target = tmp_path / "Dataset042_Toy" / "nnUNetPlansCSSE_cpu_tiny.json"
    assert main(["plans", "apply", "cpu_tiny", "-d", "42", "-c", "2d"]) == 0  # the same again: left as it is
    edited = json.loads(target.read_text())
    edited["configurations"]["2d"]["csse"] = {"pdcr_temperature": 1.0}  # a hand-added block
    target.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["plans", "apply", "cpu_tiny", "-d", "42"]) == 2
    assert "differs from what preset 'cpu_tiny' writes" in capsys.readouterr().err
    assert json.loads(target.read_text()) == edited  # nothing overwritten
    assert main(["plans", "apply", "cpu_tiny", "-d", "42", "--force"]) == 0
    assert "csse" not in json.loads(target.read_text())["configurations"]["2d"]
    assert main(["plans", "apply", "cpu_tiny", "-d", "43"]) == 2
    assert "unknown dataset '43'" in capsys.readouterr().err
    assert main(["plans", "list"]) == 0
    assert "authors_3d" in capsys.readouterr().out
