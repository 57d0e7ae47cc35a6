import argparse
import json

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_csse.config import config_from_plans
from nnunet_csse.network import CSSEUNet
from nnunet_csse.presets import apply_preset, list_presets, load_preset, parse_settings
from nnunet_csse.tools.cli import build_parser, main
from nnunet_csse.training import nnUNetTrainerCSSE
from tests.toy_plans import write_plans


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


def test_set_writes_the_settings_into_the_chosen_configurations(tmp_path, monkeypatch, capsys):
    folder = write_plans(tmp_path)
    original = (folder / "nnUNetPlans.json").read_bytes()
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    settings = ["pdcr_temperature=1.0", "pdcr_encoder_stages=[2,3]", "pdcr_windows=rf", 'pdcr_pairs="batch"',
                "pdcr_projection_channels=null", "uafs_encoder=true"]
    assert main(["plans", "set", "-d", "42", "-c", "3d_fullres", *(f"--set={s}" for s in settings),
                 "--name", "nnUNetPlansMine"]) == 0
    out = capsys.readouterr().out
    assert "wrote " in out and "nnUNetv2_train 42 3d_fullres FOLD -tr nnUNetTrainerCSSE -p nnUNetPlansMine" in out
    assert (folder / "nnUNetPlans.json").read_bytes() == original
    plans = json.loads((folder / "nnUNetPlansMine.json").read_text())
    assert plans["plans_name"] == "nnUNetPlansMine" and "csse" not in plans["configurations"]["2d"]
    manager = PlansManager(plans)
    for name in ("3d_fullres", "3d_cascade_fullres"):  # the cascade inherits the settings of 3d_fullres
        config = config_from_plans(nnUNetTrainerCSSE.csse_defaults, manager.get_configuration(name).configuration,
                                   name)
        assert (config.pdcr.temperature, config.pdcr.encoder_stages, config.pdcr.windows) == (1.0, (2, 3), "rf")
        assert (config.pdcr.pairs, config.pdcr.projection_channels, config.uafs.encoder) == ("batch", None, True)
        assert config.uafs.decoder  # the trainer's default where nothing is set
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"  # data shared

    # a preset plus single settings, under a name of one's choice; the same again is left as it is
    apply = ["plans", "apply", "hpdcr", "-d", "42", "--set", "pdcr_temperature=1", "--name", "nnUNetPlansHTau1"]
    assert main(apply) == 0 and main(apply) == 0
    plans = json.loads((folder / "nnUNetPlansHTau1.json").read_text())
    for name in ("2d", "3d_fullres"):
        assert plans["configurations"][name]["csse"] == {"pdcr_windows": [5, 7, 9], "pdcr_temperature": 1}
    capsys.readouterr()
    assert main([*apply[:-3], "pdcr_temperature=2", "--name", "nnUNetPlansHTau1"]) == 2  # a different result
    assert "pass --force" in capsys.readouterr().err
    assert main([*apply[:-3], "pdcr_temperature=2", "--name", "nnUNetPlansHTau1", "--force"]) == 0
    assert json.loads((folder / "nnUNetPlansHTau1.json").read_text())["configurations"]["2d"]["csse"][
        "pdcr_temperature"] == 2
    assert (folder / "nnUNetPlans.json").read_bytes() == original


def test_settings_parse_as_json_or_a_bare_word(tmp_path):
    assert parse_settings(["a=1", "b=[2, 3]", "c=true", "d=null", "e=rf", 'f="rf"', "g=0.5", "h= batch "]) == {
        "a": 1, "b": [2, 3], "c": True, "d": None, "e": "rf", "f": "rf", "g": 0.5, "h": "batch"}
    folder = write_plans(tmp_path)
    target = apply_preset(None, 42, ["2d"], settings={"pdcr_min_anchors": 600, "pdcr_max_anchors": 1000},
                          identifier="nnUNetPlansMany", preprocessed_root=tmp_path)
    assert json.loads(target.read_text())["configurations"]["2d"]["csse"] == {"pdcr_min_anchors": 600,
                                                                               "pdcr_max_anchors": 1000}
    before = sorted(folder.iterdir())
    with pytest.raises(ValueError, match="'pdcr_min_anchors' <= 'pdcr_max_anchors'"):  # checked together
        apply_preset(None, 42, settings={"pdcr_min_anchors": 600}, identifier="nnUNetPlansFew",
                     preprocessed_root=tmp_path)
    with pytest.raises(ValueError, match=r"'pdcr_encoder_stages' needs two distinct levels"):  # with the preset's
        apply_preset("authors_3d", 42, settings={"pdcr_encoder_stages": [3]}, preprocessed_root=tmp_path)
    with pytest.raises(ValueError, match=r"give the new plans identifier \(--name\)"):
        apply_preset(None, 42, settings={"pdcr_temperature": 1.0}, preprocessed_root=tmp_path)
    assert sorted(folder.iterdir()) == before


COMMANDS = [[], ["trainers-path"], ["check"], ["synth"], ["plans"], ["plans", "list"], ["plans", "apply"],
            ["plans", "set"], ["demo"], ["pretrained"], ["uncertainty"], ["split"], ["compare"]]


def _subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_the_help_test_covers_every_command():
    commands = {tuple(c) for c in COMMANDS}
    parser = build_parser()
    for path in COMMANDS:  # every subcommand the parser has is in COMMANDS
        sub = [a for a in _subparser(parser, path)._actions if isinstance(a, argparse._SubParsersAction)]
        assert all((*path, name) in commands for s in sub for name in s.choices)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "nnunet-csse")
def test_help_is_plain_text_and_states_defaults(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: nnunet-csse")
    for markup in ("``", ":mod:", ":func:", ":class:", ".. "):
        assert markup not in text, f"reST markup {markup!r} in the help of {path}"
    parser = _subparser(build_parser(), path)
    assert parser.description, f"{path} has no description"
    flat = "".join(text.split())  # argparse wraps lines (also at hyphens)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        help_text = formatter._expand_help(action) if action.help else ""
        assert "".join(help_text.split()) in flat and help_text, f"{action.option_strings} of {path} has no help"
        if action.required:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            assert "without it" in help_text, f"{action.option_strings} of {path}: say what happens without it"
        else:
            assert "default" in help_text, f"{action.option_strings} of {path}: state the default"
