"""``nnunet-csse demo``: baseline nnU-Net vs CSSE on a hard synthetic dataset, through nnU-Net's own pipeline
(dataset, plan and preprocess, train, predict, evaluate, report and figure); docs/results.md, "The demo". Only
``--workdir`` is written; each stage records its inputs in ``<workdir>/stages/`` and is reused only when they match.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_csse.environment import scoped_environ, trainers_path
from nnunet_csse.folders import FOREGROUND_MEAN, check_writable, read_evaluator_summary, write_json_atomic
from nnunet_csse.schedules import ENV_EPOCHS, ENV_ITERATIONS, ENV_SEED
from nnunet_csse.tools.commands import run_logged

DEMO_DATASET_ID = 987
DEMO_NAME = "CSSEDemo"
TRAINERS = {"baseline": "nnUNetTrainer_demo", "CSSE": "nnUNetTrainerCSSE_demo"}
NUM_CLASSES = 4
STAGES_FOLDER = "stages"  # <workdir>/stages/<stage>.json: the inputs each stage was made from


@dataclass
class DemoSettings:
    workdir: Path
    device: str = "cpu"
    dim: str = "2d"
    epochs: int = 10
    iterations: int = 40
    cases: int = 16
    test_cases: int = 6
    size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # checked before anything is written; nnU-Net's 5-fold split needs 5 training cases
        for name, minimum in (("epochs", 1), ("iterations", 1), ("cases", 5), ("test_cases", 1)):
            if (value := getattr(self, name)) < minimum:
                why = " (nnU-Net's 5-fold cross-validation split needs 5)" if name == "cases" else ""
                raise ValueError(f"demo --{name.replace('_', '-')} must be >= {minimum}{why}, got {value}")
        if self.size is not None and self.size < 16:
            raise ValueError(f"demo --size must be >= 16 voxels (the network downsamples 4 times), got {self.size}")
        self.configuration = "2d" if self.dim == "2d" else "3d_fullres"
        self.plans = "nnUNetPlansCSSE_cpu_tiny" if self.device == "cpu" else "nnUNetPlans"
        self.image_size = self.size or (96 if self.dim == "2d" else 48)

    def stage_inputs(self) -> dict[str, dict]:
        """Stage name -> everything that makes its outputs (each stage includes the inputs of those before it)."""
        from importlib.metadata import version

        dataset = {"dataset": f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_NAME}", "dim": self.dim, "cases": self.cases,
                   "test_cases": self.test_cases, "size": self.image_size, "dataset_seed": self.seed,
                   "num_classes": NUM_CLASSES, "difficulty": "hard"}
        plan = {**dataset, "configuration": self.configuration, "nnunetv2": version("nnunetv2")}
        stages = {"dataset": dataset, "plan": plan}
        for label, trainer in TRAINERS.items():
            stages[f"train_{label}"] = train = {**plan, "plans": self.plans, "trainer": trainer, "epochs": self.epochs,
                                                "iterations": self.iterations, "seed": self.seed, "device": self.device}
            stages[f"predict_{label}"] = {**train, "test_time_mirroring": False}
        return stages


def _say(stage: str, text: str) -> None:
    print(f"[{stage}] {text}", flush=True)


class Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.s, self.root = settings, settings.workdir.resolve()
        self.raw, self.preprocessed, self.results = (self.root / f"nnUNet_{name}" for name in
                                                     ("raw", "preprocessed", "results"))
        self.env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                        nnUNet_results=str(self.results), nnUNet_def_n_proc="1", nnUNet_compile="false",
                        nnUNet_extTrainer=trainers_path(), **{ENV_EPOCHS: str(settings.epochs),
                                                              ENV_ITERATIONS: str(settings.iterations),
                                                              ENV_SEED: str(settings.seed)})
        self.dataset_folder = self.raw / f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_NAME}"

    def _run(self, cmd: list[str], stage: str, epochs: int | None = None, env: dict | None = None) -> None:
        """Run an nnU-Net command; with ``epochs``, show a progress bar over its 'Epoch N' lines."""
        from tqdm import tqdm

        def progress(line: str) -> None:
            if m := re.search(r": Epoch (\d+)\s*$", line):
                bar.n = int(m.group(1))
                bar.refresh()

        with tqdm(total=epochs, desc=stage, unit="epoch", file=sys.stdout, disable=not epochs) as bar:
            run_logged(cmd, env or self.env, self.root / "logs" / f"{stage}.log", progress)
            bar.n = bar.total

    def model_folder(self, trainer: str) -> Path:
        return self.results / self.dataset_folder.name / f"{trainer}__{self.s.plans}__{self.s.configuration}"

    def stage_outputs(self) -> dict[str, Path]:
        """Stage name -> the output whose presence means the stage ran (at least in part)."""
        return {"dataset": self.dataset_folder, "plan": self.preprocessed / self.dataset_folder.name,
                **{f"train_{label}": self.model_folder(trainer) for label, trainer in TRAINERS.items()},
                **{f"predict_{label}": self.root / "predictions" / label for label in TRAINERS}}

    def record_path(self, stage: str) -> Path:
        return self.root / STAGES_FOLDER / f"{stage}.json"

    def read_record(self, stage: str) -> dict | None:
        path = self.record_path(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def check_reusable(self) -> None:
        """Refuse (``ValueError``, before anything is written) a workdir whose finished or started stages were made
        from other inputs than this run's, or by a demo that kept no record of its inputs."""
        outputs = self.stage_outputs()
        for stage, wanted in self.s.stage_inputs().items():
            recorded = self.read_record(stage)
            if recorded is None:
                if outputs[stage].exists():
                    raise ValueError(f"{self.root} holds demo outputs ({outputs[stage]}) without a record of the "
                                     f"settings they were made with; run with --reset to replace them, or give "
                                     f"another --workdir")
                continue
            keys = [k for k in wanted if recorded.get(k) != wanted[k]] + [k for k in recorded if k not in wanted]
            if keys:
                differences = "; ".join(f"{k} {recorded.get(k, '(none)')} -> {wanted.get(k, '(none)')}" for k in keys)
                raise ValueError(f"{self.root} holds a demo made with other settings ({stage}: {differences}); "
                                 f"reusing it would label its results with this run's settings. Run with --reset "
                                 f"to replace it, or give another --workdir")

    def start_stage(self, stage: str) -> None:
        """Record the inputs of ``stage`` before it writes anything (a resumed stage has the same record)."""
        self.record_path(stage).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.s.stage_inputs()[stage], self.record_path(stage))

    def trained_with(self) -> dict:
        """The inputs of the models the report shows, from their records (equal for both trainers)."""
        records = [self.read_record(f"train_{label}") for label in TRAINERS]
        if None in records or len({(r["epochs"], r["iterations"], r["seed"]) for r in records}) > 1:
            raise ValueError(f"the models in {self.results} have no matching records in {self.root / STAGES_FOLDER}; "
                             f"run with --reset")
        return records[0]

    def make_dataset(self) -> None:
        from nnunet_csse.tools.synthetic import write_synthetic_dataset

        if (self.dataset_folder / "dataset.json").exists():
            return _say("dataset", f"reusing {self.dataset_folder}")
        self.start_stage("dataset")
        write_synthetic_dataset(self.raw, DEMO_DATASET_ID, DEMO_NAME, dim=2 if self.s.dim == "2d" else 3,
                                num_cases=self.s.cases, size=self.s.image_size, num_classes=NUM_CLASSES,
                                num_test_cases=self.s.test_cases, seed=self.s.seed, difficulty="hard")
        _say("dataset", f"wrote {self.s.cases} training + {self.s.test_cases} test cases to {self.dataset_folder}")

    def plan(self) -> None:
        data = self.preprocessed / self.dataset_folder.name / f"nnUNetPlans_{self.s.configuration}"
        if not (data.is_dir() and any(data.iterdir())):
            self.start_stage("plan")
            _say("plan", "nnUNetv2_plan_and_preprocess")
            self._run(["nnUNetv2_plan_and_preprocess", "-d", str(DEMO_DATASET_ID), "-c", self.s.configuration,
                       "-np", "1", "-npfp", "1"], "plan")
        else:
            _say("plan", f"reusing {data}")
        if self.s.plans != "nnUNetPlans":
            self._run(["nnunet-csse", "plans", "apply", "cpu_tiny", "-d", str(DEMO_DATASET_ID)], "plan")

    def train(self) -> None:
        for label, trainer in TRAINERS.items():
            fold = self.model_folder(trainer) / "fold_0"
            if (fold / "checkpoint_final.pth").exists():
                _say("train", f"{label}: reusing {fold}")
                continue
            resume = ["--c"] if (fold / "checkpoint_latest.pth").exists() else []
            self.start_stage(f"train_{label}")
            _say("train", f"{label}: nnUNetv2_train ... -tr {trainer} ({self.s.epochs} epochs x "
                          f"{self.s.iterations} iterations){' resuming' if resume else ''}")
            self._run(["nnUNetv2_train", str(DEMO_DATASET_ID), self.s.configuration, "0", "-tr", trainer, "-p",
                       self.s.plans, "-device", self.s.device, *resume], f"train_{label}", self.s.epochs,
                      # augmentation in the main process (small CPU machines); nnU-Net's planner needs it > 0
                      dict(self.env, nnUNet_n_proc_DA="0"))

    def predict(self) -> None:
        images = self.dataset_folder / "imagesTs"
        expected = len(list(images.glob("*_0000.nii.gz")))
        for label, trainer in TRAINERS.items():
            out = self.root / "predictions" / label
            if out.is_dir() and len(list(out.glob("*.nii.gz"))) == expected:
                _say("predict", f"{label}: reusing {out}")
                continue
            self.start_stage(f"predict_{label}")
            (out / "summary.json").unlink(missing_ok=True)  # evaluated again from the new predictions
            _say("predict", f"{label}: nnUNetv2_predict on {expected} held-out cases")
            self._run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(DEMO_DATASET_ID), "-c",
                       self.s.configuration, "-p", self.s.plans, "-tr", trainer, "-f", "0", "-device",
                       self.s.device, "--disable_tta", "-npp", "1", "-nps", "1"], f"predict_{label}")

    def evaluate(self) -> dict[str, dict]:
        summaries = {}
        for label, trainer in TRAINERS.items():
            summary = self.root / "predictions" / label / "summary.json"
            if not summary.exists():
                _say("evaluate", f"{label}: nnUNetv2_evaluate_folder")
                model = self.model_folder(trainer)
                self._run(["nnUNetv2_evaluate_folder", str(self.dataset_folder / "labelsTs"), str(summary.parent),
                           "-djfile", str(model / "dataset.json"), "-pfile", str(model / "plans.json"), "-np", "1"],
                          f"evaluate_{label}")
            summaries[label] = read_evaluator_summary(summary)
        return summaries

    def table(self, summaries: dict[str, dict]) -> str:
        labels = json.loads((self.dataset_folder / "dataset.json").read_text())["labels"]
        names = {str(v): k for k, v in labels.items()} | {FOREGROUND_MEAN: "mean (fg)"}
        keys = [k for k in summaries["baseline"][0] if k != FOREGROUND_MEAN] + [FOREGROUND_MEAN]
        return "\n".join([f"{'class':<14}" + "".join(f"{label:>12}" for label in summaries)] + [
            f"{names.get(key, key):<14}" + "".join(f"{mean[key]:>12.4f}" for mean, _ in summaries.values())
            for key in keys])

    def figure(self) -> Path:
        """Image, ground truth, both predictions (with their Dice on this case from nnU-Net's evaluator) and the
        CSSE model's UAFS uncertainty for one held-out case, as <workdir>/demo_figure.png."""
        import SimpleITK as sitk
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_csse.uncertainty import label_names, predict_uncertainty, preprocess_case, to_input_geometry

        image_file = sorted((self.dataset_folder / "imagesTs").glob("*_0000.nii.gz"))[0]
        case = image_file.name[: -len("_0000.nii.gz")]
        trained = self.trained_with()
        # the predictor looks the trainer up through nnUNet_extTrainer, set for the lookup only; nnU-Net's predictor
        # and lookup are chatty (device notes, FutureWarnings of the libraries it calls), which would end up between
        # the demo's stage lines and its report
        with scoped_environ({"nnUNet_extTrainer": self.env["nnUNet_extTrainer"]}), \
                contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            predictor = nnUNetPredictor(device=torch.device(self.s.device), use_mirroring=False, allow_tqdm=False,
                                        perform_everything_on_device=self.s.device == "cuda")
            predictor.initialize_from_trained_model_folder(str(self.model_folder(TRAINERS["CSSE"])), use_folds=(0,))
            image, data, properties = preprocess_case(predictor, [str(image_file)])
            uncertainty = to_input_geometry(predict_uncertainty(predictor, data), predictor, properties)[0]

        predictions = {}
        for label in TRAINERS:
            folder = self.root / "predictions" / label
            dice = read_evaluator_summary(folder / "summary.json")[1][f"{case}.nii.gz"]  # this case's, per label
            predictions[label] = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz"))),
                                  {int(k): v for k, v in dice.items() if k.isdigit() and k != "0"})
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(self.dataset_folder / "labelsTs" / f"{case}.nii.gz")))
        names = label_names(json.loads((self.dataset_folder / "dataset.json").read_text()))
        fig = demo_figure(image[0], truth, predictions, uncertainty, names,
                          f"nnunet-csse demo, held-out case {case} ({trained['configuration']}, {trained['epochs']} "
                          f"epochs x {trained['iterations']} iterations, seed {trained['seed']})")
        fig.savefig(self.root / "demo_figure.png", dpi=100)
        return self.root / "demo_figure.png"

    def run(self, reset_first: bool = False) -> str:
        """All stages and the report (returned and printed); ``reset_first``: delete earlier outputs first."""
        check_writable(self.root, "demo folder (--workdir)")
        if reset_first:  # only the folders the demo creates
            for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "logs", STAGES_FOLDER):
                shutil.rmtree(self.root / name, ignore_errors=True)
        self.check_reusable()
        self.root.mkdir(parents=True, exist_ok=True)
        self.make_dataset()
        self.plan()
        self.train()
        self.predict()
        table = self.table(self.evaluate())
        figure = self.figure()
        trained = self.trained_with()  # the labels come from what the models were trained with
        report = (f"\nDice on {trained['test_cases']} held-out cases (nnU-Net's evaluator), "
                  f"{trained['configuration']}, {trained['epochs']} epochs x {trained['iterations']} iterations, "
                  f"seed {trained['seed']}, device {trained['device']}:\n{table}\n\n"
                  f"figure:       {figure}\npredictions:  {self.root / 'predictions'}\n"
                  f"models:       {self.results / self.dataset_folder.name}\nlogs:         {self.root / 'logs'}\n")
        (self.root / "demo_report.txt").write_text(report)
        print(report)
        return report


