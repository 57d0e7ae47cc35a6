"""The ``nnunet-csse`` command line: one subcommand per tool, each with its own --help. ``main()`` is the tools' one
error boundary: our own checks end there as one ``error:`` line."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_csse.environment import ext_trainer_problem, nnunet_folder_problems, resolve_device, trainers_path
from nnunet_csse.folders import root_from_env
from nnunet_csse.tools import StepFailed, compare, splits

WIDTH = 110  # the hand-wrapped epilogs' width
DESCRIPTION = "Tools around the CSSE trainers (PDCR + UAFS) for nnU-Net v2. 'nnunet-csse COMMAND --help' shows " \
              "a command's options."
EPILOG = """\
typical use:
  export nnUNet_extTrainer=$(nnunet-csse trainers-path)
  nnunet-csse check
  nnunet-csse plans apply authors_3d -d 4 -c 3d_fullres
  nnunet-csse plans set -d 4 --set pdcr_temperature=1.0 --name nnUNetPlansTau1
  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerCSSE -p nnUNetPlansCSSE_authors_3d
  nnunet-csse compare -d 4 -c 3d_fullres -tr nnUNetTrainer nnUNetTrainerCSSE
"""
PLANS_EPILOG = """\
{settings}

The new plans identifier never replaces nnU-Net's own plans or any file nnunet-csse did not write; a file of
ours that differs needs --force. The preprocessed data is shared: nothing needs preprocessing again.

examples:
  nnunet-csse plans apply authors_3d -d 4 -c 3d_fullres --set pdcr_temperature=1.0 --name nnUNetPlansTau1
  nnunet-csse plans set -d 4 -p nnUNetPlans --set pdcr_encoder_stages=[2,3] --set pdcr_windows=rf \\
      --name nnUNetPlansMine
  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerCSSE -p nnUNetPlansMine
