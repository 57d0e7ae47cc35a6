"""Bad input fails with a message naming the problem and the fix, and nothing lands in nnU-Net's folders."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args

from nnunet_csse.environment import REEXPORT_MODULE, ext_trainer_problem, trainers_path
from tests.toy_plans import TOY_DATASET_JSON, write_toy_dataset

BIN = os.path.dirname(sys.executable)
@pytest.fixture
def dataset(nnunet_dirs, monkeypatch):
    """Dataset042_Toy in nnUNet_preprocessed, as far as nnUNetv2_train reads it before the data."""
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    return write_toy_dataset(nnunet_dirs["nnUNet_preprocessed"])


def edit(folder, labels=None, network_class=None, csse=None) -> None:
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    fullres = plans["configurations"]["3d_fullres"]
    if network_class:
        fullres["architecture"]["network_class_name"] = network_class
    if csse is not None:
        fullres["csse"] = csse
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    if labels:
        (folder / "dataset.json").write_text(json.dumps(dict(TOY_DATASET_JSON, labels=labels)))


def start_training(trainer: str = "nnUNetTrainerCSSE", plans: str = "nnUNetPlans"):
    """What ``nnUNetv2_train 42 3d_fullres 0 -tr <trainer> -p <plans> -device cpu`` does before anything else."""
    return get_trainer_from_args("42", "3d_fullres", 0, trainer, plans, device=torch.device("cpu"))


def test_valid_plans_start_a_training(dataset, nnunet_dirs):
    """The control: with valid input the same call gets as far as nnU-Net's output folder."""
    trainer = start_training()
    assert trainer.csse_config.uafs.decoder and os.path.isdir(trainer.output_folder)
    assert any(nnunet_dirs["nnUNet_results"].iterdir())