def demo_figure(image: np.ndarray, truth: np.ndarray, predictions: dict[str, tuple[np.ndarray, dict[int, float]]],
                uncertainty: np.ndarray, names: dict[int, str], title: str):
    """The demo's figure (a matplotlib ``Figure``, no pyplot): central slice of image, ground truth, each
    prediction with its per-class Dice on this case in the panel title, and the UAFS uncertainty H with its
    colorbar; one legend for the class colours. Arrays are (Z, Y, X); ``predictions``: name -> (segmentation,
    label -> Dice); ``names``: foreground label -> name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from nnunet_csse.uncertainty import label_color, show_uncertainty

    z = image.shape[0] // 2
    top = max([int(truth.max()), *(int(seg.max()) for seg, _ in predictions.values()), *names])
    palette = np.array([(0.1, 0.1, 0.1)] + [to_rgb(label_color(v)) for v in range(1, top + 1)])
    fig = Figure(figsize=(4 * (3 + len(predictions)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 + len(predictions))
    axes[0].imshow(image[z], cmap="gray", interpolation="nearest")
    axes[0].set_title("image")
    panels = [("ground truth", truth)] + [(f"{label} prediction\n{_dice_text(dice)}", segmentation)
                                          for label, (segmentation, dice) in predictions.items()]
    for ax, (panel_title, segmentation) in zip(axes[1:], panels):
        ax.imshow(palette[segmentation[z].astype(int)], interpolation="nearest")
        ax.set_title(panel_title)
    show_uncertainty(axes[-1], uncertainty[z])
    axes[-1].set_title("CSSE: UAFS uncertainty H")
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=palette[v], label=f"{v}: {names.get(v, f'label {v}')}" if v else "0: background")
               for v in range(top + 1)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{title}\nDice: this case, per class {' / '.join(str(v) for v in range(1, top + 1))} "
                 f"(nnU-Net's evaluator)")
    return fig


def _dice_text(dice: dict[int, float]) -> str:
    """``Dice 0.85 / 0.70 / 0.00, mean 0.52`` (labels in order; n/a: absent from truth and prediction)."""
    finite = [v for v in dice.values() if math.isfinite(v)]
    mean = f", mean {sum(finite) / len(finite):.2f}" if finite else ""
    return "Dice " + " / ".join("n/a" if math.isnan(v) else f"{v:.2f}" for _, v in sorted(dice.items())) + mean