"""
# write_synthetic_dataset's argument names -> the synth flags a user typed, for its error messages
SYNTH_FLAGS = (
    (r"overwrite=True \(CLI: --overwrite\)", "--overwrite"), (r"\bregions=True", "--regions"),
    (r"\bnum_classes=(\d+)", r"--classes \1"), (r"\bdim=(\d)", r"--dim \1"),
    (r"\bnum_test_cases\b", "--test-cases"), (r"\bnum_cases\b", "--cases"), (r"\bnum_classes\b", "--classes"),
    (r"\bnum_channels\b", "--channels"), (r"\bdataset_id\b", "--dataset-id"),
    (r"^(size|spacing|seed|name)\b", r"--\1"), (r"\bincrease size\b", "increase --size"),
)


def _cmd_trainers_path(args: argparse.Namespace) -> None:
    print(trainers_path())


def _cmd_check(args: argparse.Namespace) -> int:
    problems = [p for p in (ext_trainer_problem(), *nnunet_folder_problems()) if p]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: nnUNet_extTrainer lists {trainers_path()}; nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
              f"are existing folders")
    return 1 if problems else 0


def _cmd_synth(args: argparse.Namespace) -> None:
    from nnunet_csse.tools.synthetic import write_synthetic_dataset

    raw = Path(args.raw) if args.raw else root_from_env(None, "nnUNet_raw")
    try:
        print(write_synthetic_dataset(
            raw, args.dataset_id, args.name, dim=args.dim, num_cases=args.cases,
            size=args.size if len(args.size) > 1 else args.size[0], num_classes=args.classes,
            num_channels=args.channels, num_test_cases=args.test_cases, seed=args.seed, difficulty=args.difficulty,
            ignore_label=args.ignore_label, regions=args.regions, spacing=args.spacing, overwrite=args.overwrite))
    except (ValueError, FileExistsError) as e:  # in the flags the user typed
        message = str(e)
        for pattern, flag in SYNTH_FLAGS:
            message = re.sub(pattern, flag, message)
        raise type(e)(message) from None


def _cmd_plans_list(args: argparse.Namespace) -> None:
    from nnunet_csse.presets import list_presets, load_preset

    for name in list_presets():
        print(f"{name:12s} {load_preset(name)[1].get('description', '')}")


def _cmd_plans_apply(args: argparse.Namespace) -> None:
    """``plans apply`` and ``plans set`` (which has no preset): one code path writes derived plans."""
    from nnunet_csse.presets import parse_settings, write_plans_preset

    messages: list[str] = []
    target, written = write_plans_preset(
        args.preset, args.dataset, args.configurations, args.source_plans, force=args.force,
        settings=parse_settings(args.set or []), identifier=args.name, on_warning=messages.append)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    config = args.configurations[0] if args.configurations and len(args.configurations) == 1 else "CONFIG"
    print(f"wrote {target}" if written else f"unchanged {target} (identical to what this call writes)")
    print(f"train with: nnUNetv2_train {args.dataset} {config} FOLD -tr nnUNetTrainerCSSE -p {target.stem}")
    if problem := ext_trainer_problem():
        print(f"note: {problem}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from nnunet_csse.tools.demo import Demo, DemoSettings

    device, which = resolve_device(args.device)
    print(which)
    settings = DemoSettings(Path(args.workdir), device, args.dim, args.epochs, args.iterations, args.cases,
                            args.test_cases, args.size, args.seed)  # validated before --reset deletes anything
    Demo(settings).run(reset_first=args.reset)


def _cmd_pretrained(args: argparse.Namespace) -> None:
    from nnunet_csse.pretrained import add_csse_modules

    added = add_csse_modules(args.input, args.output, args.dataset, args.configuration, args.trainer, args.plans)
    print(f"wrote {args.output}: the pretrained weights plus {len(added)} freshly initialized CSSE tensors")
    print(f"train with: nnUNetv2_train {args.dataset} {args.configuration} FOLD -tr {args.trainer} -p {args.plans} "
          f"-pretrained_weights {args.output}")


def _cmd_uncertainty(args: argparse.Namespace) -> None:
    from nnunet_csse.uncertainty import predict_folder_with_uncertainty

    device, which = resolve_device(args.device)
    print(which)
    written = predict_folder_with_uncertainty(args.model, args.input, args.output, args.folds, args.checkpoint,
                                              device, use_mirroring=not args.disable_tta)
    print(f"wrote {len(written)} segmentation(s), uncertainty map(s) and overlay(s) to {args.output}")


def _command(sub: argparse._SubParsersAction, name: str, help: str,
             func: Callable[[argparse.Namespace], int | None] | None, **kwargs) -> argparse.ArgumentParser:
    """A subcommand running ``func(args)``, whose --help starts with its one-line help."""
    description = textwrap.fill(help[0].upper() + help[1:] + ".", WIDTH)
    parser = sub.add_parser(name, help=help, description=description, **kwargs)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from nnunet_csse.config import CSSEConfig

    parser = argparse.ArgumentParser(prog="nnunet-csse", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "trainers-path", "print the folder to export as nnUNet_extTrainer", _cmd_trainers_path)
    _command(sub, "check", "check that nnU-Net finds the CSSE trainers and its folders; print the fix if not",
             _cmd_check)

    p = _command(sub, "synth", "write a seeded synthetic dataset in nnU-Net raw format", _cmd_synth)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id (1-999)")
    p.add_argument("--name", default="CSSESynth", help="dataset name, DatasetXXX_<name> (default: %(default)s)")
    p.add_argument("--raw", default=None, help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3, help="2d or 3d images (default: %(default)s)")
    p.add_argument("--cases", type=int, default=8, help="number of training cases (default: %(default)s)")
    p.add_argument("--test-cases", type=int, default=0, help="number of imagesTs cases (default: %(default)s)")
    p.add_argument("--size", type=int, nargs="+", default=[32],
                   help="image size, one value or one per axis (default: 32)")
    p.add_argument("--classes", type=int, default=3,
                   help="number of classes including background (default: %(default)s)")
    p.add_argument("--channels", type=int, default=1, help="input channels (modalities) (default: %(default)s)")
    p.add_argument("--difficulty", choices=("hard", "easy"), default="hard",
                   help="hard: similar textures, blurred touching boundaries, bias field and noise; easy: "
                        "well-separated classes (default: %(default)s)")
    p.add_argument("--ignore-label", action="store_true",
                   help="add a partially annotated 'ignore' label (without it: every voxel is labelled)")
    p.add_argument("--regions", action="store_true",
                   help="nested labels with region-based training (without it: plain labels)")
    p.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="voxel spacing per axis (default: 1 on every axis)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset with this id (without it: refuse)")

    plans = _command(sub, "plans", "plans presets and single CSSE settings under a new plans identifier", None)
    plans_sub = plans.add_subparsers(dest="plans_command", required=True, metavar="PLANS_COMMAND")
    _command(plans_sub, "list", "list the shipped presets", _cmd_plans_list)
    epilog = PLANS_EPILOG.format(settings=textwrap.fill(
        '--set KEY=VALUE (repeatable) sets one CSSE setting in the "csse" block of each chosen configuration, '
        "checked as nnUNetv2_train checks it (the README's settings table lists the valid values). Values are "
        "JSON: true/false, numbers, lists such as [2,3], null; a bare word is a string (rf, batch). Keys: "
        f"{', '.join(sorted(CSSEConfig().to_json()))}.", WIDTH))
    for name, help in (("apply", "write <source>CSSE_<PRESET>.json (or --name) next to the dataset's nnU-Net plans, "
                                 "with a preset's settings and optional --set settings"),
                       ("set", "write a copy of a dataset's plans with single CSSE settings changed, under a new "
                               "plans identifier")):
        p = _command(plans_sub, name, help, _cmd_plans_apply, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
        required = name == "set"  # set: no preset, so its settings and identifier are required
        if required:
            p.set_defaults(preset=None)
        else:
            p.add_argument("preset", help="preset name (see 'nnunet-csse plans list') or path to a preset .json")
        p.add_argument("-d", "--dataset", required=True, help="dataset id or name (e.g. 4 or Dataset004_Hippocampus)")
        p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                       help="configurations to change; the others are copied unchanged (default: all)")
        p.add_argument("-p", "--source-plans", default="nnUNetPlans", metavar="PLANS",
                       help="plans identifier to start from (default: %(default)s)")
        p.add_argument("--set", action="append", required=required, metavar="KEY=VALUE",
                       help="one CSSE setting, repeatable; see below" + ("" if required else " (default: none)"))
        p.add_argument("--name", required=required, metavar="IDENTIFIER",
                       help="the new plans identifier, written as IDENTIFIER.json" +
                            ("" if required else " (default: <source>CSSE_<PRESET>)"))
        p.add_argument("--force", action="store_true",
                       help="replace an existing file of ours that differs (without it: refuse, nothing is written)")

    p = _command(sub, "demo", "baseline nnU-Net vs CSSE on a hard synthetic dataset, end to end", _cmd_demo)
    p.add_argument("--workdir", default="nnunet_csse_demo", help="everything is written here (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if torch finds a CUDA device, else cpu (printed)")
    p.add_argument("--dim", choices=("2d", "3d"), default="2d", help="dataset and network (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per run (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=40,
                   help="training iterations per epoch (default: %(default)s)")
    p.add_argument("--cases", type=int, default=16, help="training cases (default: %(default)s)")
    p.add_argument("--test-cases", type=int, default=6, help="held-out cases (default: %(default)s)")
    p.add_argument("--size", type=int, default=None, help="image size (default: 96 in 2d, 48 in 3d)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--reset", action="store_true",
                   help="delete earlier demo outputs in --workdir first (without it: finished steps made with the "
                        "same settings are reused, and a --workdir made with other settings is refused)")

    p = _command(sub, "pretrained", "add fresh CSSE modules to plain nnU-Net weights (for -pretrained_weights)",
                 _cmd_pretrained)
    p.add_argument("-i", "--input", required=True, help="nnU-Net checkpoint (e.g. .../fold_0/checkpoint_final.pth)")
    p.add_argument("-o", "--output", required=True, help="new checkpoint file to write")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name you will fine-tune on")
    p.add_argument("-c", "--configuration", required=True, help="configuration you will train")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerCSSE",
                   help="CSSE trainer you will train with (default: %(default)s)")
    p.add_argument("-p", "--plans", default="nnUNetPlans",
                   help="plans identifier you will train with (default: %(default)s)")

    p = _command(sub, "uncertainty", "segment a folder and write UAFS uncertainty maps + PNG overlays",
                 _cmd_uncertainty)
    p.add_argument("-i", "--input", required=True, help="folder with CASE_0000<ending> images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-m", "--model", required=True, help="trained model folder (<trainer>__<plans>__<config>)")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold(s) to use, ensembled (default: 0)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name in each fold folder (default: %(default)s)")
    p.add_argument("-device", "--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if torch finds a CUDA device, else cpu (printed)")
    p.add_argument("--disable_tta", action="store_true",
                   help="no test-time mirroring (without it: mirrored predictions are averaged, as nnU-Net does)")

    splits.register(sub)
    compare.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Bad input (``ValueError``; ``OSError``: a missing, existing or unwritable file) is one
    ``error:`` line and exit status 2, a failed step (``StepFailed``, e.g. an nnU-Net console script) status 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0  # a command's exit status; None: 0
    except (ValueError, OSError, StepFailed) as e:
        # an error of the operating system (e.g. a full disk): what failed on which file, without the errno prefix
        os_error = isinstance(e, OSError) and e.strerror and e.filename is not None
        print(f"error: {f'{e.strerror}: {e.filename}' if os_error else e}", file=sys.stderr)
        return 1 if isinstance(e, StepFailed) else 2


if __name__ == "__main__":
    sys.exit(main())
