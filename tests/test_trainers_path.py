"""nnU-Net's external trainer lookup finds every trainer, and the classes stay picklable after it."""

import inspect
import os
import pickle
from pathlib import Path

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_csse.schedules as schedules
import nnunet_csse.training as training
from nnunet_csse.environment import REEXPORT_MODULE
from nnunet_csse.tools.cli import main, trainers_path

CHECKOUT_TRAINERS = Path(__file__).resolve().parents[1] / "trainers"


def public_trainers():
    """Every trainer class defined in the package (real trainers and their schedule variants)."""
    return {name: cls for module in (training, schedules) for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__
            and not name.startswith("_") and name != "nnUNetTrainerCSSEBase"}


def test_trainers_path_prints_the_reexport_folder(capsys):
    assert main(["trainers-path"]) == 0
    folder = capsys.readouterr().out.strip()
    assert folder == trainers_path() and os.path.isfile(os.path.join(folder, REEXPORT_MODULE))


@pytest.mark.parametrize("folder", ["installed", "checkout"])
def test_every_trainer_is_found_by_nnunet_and_picklable(monkeypatch, folder):
    """Through the folder ``trainers-path`` prints and through the checkout's ``trainers/`` link."""
    if folder == "checkout" and not CHECKOUT_TRAINERS.is_dir():
        pytest.skip("not a checkout")
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path() if folder == "installed" else str(CHECKOUT_TRAINERS))
    names = public_trainers()
    assert {"nnUNetTrainerUAFS", "nnUNetTrainerPDCR", "nnUNetTrainerCSSE", "nnUNetTrainerCSSE_HPDCR",
            "nnUNetTrainerCSSE_5epochs", "nnUNetTrainer_2epochs_10iters", "nnUNetTrainerCSSE_demo",
            "nnUNetTrainerCSSE_benchmark"} <= set(names)
    for name, cls in names.items():
        found = recursive_find_trainer_class_by_name(name)
        assert found is cls, f"{name} is not re-exported in ext_trainers/nnunet_csse_trainers.py"
        assert pickle.loads(pickle.dumps(found)) is cls