@pytest.mark.parametrize("change,messages", [
    ({"labels": {"background": 0, "a": 1, "b": 3}},
     ["not consecutive", "[0, 1, 3]", "--verify_dataset_integrity"]),
    ({"labels": {"background": 0, "a": 2}}, ["not consecutive", "[0, 2]"]),
    ({"network_class": "dynamic_network_architectures.architectures.unet.ResidualUNet"},
     ["ResidualUNet", "PlainConvUNet and ResidualEncoderUNet", "nnUNetPlannerResEnc"]),
    ({"csse": {"pdcr_temprature": 1.0}}, ["unknown csse setting", "pdcr_temprature", "3d_fullres"]),
    ({"csse": {"pdcr_encoder_weight": -0.5}}, ["pdcr_encoder_weight", "3d_fullres"]),
    ({"csse": {"pdcr_windows": [5, 65]}}, ["larger than the patch", "3d_fullres"]),
    ({"csse": {"pdcr_encoder_stages": [2, 7]}}, ["'pdcr_encoder_stages' [2, 7]", "[7] outside this network", "0..3",
                                                 "3d_fullres"]),
])
def test_bad_input_is_named_before_nnunet_writes_anything(dataset, nnunet_dirs, change, messages):
    edit(dataset, **change)
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    with pytest.raises(ValueError) as info:
        start_training()
    for message in messages:
        assert message in str(info.value)
    assert not any(nnunet_dirs["nnUNet_results"].iterdir()), "a results folder was created"
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_plans_set_is_what_nnunet_trains_with(dataset, capsys):
    """The control of the bad --set cases below: ``nnunet-csse plans set`` writes a new identifier whose settings
    the trainer nnUNetv2_train builds reads."""
    from nnunet_csse.tools.cli import main

    assert main(["plans", "set", "-d", "42", "-c", "3d_fullres", "--set", "pdcr_temperature=1.0",
                 "--set", "pdcr_encoder_stages=[1,2]", "--name", "nnUNetPlansMine"]) == 0
    assert "nnUNetv2_train 42 3d_fullres FOLD -tr nnUNetTrainerCSSE -p nnUNetPlansMine" in capsys.readouterr().out
    config = start_training(plans="nnUNetPlansMine").csse_config
    assert config.pdcr.temperature == 1.0 and config.pdcr.encoder_stages == (1, 2)
    assert start_training().csse_config.pdcr.temperature == 0.5  # nnU-Net's own plans are unchanged


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("args,messages", [
    (["--set", "pdcr_temprature=1.0"], ["unknown csse setting", "pdcr_temprature", "did you mean 'pdcr_temperature'",
                                         "allowed keys"]),
    (["--set", "pdcr_temperature=-1"], ["'pdcr_temperature' must be a number > 0", "got -1"]),
    (["--set", "pdcr_encoder_stages=2,3"], ["'pdcr_encoder_stages' must be a non-empty list", "got '2,3'"]),
    (["--set", "uafs_decoder=yes"], ["'uafs_decoder' must be true or false"]),
    (["--set", "pdcr_temperature"], ["--set takes KEY=VALUE, got 'pdcr_temperature'", "pdcr_temperature=1.0"]),
    (["--set", "=1"], ["--set takes KEY=VALUE, got '=1'"]),
    (["--set", "pdcr_temperature=1.0", "--name", "nnUNetPlans"], ["'nnUNetPlans' is the source plans"]),
    (["--set", "pdcr_temperature=1.0", "-p", "nnUNetPlansMine", "--name", "nnUNetPlans"],
     ["nnUNetPlans.json exists and was not written by nnunet-csse", "refusing to overwrite", "--name"]),
    (["--set", "pdcr_temperature=1.0", "--name", "nnUNetPlans.json"], ["not a usable plans identifier", "'.json'"]),
    (["--set", "pdcr_temperature=2.0", "--name", "nnUNetPlansMine"], ["differs from what this call writes", "--force"]),
    # what only the network, the patch and the dataset decide: checked as nnUNetv2_train checks it, before writing
    (["--set", "pdcr_encoder_stages=[2,7]"], ["'pdcr_encoder_stages' [2, 7] has level(s) [7] outside this network",
                                              "levels 0..3", "nnUNetv2_train -tr nnUNetTrainerCSSE would stop",
                                              "nothing was written"]),
    (["--set", "pdcr_windows=[5,65]"], ["window(s) [65] larger than the patch [32, 32", "<= 32 voxels"]),
    (["-c", "2d", "--set", "pdcr_decoder_weight=0.1", "--set", "pdcr_decoder_stages=[3]"],
     ["'pdcr_decoder_stages' [3] has level(s) [3] outside this network", "0..2"]),
    (["--set", "pdcr_encoder_stages=[3]"], ["needs two distinct levels, got [3]"]),  # the cross-layer term
    (["--set", "uafs_num_branches=1"], ["'uafs_num_branches' must be an integer >= 2", "entropy of one channel is 0",
                                        "got 1"]),
    (["--set", "pdcr_windows=[]"], ["non-empty list of window sizes", "got []"]),
    (["--set", "pdcr_encoder_stages=[]"], ["non-empty list of resolution levels", "got []"]),
])
def test_bad_plans_set_names_the_problem_and_writes_nothing(dataset, nnunet_dirs, capsys, args, messages):
    from nnunet_csse.tools.cli import main

    assert main(["plans", "set", "-d", "42", "--set", "pdcr_temperature=1.0", "--name", "nnUNetPlansMine"]) == 0
    preprocessed = nnunet_dirs["nnUNet_preprocessed"]
    before = _tree(preprocessed)
    capsys.readouterr()
    assert main(["plans", "set", "-d", "42", *args] if "--name" in args else
                ["plans", "set", "-d", "42", *args, "--name", "nnUNetPlansNew"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for message in messages:
        assert message in err
    assert _tree(preprocessed) == before


@pytest.mark.parametrize("change,messages", [
    ({"network_class": "dynamic_network_architectures.architectures.unet.ResidualUNet"},
     ["ResidualUNet", "PlainConvUNet and ResidualEncoderUNet"]),
    ({"labels": {"background": 0, "a": 1, "b": 3}}, ["not consecutive", "[0, 1, 3]"]),
])
def test_plans_apply_refuses_plans_the_trainer_would_refuse(dataset, nnunet_dirs, capsys, change, messages):
    """Network class and labels: a preset on such plans would write a file that can never train."""
    from nnunet_csse.tools.cli import main

    edit(dataset, **change)
    before = _tree(nnunet_dirs["nnUNet_preprocessed"])
    assert main(["plans", "apply", "authors_3d", "-d", "42", "-c", "3d_fullres"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nnUNetv2_train -tr nnUNetTrainerCSSE" in err
    for message in messages:
        assert message in err
    assert _tree(nnunet_dirs["nnUNet_preprocessed"]) == before


def test_plans_apply_says_unchanged_when_it_left_an_identical_file(dataset, capsys):
    from nnunet_csse.tools.cli import main

    assert main(["plans", "apply", "authors_3d", "-d", "42"]) == 0
    target = dataset / "nnUNetPlansCSSE_authors_3d.json"
    assert capsys.readouterr().out.startswith(f"wrote {target}\n")
    os.utime(target, (1, 1))
    assert main(["plans", "apply", "authors_3d", "-d", "42"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"unchanged {target} (identical") and "wrote" not in out
    assert target.stat().st_mtime == 1


@pytest.mark.parametrize("configuration,warned", [("3d_fullres", True), ("2d", False)])
def test_authors_2d_on_a_3d_configuration_is_warned_about(dataset, capsys, configuration, warned):
    """On the console by ``plans apply`` and in the training log by the trainer; not for a 2D configuration."""
    from nnunet_csse.tools.cli import main

    assert main(["plans", "apply", "authors_2d", "-d", "42", "-c", configuration]) == 0
    err = capsys.readouterr().err
    message = "plans preset 'authors_2d' (the authors' 2D settings"
    assert (f"warning: {message}" in err and f"3D configuration '{configuration}'" in err and "authors_3d" in err) \
        == warned
    trainer = get_trainer_from_args("42", configuration, 0, "nnUNetTrainerCSSE", "nnUNetPlansCSSE_authors_2d",
                                    device=torch.device("cpu"))
    log = open(trainer.log_file).read()
    assert (f"WARNING: {message}" in log) == warned


def test_a_csse_trainer_with_every_part_off_is_warned_about(dataset, nnunet_dirs, capsys):
    from nnunet_csse.tools.cli import main

    off = ["--set", "uafs_decoder=false", "--set", "pdcr_encoder_weight=0", "--set", "pdcr_cross_weight=0"]
    assert main(["plans", "set", "-d", "42", "-c", "3d_fullres", *off, "--name", "nnUNetPlansOff"]) == 0
    err = capsys.readouterr().err
    assert "warning: every CSSE part is off in configuration '3d_fullres'" in err and "plain nnU-Net" in err
    log = open(start_training(plans="nnUNetPlansOff").log_file).read()
    assert "WARNING: every CSSE part is off" in log and "uafs_decoder and uafs_encoder false" in log
    assert "every CSSE part is off" not in open(start_training().log_file).read()  # the control


def test_ext_trainer_problem_and_fix(tmp_path):
    ours = trainers_path()
    assert ext_trainer_problem({"nnUNet_extTrainer": ours}) is None
    assert ext_trainer_problem({"nnUNet_extTrainer": f"{tmp_path}{os.pathsep}{ours}{os.pathsep}"}) is None
    checkout = tmp_path / "checkout" / "trainers"  # another copy of the re-export folder
    checkout.mkdir(parents=True)
    shutil.copy(os.path.join(ours, REEXPORT_MODULE), checkout)
    assert ext_trainer_problem({"nnUNet_extTrainer": str(checkout)}) is None
    unset = ext_trainer_problem({})
    assert "not set" in unset and f"export nnUNet_extTrainer={ours}" in unset
    elsewhere = ext_trainer_problem({"nnUNet_extTrainer": str(tmp_path)})
    assert "does not list" in elsewhere and f"export nnUNet_extTrainer={tmp_path}{os.pathsep}{ours}" in elsewhere


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, args[0]), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("setting", ["unset", "elsewhere"])
def test_missing_trainer_folder_is_explained_and_the_printed_line_fixes_it(setting, nnunet_dirs, tmp_path):
    """nnU-Net's own lookup fails without writing anything; ``nnunet-csse check`` prints the line that fixes it,
    keeping the user's own trainer folder in the list."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    own = tmp_path / "my_trainers"
    own.mkdir()
    (own / "my_trainer.py").write_text("from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
                                       "class nnUNetTrainerMine(nnUNetTrainer):\n    pass\n")
    if setting == "elsewhere":
        env["nnUNet_extTrainer"] = str(own)
    failed = run(["nnUNetv2_train", "42", "3d_fullres", "0", "-tr", "nnUNetTrainerCSSE", "-device", "cpu"], env)
    assert failed.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerCSSE" in failed.stderr
    assert not any(nnunet_dirs["nnUNet_results"].iterdir())

    check = run(["nnunet-csse", "check"], env)
    assert check.returncode == 1
    export = next(line.strip() for line in check.stderr.splitlines() if "export nnUNet_extTrainer=" in line)
    assert "nnUNet_raw is not set" not in check.stderr  # the three folder variables are set here
    wanted = ["nnUNetTrainerCSSE"] + (["nnUNetTrainerMine"] if setting == "elsewhere" else [])
    lookup = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find; "
              f"print([find(n).__name__ for n in {wanted!r}])")
    fixed = subprocess.run(["bash", "-c", f"{export} && {shlex.quote(sys.executable)} -c {shlex.quote(lookup)} && "
                            f"{shlex.quote(os.path.join(BIN, 'nnunet-csse'))} check"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr
    assert str(wanted) in fixed.stdout and "ok: nnUNet_extTrainer lists" in fixed.stdout


@pytest.mark.parametrize("available", [False, True])
def test_commands_default_to_cuda_when_available_and_say_so(monkeypatch, available):
    from nnunet_csse.environment import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    device, which = resolve_device(None)
    assert device == ("cuda" if available else "cpu") and which.startswith(f"device: {device}")
    assert resolve_device("cpu")[0] == "cpu"


def test_uncertainty_on_cuda_without_a_gpu_fails_before_anything(monkeypatch, tmp_path, capsys):
    from nnunet_csse.tools.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    code = main(["uncertainty", "-i", str(tmp_path), "-o", str(out), "-m", str(tmp_path), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "finds no CUDA device" in err and "--device cpu" in err and "Traceback" not in err
    assert not out.exists()


def _model_folder(root):
    """What the checks read of a trained model folder (no weights are loaded before the checks pass)."""
    model = root / "nnUNetTrainerCSSE__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").touch()
    (model / "dataset.json").write_text(json.dumps(TOY_DATASET_JSON))
    (model / "plans.json").write_text("{}")
    return model


def _image(path) -> None:
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(path))


@pytest.mark.parametrize("problem,messages", [
    ("output_is_input", ["-o", "is the input folder -i", "or inside it", "choose an output folder outside"]),
    ("output_in_input", ["is the input folder -i", "or inside it"]),
    ("text_image", ["b_0000.nii.gz is not a readable image", "SimpleITK cannot read it"]),
])
def test_uncertainty_outputs_outside_the_input_and_readable_images(tmp_path, monkeypatch, capsys, problem, messages):
    """Checked before the model loads (its checkpoint here is no real one); nothing is left behind."""
    from nnunet_csse.tools.cli import main

    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    model = _model_folder(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a_0000.nii.gz")
    if problem == "text_image":
        (images / "b_0000.nii.gz").write_text("this is not an image")
    out = {"output_is_input": images, "output_in_input": images / "out"}.get(problem, tmp_path / "out")
    before = sorted(tmp_path.rglob("*"))
    code = main(["uncertainty", "-i", str(images), "-o", str(out), "-m", str(model), "-device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for message in messages:
        assert message in err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("problem,messages", [
    ("no_model", ["is not a trained nnU-Net model folder", "-m <nnUNet_results>"]),
    ("no_fold", ["no checkpoint_final.pth for fold 3", "folds present: ['fold_0']"]),
    ("bad_names", ["no images named CASE_0000.nii.gz", "case_0000.nii.gz"]),
    ("no_ext_trainer", ["nnUNet_extTrainer is not set", "export nnUNet_extTrainer="]),
])
def test_uncertainty_inputs_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys, problem, messages):
    from nnunet_csse.tools.cli import main

    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    model = _model_folder(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / ("scan.nii.gz" if problem == "bad_names" else "case_0000.nii.gz")).touch()
    folds = ["3"] if problem == "no_fold" else ["0"]
    if problem == "no_model":
        model = tmp_path / "missing"
    if problem == "no_ext_trainer":
        monkeypatch.delenv("nnUNet_extTrainer")
    out = tmp_path / "out"
    code = main(["uncertainty", "-i", str(images), "-o", str(out), "-m", str(model), "-f", *folds, "-device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for message in messages:
        assert message in err
    assert not out.exists()


def test_initialize_refuses_a_network_built_with_other_settings(dataset):
    """The trainer checks that nnU-Net's initialize() built the network from the very settings it validated (a
    subclass that rebuilds the network from other settings would otherwise train something else silently)."""
    from nnunet_csse.network import build_csse_network
    from nnunet_csse.training import nnUNetTrainerCSSE

    trainer = start_training()
    trainer.initialize()  # the control: the trainer's own build passes
    assert trainer.network.config == trainer.csse_config

    class OtherSettings(nnUNetTrainerCSSE):
        @classmethod
        def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            other = nnUNetTrainerCSSE.csse_defaults.replaced(uafs_kernel_size=5)
            return build_csse_network(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, other, enable_deep_supervision)

    other = start_training()
    other.__class__ = OtherSettings  # the same trainer, with a subclass's network hook
    with pytest.raises(RuntimeError, match="other CSSE settings than the trainer checked"):
        other.initialize()
