"""nnU-Net's external trainer lookup finds every trainer, and the classes stay picklable after it."""

import inspect
import os
import pickle

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_csse.training as training
from nnunet_csse.environment import REEXPORT_MODULE
from nnunet_csse.tools.cli import main, trainers_path


def public_trainers():
    return {name: cls for name, cls in vars(training).items()
            if inspect.isclass(cls) and issubclass(cls, nnUNetTrainer) and cls.__module__ == training.__name__
            and name != "nnUNetTrainerCSSEBase"}


def test_trainers_path_prints_the_reexport_folder(capsys):
    assert main(["trainers-path"]) == 0
    folder = capsys.readouterr().out.strip()
    assert folder == trainers_path() and os.path.isfile(os.path.join(folder, REEXPORT_MODULE))


def test_every_trainer_is_found_by_nnunet_and_picklable(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    names = public_trainers()
    assert {"nnUNetTrainerUAFS", "nnUNetTrainerPDCR", "nnUNetTrainerCSSE", "nnUNetTrainerCSSE_HPDCR"} <= set(names)
    for name, cls in names.items():
        found = recursive_find_trainer_class_by_name(name)
        assert found is cls, f"{name} is not re-exported in trainers/nnunet_csse_trainers.py"
        assert pickle.loads(pickle.dumps(found)) is cls
