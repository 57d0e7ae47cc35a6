"""Every command checks that it can write its outputs before it starts its work: an output in a read-only folder
(or below a file) is one ``error:`` line naming the flag, and nothing is written or loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_csse.environment import trainers_path
from nnunet_csse.folders import NotWritableError, check_writable
from nnunet_csse.tools.cli import main
from tests.toy_plans import TOY_DATASET_JSON, write_toy_dataset

BIN = os.path.dirname(sys.executable)


def tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder the process may not write: ``os.access`` says so for it and everything under it (as for a
    read-only mount; chmod does not stop root, which runs these tests on some machines)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        inside = os.path.abspath(path) == str(folder) or os.path.abspath(path).startswith(str(folder) + os.sep)
        return False if inside and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return folder


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "file.json", "output file") == \
        tmp_path / "new" / "deeper" / "file.json"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotWritableError, match=r"cannot write the output folder \(-o\) .*a_file is a file, not a "
                                               r"folder; choose"):
        check_writable(tmp_path / "a_file" / "out", "output folder (-o)")
    assert isinstance(NotWritableError("x"), ValueError)  # the CLI's error boundary prints it as one line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_on_a_chmod_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(NotWritableError, match="is not writable"):
            check_writable(folder / "out.json", "plans file")
    finally:
        folder.chmod(0o755)


@pytest.fixture
def model(tmp_path):
    """A model folder as the uncertainty checks read it (its checkpoint is no real one: loading it would fail)."""
    folder = tmp_path / "results" / "nnUNetTrainerCSSE__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_text("not loaded before the checks pass")
    (folder / "dataset.json").write_text(json.dumps(TOY_DATASET_JSON))
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    images = tmp_path / "images"
    images.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(images / "case_0000.nii.gz"))
    return folder


def _commands(tmp_path, ro, model) -> dict[str, list[str]]:
    images = tmp_path / "images"
    plain = tmp_path / "plain.pth"
    plain.write_text("a checkpoint")
    return {
        "synth": ["synth", "-d", "7", "--raw", str(ro / "raw"), "--cases", "2", "--size", "16"],
        "uncertainty": ["uncertainty", "-i", str(images), "-o", str(ro / "out"), "-m", str(model), "-device", "cpu"],
        "compare": ["compare", "--labels", str(images), "--predictions", f"a={images}", "--dataset-json",
                    str(model / "dataset.json"), "--out", str(ro / "compare")],
        "pretrained": ["pretrained", "-i", str(plain), "-o", str(ro / "csse_init.pth"), "-d", "42", "-c", "2d"],
        "demo": ["demo", "--workdir", str(ro / "demo"), "--device", "cpu"],
        "plans apply": ["plans", "apply", "authors_3d", "-d", "42"],
        "plans set": ["plans", "set", "-d", "42", "--set", "pdcr_temperature=1.0", "--name", "nnUNetPlansMine"],
        "split": ["split", "-d", "42", "--fraction", "0.5", "--output", str(ro / "split.json")],
        "split --install": ["split", "-d", "42", "--fraction", "0.5", "--install"],
    }


@pytest.mark.parametrize("command, flag", [
    ("synth", "nnUNet_raw folder"), ("uncertainty", "output folder (-o)"), ("compare", "output folder (--out)"),
    ("pretrained", "output file (-o)"), ("demo", "demo folder (--workdir)"), ("plans apply", "plans file"),
    ("plans set", "plans file"), ("split", "split file (--output)"), ("split --install", "split file"),
])
def test_an_unwritable_output_is_one_error_line_before_any_work(command, flag, tmp_path, nnunet_dirs, monkeypatch,
                                                                  read_only, model, capsys):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    folder = write_toy_dataset(nnunet_dirs["nnUNet_preprocessed"])
    for case in ("c0", "c1", "c2", "c3", "c4"):
        (folder / "nnUNetPlans_3d_fullres" / f"{case}.b2nd").touch()
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["c0", "c1", "c2", "c3"], "val": ["c4"]}] * 5))
    if command in ("plans apply", "plans set", "split --install"):  # the dataset's own folder is read-only
        monkeypatch.setenv("nnUNet_preprocessed", str(read_only))
        folder.rename(read_only / folder.name)
    import nnunet_csse.uncertainty as U

    monkeypatch.setattr(U, "csse_network_of", lambda predictor: pytest.fail("the model was loaded"))
    argv = _commands(tmp_path, read_only, model)[command]
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the {flag} ") and err.count("\n") == 1, err
    assert "not writable" in err and ("choose a path" in err or "make that folder writable" in err)
    assert "Traceback" not in err
    assert tree(tmp_path) == before


def test_an_output_below_a_file_is_refused_by_the_console_script(tmp_path, nnunet_dirs, model):
    """The real console script, no simulation: ``-o`` below a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    env = dict(os.environ, nnUNet_extTrainer=trainers_path())
    before = tree(tmp_path)
    proc = subprocess.run([os.path.join(BIN, "nnunet-csse"), "uncertainty", "-i", str(tmp_path / "images"), "-o",
                           str(blocker / "out"), "-m", str(model), "-device", "cpu"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot write the output folder (-o)") and "is a file, not a folder" in \
        proc.stderr and proc.stderr.count("\n") == 1
    assert tree(tmp_path) == before


def test_an_operating_system_error_during_the_work_is_one_line(monkeypatch, capsys, tmp_path):
    """What no check foresees (a full disk, a folder removed meanwhile) still ends in one error line."""
    import nnunet_csse.tools.cli as cli

    def fail(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.json"))

    monkeypatch.setattr(cli, "_cmd_trainers_path", fail)
    parser = cli.build_parser  # the subcommand's function is bound when the parser is built

    def patched():
        p = parser()
        p._subparsers._group_actions[0].choices["trainers-path"].set_defaults(func=fail)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert main(["trainers-path"]) == 2
    assert capsys.readouterr().err == f"error: Permission denied: {tmp_path / 'x.json'}\n"
