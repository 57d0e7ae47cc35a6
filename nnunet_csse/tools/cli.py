"""The ``nnunet-csse`` command line.

    nnunet-csse trainers-path          print the folder to export as nnUNet_extTrainer
    nnunet-csse check                  check nnUNet_extTrainer and nnU-Net's folders; print the fix if needed
    nnunet-csse synth ...              write a synthetic dataset in nnU-Net raw format
    nnunet-csse plans list             list the plans presets
    nnunet-csse plans apply PRESET -d DATASET [-c CONFIG ...]
                                       write a new plans identifier <source>CSSE_<PRESET> from a preset
    nnunet-csse demo [--workdir DIR] [--device cpu|cuda] [--dim 2d|3d] [--epochs N]
                                       baseline vs CSSE on a hard synthetic dataset, end to end
    nnunet-csse pretrained -i CHECKPOINT -o OUT -d DATASET -c CONFIG [-tr TRAINER] [-p PLANS]
                                       plain nnU-Net weights + fresh CSSE modules, for -pretrained_weights
    nnunet-csse uncertainty -i IN -o OUT -m MODEL_FOLDER [-f FOLD]
                                       segmentations + UAFS uncertainty maps (same geometry as the input)
    nnunet-csse split -d DATASET --fraction 0.25 [--seed S] [--install | --restore]
                                       limited-data splits that keep nnU-Net's validation folds
    nnunet-csse compare -d DATASET -c CONFIG -tr TRAINER [TRAINER ...]
                                       per-class validation Dice across folds, CSV + bar chart
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from nnunet_csse.environment import ext_trainer_problem, nnunet_folder_problems, resolve_device, trainers_path
from nnunet_csse.folders import root_from_env
from nnunet_csse.tools import StepFailed, compare, splits


def _cmd_trainers_path(args: argparse.Namespace) -> int:
    print(trainers_path())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = [p for p in (ext_trainer_problem(), *nnunet_folder_problems()) if p]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok: nnUNet_extTrainer lists {trainers_path()}; nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
          f"are existing folders")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from nnunet_csse.tools.synthetic import write_synthetic_dataset

    raw = Path(args.raw) if args.raw else root_from_env(None, "nnUNet_raw")
    folder = write_synthetic_dataset(
        raw, args.dataset_id, args.name, dim=args.dim, num_cases=args.cases,
        size=args.size if len(args.size) > 1 else args.size[0], num_classes=args.classes,
        num_channels=args.channels, num_test_cases=args.test_cases, seed=args.seed, difficulty=args.difficulty,
        ignore_label=args.ignore_label, regions=args.regions, spacing=args.spacing, overwrite=args.overwrite,
    )
    print(folder)
    return 0


def _cmd_plans_list(args: argparse.Namespace) -> int:
    from nnunet_csse.presets import list_presets, load_preset

    for name in list_presets():
        print(f"{name:12s} {load_preset(name)[1].get('description', '')}")
    return 0


def _cmd_plans_apply(args: argparse.Namespace) -> int:
    from nnunet_csse.presets import apply_preset

    target = apply_preset(args.preset, args.dataset, args.configurations, args.source_plans, force=args.force)
    print(f"wrote {target}")
    print(f"train with: nnUNetv2_train {args.dataset} CONFIG FOLD -tr nnUNetTrainerCSSE -p {target.stem}")
    problem = ext_trainer_problem()
    if problem:
        print(f"note: {problem}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_csse.tools.demo import Demo, DemoSettings, reset

    device, which = resolve_device(args.device)
    print(which)
    workdir = Path(args.workdir)
    if args.reset:
        reset(workdir)
    settings = DemoSettings(workdir=workdir, device=device, dim=args.dim, epochs=args.epochs,
                            iterations=args.iterations, cases=args.cases, test_cases=args.test_cases,
                            size=args.size, seed=args.seed)
    Demo(settings).run()
    return 0


def _cmd_pretrained(args: argparse.Namespace) -> int:
    from nnunet_csse.pretrained import add_csse_modules

    added = add_csse_modules(args.input, args.output, args.dataset, args.configuration, args.trainer, args.plans)
    print(f"wrote {args.output}: the pretrained weights plus {len(added)} freshly initialized CSSE tensors")
    print(f"train with: nnUNetv2_train {args.dataset} {args.configuration} FOLD -tr {args.trainer} -p {args.plans} "
          f"-pretrained_weights {args.output}")
    return 0


def _cmd_uncertainty(args: argparse.Namespace) -> int:
    from nnunet_csse.uncertainty import predict_folder_with_uncertainty

    device, which = resolve_device(args.device)
    print(which)
    written = predict_folder_with_uncertainty(args.model, args.input, args.output, args.folds, args.checkpoint,
                                              device, use_mirroring=not args.disable_tta)
    print(f"wrote {len(written)} segmentation(s), uncertainty map(s) and overlay(s) to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-csse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trainers-path", help="print the folder to use as nnUNet_extTrainer")
    p.set_defaults(func=_cmd_trainers_path)

    p = sub.add_parser("check", help="check that nnU-Net finds the CSSE trainers and its folders (prints fixes)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("synth", help="write a seeded synthetic dataset in nnU-Net raw format")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id (1-999)")
    p.add_argument("--name", default="CSSESynth", help="dataset name (DatasetXXX_<name>)")
    p.add_argument("--raw", default=None, help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3)
    p.add_argument("--cases", type=int, default=8, help="number of training cases")
    p.add_argument("--test-cases", type=int, default=0, help="number of imagesTs cases")
    p.add_argument("--size", type=int, nargs="+", default=[32], help="image size (one value or one per axis)")
    p.add_argument("--classes", type=int, default=3, help="number of classes including background")
    p.add_argument("--channels", type=int, default=1, help="input channels (modalities)")
    p.add_argument("--difficulty", choices=("hard", "easy"), default="hard")
    p.add_argument("--ignore-label", action="store_true", help="add a partially annotated 'ignore' label")
    p.add_argument("--regions", action="store_true", help="nested labels with region-based training")
    p.add_argument("--spacing", type=float, nargs="+", default=None, help="voxel spacing per axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    p.set_defaults(func=_cmd_synth)

    plans = sub.add_parser("plans", help="plans presets").add_subparsers(dest="plans_command", required=True)
    p = plans.add_parser("list", help="list the shipped presets")
    p.set_defaults(func=_cmd_plans_list)
    p = plans.add_parser("apply", help="write <source>CSSE_<PRESET>.json next to the dataset's nnU-Net plans")
    p.add_argument("preset", help="preset name (see 'plans list') or path to a preset .json")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="configurations to change (default: all)")
    p.add_argument("--source-plans", default="nnUNetPlans", help="plans identifier to start from")
    p.add_argument("--force", action="store_true",
                   help="replace an existing <source>CSSE_<PRESET>.json that differs (default: refuse)")
    p.set_defaults(func=_cmd_plans_apply)

    p = sub.add_parser("demo", help="baseline nnU-Net vs CSSE on a hard synthetic dataset, end to end")
    p.add_argument("--workdir", default="nnunet_csse_demo", help="everything is written here (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if torch finds a CUDA device, else cpu (printed)")
    p.add_argument("--dim", choices=("2d", "3d"), default="2d")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=40, help="training iterations per epoch")
    p.add_argument("--cases", type=int, default=16, help="training cases")
    p.add_argument("--test-cases", type=int, default=6, help="held-out cases")
    p.add_argument("--size", type=int, default=None, help="image size (default 96 in 2d, 48 in 3d)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reset", action="store_true", help="delete earlier demo outputs in --workdir first")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("pretrained", help="add fresh CSSE modules to plain nnU-Net weights (for -pretrained_weights)")
    p.add_argument("-i", "--input", required=True, help="nnU-Net checkpoint (e.g. .../fold_0/checkpoint_final.pth)")
    p.add_argument("-o", "--output", required=True, help="new checkpoint file to write")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name you will fine-tune on")
    p.add_argument("-c", "--configuration", required=True, help="configuration you will train")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerCSSE", help="CSSE trainer you will train with")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier you will train with")
    p.set_defaults(func=_cmd_pretrained)

    p = sub.add_parser("uncertainty", help="segment a folder and write UAFS uncertainty maps + PNG overlays")
    p.add_argument("-i", "--input", required=True, help="folder with CASE_0000<ending> images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-m", "--model", required=True, help="trained model folder (<trainer>__<plans>__<config>)")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold(s) to use (ensembled)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", "--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if torch finds a CUDA device, else cpu (printed)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.set_defaults(func=_cmd_uncertainty)

    splits.register(sub)
    compare.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. The one error boundary of the tools: bad input (``ValueError``, a missing or existing
    file) is one ``error:`` line and exit status 2, a failed step of a run (``StepFailed``, e.g. an nnU-Net
    console script) status 1; never a traceback from our own checks."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
