"""Fine-tuning a CSSE trainer from plain nnU-Net weights through nnU-Net's own ``-pretrained_weights`` path."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

from nnunet_csse.environment import trainers_path
from nnunet_csse.pretrained import CSSE_PREFIXES, add_csse_modules
from nnunet_csse.tools.cli import main
from tests.toy_plans import write_toy_dataset


@pytest.fixture
def dataset(nnunet_dirs, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    return write_toy_dataset(nnunet_dirs["nnUNet_preprocessed"])


def trainer(name: str, configuration: str = "2d"):
    """What nnUNetv2_train builds for ``42 <configuration> 0 -tr <name>``."""
    return get_trainer_from_args("42", configuration, 0, name, "nnUNetPlans", device=torch.device("cpu"))


def plain_checkpoint(path, configuration: str = "2d"):
    plain = trainer("nnUNetTrainer", configuration)
    plain.initialize()
    plain.save_checkpoint(str(path))  # nnU-Net's own checkpoint format
    return plain.network.state_dict()


def test_plain_weights_fine_tune_a_csse_trainer(dataset, tmp_path, capsys):
    plain_file, converted = tmp_path / "plain.pth", tmp_path / "csse_init.pth"
    plain_weights = plain_checkpoint(plain_file)
    with pytest.raises(AssertionError, match="decoder_uafs"):  # nnU-Net refuses the plain checkpoint as it is
        maybe_load_checkpoint(trainer("nnUNetTrainerCSSE"), False, False, str(plain_file))

    assert main(["pretrained", "-i", str(plain_file), "-o", str(converted), "-d", "42", "-c", "2d"]) == 0
    assert f"-pretrained_weights {converted}" in capsys.readouterr().out
    csse = trainer("nnUNetTrainerCSSE")
    maybe_load_checkpoint(csse, False, False, str(converted))  # nnUNetv2_train -pretrained_weights
    state = csse.network.state_dict()
    for key, value in plain_weights.items():
        if ".seg_layers." not in key:  # nnU-Net never transfers the segmentation heads
            assert torch.equal(state[key], value), key
    added = {key.split(".")[0] for key in state if key.startswith(CSSE_PREFIXES)}
    assert added == {"decoder_uafs", "pdcr_projections"}
    assert plain_file.read_bytes() != converted.read_bytes()


def test_bad_conversions_are_named(dataset, tmp_path):
    plain_file = tmp_path / "plain3d.pth"
    plain_checkpoint(plain_file, "3d_fullres")
    with pytest.raises(ValueError, match="does not match the network of plans 'nnUNetPlans', configuration '2d'"):
        add_csse_modules(plain_file, tmp_path / "out.pth", 42, "2d")
    with pytest.raises(ValueError, match="exists"):
        add_csse_modules(plain_file, plain_file, 42, "3d_fullres")
    with pytest.raises(ValueError, match="'nnUNetTrainer' is not an nnunet-csse trainer"):
        add_csse_modules(plain_file, tmp_path / "out.pth", 42, "3d_fullres", trainer="nnUNetTrainer")
    with pytest.raises(ValueError, match="configuration '3d_lowres' is not in nnUNetPlans.json"):
        add_csse_modules(plain_file, tmp_path / "out.pth", 42, "3d_lowres")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an nnU-Net checkpoint"):
        add_csse_modules(tmp_path / "other.pth", tmp_path / "out.pth", 42, "3d_fullres")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.txt is not a PyTorch checkpoint"):
        add_csse_modules(tmp_path / "notes.txt", tmp_path / "out.pth", 42, "3d_fullres")
    assert not (tmp_path / "out.pth").exists()
    add_csse_modules(plain_file, tmp_path / "out.pth", 42, "3d_fullres", trainer="nnUNetTrainerUAFS")
    saved = torch.load(tmp_path / "out.pth", weights_only=False)["network_weights"]
    assert any(k.startswith("decoder_uafs.") for k in saved) and not any(k.startswith("pdcr_") for k in saved)


@pytest.mark.parametrize("name", ["nnUNetTrainerCSSE_2epochs_10iters", "nnUNetTrainerCSSE_5epochs",
                                  "nnUNetTrainerUAFS_2epochs_10iters", "nnUNetTrainerCSSE_HPDCR",
                                  "nnUNetTrainerCSSE_demo", "nnUNetTrainerCSSE_benchmark"])
def test_every_csse_trainer_is_accepted(dataset, tmp_path, capsys, name):
    """The README's short-schedule trainers included; the converted checkpoint loads into that trainer."""
    plain_file, converted = tmp_path / "plain.pth", tmp_path / "csse_init.pth"
    plain_checkpoint(plain_file)
    assert main(["pretrained", "-i", str(plain_file), "-o", str(converted), "-d", "42", "-c", "2d", "-tr", name]) == 0
    assert f"-tr {name} " in capsys.readouterr().out
    maybe_load_checkpoint(trainer(name), False, False, str(converted))


def test_plain_trainers_are_refused_with_the_list(dataset, tmp_path, capsys):
    plain_file = tmp_path / "plain.pth"
    plain_file.write_text("not read")
    assert main(["pretrained", "-i", str(plain_file), "-o", str(tmp_path / "o.pth"), "-d", "42", "-c", "2d", "-tr",
                 "nnUNetTrainer_2epochs_10iters"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'nnUNetTrainer_2epochs_10iters' is not an nnunet-csse trainer") and \
        "nnUNetTrainerCSSE_2epochs_10iters" in err and err.count("\n") == 1
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("what", ["model folder", "fold folder", "missing"])
def test_an_input_that_is_no_file_is_one_error_line(dataset, tmp_path, capsys, what):
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_text("x")
    given = {"model folder": model, "fold folder": model / "fold_0", "missing": tmp_path / "none.pth"}[what]
    assert main(["pretrained", "-i", str(given), "-o", str(tmp_path / "o.pth"), "-d", "42", "-c", "2d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "o.pth").exists()
    if what == "missing":
        assert err == f"error: -i {given} does not exist; pass a checkpoint_final.pth written by nnUNetv2_train\n"
    else:
        assert err == f"error: -i {given} is a folder; pass a checkpoint file, e.g. -i " \
                      f"{model / 'fold_0' / 'checkpoint_final.pth'}\n"
