"""The ``lst-fast`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from tqdm.auto import tqdm

from lst_fast import data, models


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# Errors in what the user asked for (options, data, checkpoint, weights): printed as one line, exit status 2,
# before any work starts (or, for an image that cannot be read, before anything of it is written).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)
EXIT_FAILED = 1  # a data loading worker failed (data.LoaderError): one line; finished units are kept
EXIT_WAITING = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lst-fast", description="Fast Level Set Traversal (blind spots of vision models)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="offline demo: LST between bundled photos with a bundled ImageNet model",
        description="Sends every bundled photo towards every other one with the bundled EfficientNet-Lite0 "
        "and writes the outputs, a CSV/JSON of confidences and distances, and an image grid.",
    )
    demo.add_argument("--out", default="lst_fast_out/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--iters", type=_positive_int, default=400, help="LST iterations (default: %(default)s)")
    demo.add_argument(
        "--photos", nargs="+", default=list(data.EMBEDDED_PHOTOS[:4]), choices=data.EMBEDDED_PHOTOS,
        help="bundled photos to use (default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the start-point noise (default: %(default)s)")
    demo.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_sweep(commands)
    _add_tables(commands)
    _add_info(commands)
    _add_plot(commands)
    return parser


def _add_sweep(commands) -> None:
    from lst_fast.sweep.config import PHASES, SweepConfig
    from lst_fast.tuning import PRECISIONS

    d = SweepConfig()
    sweep = commands.add_parser(
        "sweep",
        help="the full evaluation (spec section 6): LST over many pairs, resumable and sharded",
        formatter_class=_DefaultsFormatter,
        description="Picks --num-samples images that the model classifies correctly (confidence > --min-conf), "
        "pairs each with a different target in each of --rounds random derangements, runs LST on every pair, "
        "computes each pair's distances to its target and, once all rounds of a batch of sources are done, "
        "their triangle statistics. Work is cut into units (round x batch) written to --out as they finish: "
        "re-running the same command resumes; a different configuration is refused. Under torchrun each rank "
        "takes its own units; --shard I/N splits the units among separate jobs sharing the folder.",
    )
    what = sweep.add_argument_group("model and data")
    what.add_argument("--model", required=True,
                      help="'embedded' (offline EfficientNet-Lite0), a timm model name, or "
                      "'robustbench:[DATASET/[THREAT/]]NAME' (needs the robustbench package)")
    what.add_argument("--data", required=True,
                      help="'embedded' (bundled photos), 'imagenet:DIR' (class folders named by WordNet id, or the "
                      "flat ILSVRC2012 validation images), 'cifar10:DIR' (test split of the python version), "
                      "'folder:DIR' (any images, no labels: the model's prediction is their label), or DIR alone: "
                      "its kind is detected from what it holds and said on stderr. Images of any pixel mode are "
                      "read (16-bit scaled by 1/65535); files that cannot be read are skipped and listed")
    what.add_argument("--out", required=True, help="sweep folder (created; resumed if it exists)")
    what.add_argument("--checkpoint", help="local state dict (.pth/.pt/.safetensors) for the timm architecture --model")
    what.add_argument("--num-classes", type=_at_least_one, help="classes of the checkpoint's head (timm models)")
    what.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=d.pretrained,
                      help="timm pretrained weights (downloaded by timm on first use); --no-pretrained: random init")
    what.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                      help="normalisation mean (default: the model's pretrained_cfg)")
    what.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                      help="normalisation std (default: the model's pretrained_cfg)")
    what.add_argument("--image-size", type=_at_least_one,
                      help="input size: resize to size*256/224, centre crop size (default 224; CIFAR-10: 32)")

    lst = sweep.add_argument_group("LST and evaluation settings")
    lst.add_argument("--num-samples", type=_at_least_one, default=d.num_samples, help="images in the sweep")
    lst.add_argument("--rounds", type=_at_least_one, default=d.rounds, help="random derangements (pairs per image)")
    lst.add_argument("--batch-size", type=_at_least_one, default=d.batch_size,
                     help="pairs per LST batch = sources per work unit")
    lst.add_argument("--eval-batch-size", type=_at_least_one, default=d.eval_batch_size,
                     help="images per forward-only model call (image selection, triangle statistics)")
    _add_setting_options(lst)
    lst.add_argument("--precision", choices=list(PRECISIONS), default=d.precision,
                     help="model precision during LST (bf16/fp16: autocast; the images stay fp32)")
    lst.add_argument("--min-conf", type=_non_negative_float, default=d.min_conf,
                     help="keep only images classified with confidence above this (0: any correct image)")
    lst.add_argument("--seed", type=_positive_int, default=d.seed,
                     help="sweep seed: image order, derangements and every unit's noise derive from it")
    lst.add_argument("--log-every", type=_at_least_one,
                     help="record confidences along the path every N iterations (default: iters/20)")
    lst.add_argument("--no-triangles", action="store_true", help="skip the triangle statistics (Table 2)")
    lst.add_argument("--save-images", action="store_true", help="also write every LST output as PNG under OUT/images")

    run = sweep.add_argument_group("execution (not part of the configuration)")
    run.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK if CUDA is available, else cpu)")
    run.add_argument("--workers", type=_positive_int, default=2, help="data loading processes (0: in-process)")
    run.add_argument("--shard", metavar="I/N", help="do share I of N (0-based), e.g. $SLURM_ARRAY_TASK_ID/16")
    run.add_argument("--phase", choices=PHASES, default="all",
                     help="'traverse': LST units only; 'triangles': triangle units only; 'all': both")
    run.add_argument("--wait", type=_non_negative_float, default=3600.0,
                     help="seconds to wait for other processes' LST units before the triangle units that need "
                     f"them are left for a later run (exit status {EXIT_WAITING})")
    run.add_argument("--lpips-weights", metavar="PATH",
                     help="torchvision AlexNet weights for LPIPS (default: torch hub cache; without them a new sweep "
                     "leaves LPIPS out and says so)")
    run.add_argument("--cuda-graphs", action="store_true", help="replay each LST iteration as a CUDA graph (GPUs only)")
    run.add_argument("--strict-images", action="store_true",
                     help="stop at the first image file that cannot be read (exit status 2) instead of skipping it")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_setting_options(group) -> None:
    """One option per setting of lst_fast.settings.TraversalSettings marked ``sweep``, from its field: the
    name (--step-size for step_size), default, help text, check and (for a Choice) choices."""
    from lst_fast.settings import SWEEP_SETTINGS

    for f in SWEEP_SETTINGS:
        check = f.metadata["check"]
        group.add_argument(
            "--" + f.name.replace("_", "-"), type=option_type(f.name, check), choices=getattr(check, "options", None),
            default=f.default, help=f.metadata["help"],
        )


def option_type(name: str, rule):
    """An argparse type for a lst_fast.settings.Number or Choice: the checked value, or the check's message."""

    def parse(text: str):
        try:
            return rule.parse(name, text)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name
    return parse


def _add_tables(commands) -> None:
    from lst_fast.tables import FORMATS

    tables = commands.add_parser(
        "tables",
        help="the paper's Tables 1 and 2 from sweep folders (finished or not)",
        formatter_class=_DefaultsFormatter,
        description="Table 1: distances of LST outputs to their targets; Table 2: triangle statistics per source; "
        "each mean ± std, one row per sweep folder, with how many pairs and sources the finished units cover.",
    )
    tables.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folder(s) written by 'lst-fast sweep'")
    tables.add_argument("--format", choices=FORMATS, default="markdown", help="output format")
    tables.add_argument("--table", choices=("1", "2", "all"), default="all", help="which table(s)")
    tables.add_argument("--same-conditions", action="store_true",
                        help="refuse a sweep whose units were computed under different (or unrecorded) conditions "
                        "(threads, device, versions, ...): only then are its tables bit-identical to one "
                        "uninterrupted run's; without it such sweeps are tabulated with a note")


def _add_info(commands) -> None:
    info = commands.add_parser(
        "info",
        help="a sweep folder's configuration, progress and the conditions its units were computed under",
        description="Prints each sweep's configuration, how many units are finished, and the conditions they "
        "were computed under (device and its model, threads, precision, backend, schedule, versions, commit) with "
        "how many units each, and says whether they differ.",
    )
    info.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folder(s) written by 'lst-fast sweep'")


def _demo(args) -> int:
    from lst_fast.demo import run_demo

    if len(args.photos) < 2:
        raise SystemExit("lst-fast demo: --photos needs at least two photos")
    report = run_demo(
        args.out, iters=args.iters, photos=args.photos, seed=args.seed, device=args.device,
        progress=not args.no_progress,
    )
    print(f"{'source':>12} -> {'target':<12} {'p0':>6} {'final':>6} {'L2/sqrt(D)':>10} {'Linf':>6}")
    for row in report["rows"]:
        print(
            f"{row['source']:>12} -> {row['target']:<12} {row['init_conf']:6.3f} {row['final_conf']:6.3f} "
            f"{row['l2_to_target']:10.4f} {row['linf_to_target']:6.3f}"
        )
    print(f"{len(report['rows'])} pairs in {report['seconds']:.1f} s; outputs in {report['out_dir'].resolve()}")
    return 0


def _add_plot(commands) -> None:
    plot = commands.add_parser(
        "plot",
        help="figures of a sweep folder: confidence paths, interpolations, triangles, path widths",
        formatter_class=_DefaultsFormatter,
        description="Writes PNG figures for the first pairs and sources of a sweep (finished or not): the confidence "
        "along their paths, on the segments source -> LST output, and over the triangles of two rounds; with "
        "--path-widths also the path width along the paths (the first LST unit is run again to record it). The "
        "model and data are loaded again from the sweep's manifest.",
    )
    plot.add_argument("dir", metavar="DIR", help="sweep folder written by 'lst-fast sweep'")
    plot.add_argument("--out", help="folder for the figures (default: DIR/figures)")
    plot.add_argument("--pairs", type=_at_least_one, default=4, help="how many pairs and sources to plot")
    plot.add_argument("--path-widths", action="store_true",
                      help="also plot path widths (costs one LST unit plus width-vecs x 4 model calls per point)")
    plot.add_argument("--width-vecs", type=_at_least_one, default=256,
                      help="random directions per path-width point")
    plot.add_argument("--checkpoint", help="where the sweep's checkpoint is now, if it has moved")
    plot.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _say(command: str, text: str) -> None:
    """One line on stderr, above any progress bar."""
    tqdm.write(f"lst-fast {command}: {text}", file=sys.stderr)


def _first_process() -> bool:
    """Not a second or later rank under torchrun (each rank would say the same)."""
    return os.environ.get("RANK", "0") == "0"


def _sweep_notes(args) -> None:
    """What the sweep will read and run on, where the user did not say it: the kind of a bare --data folder, and
    random weights."""
    spec = data.parse_data_spec(args.data)
    if spec.detected and _first_process():
        _say("sweep", f"--data {args.data}: {spec.detected}; read as {spec} (name the kind to choose another)")
    timm_model = args.model != models.EMBEDDED and not args.model.startswith(models.ROBUSTBENCH_PREFIX)
    if timm_model and not args.pretrained and args.checkpoint is None and _first_process():
        _say("sweep", f"warning: --no-pretrained: {args.model} runs on random weights (seeded by --seed), not a "
             "trained classifier")


def sweep_config(args: argparse.Namespace):
    """The :class:`lst_fast.sweep.SweepConfig` of parsed ``lst-fast sweep`` options (not yet checked)."""
    from lst_fast.settings import SWEEP_SETTINGS
    from lst_fast.sweep import SweepConfig

    return SweepConfig(
        model=args.model, data=args.data, checkpoint=args.checkpoint, num_classes=args.num_classes,
        pretrained=args.pretrained, mean=None if args.mean is None else tuple(args.mean),
        std=None if args.std is None else tuple(args.std), image_size=args.image_size,
        num_samples=args.num_samples, rounds=args.rounds, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, precision=args.precision, min_conf=args.min_conf, seed=args.seed,
        triangles=not args.no_triangles, log_every=args.log_every, save_images=args.save_images,
        **{f.name: getattr(args, f.name) for f in SWEEP_SETTINGS},
    )


def _sweep(args) -> int:
    from lst_fast.sweep import run_sweep

    _sweep_notes(args)
    report = run_sweep(
        sweep_config(args), args.out, device=args.device, workers=args.workers, shard=args.shard, phase=args.phase,
        wait=args.wait, progress=not args.no_progress, lpips_weights=args.lpips_weights,
        cuda_graphs=args.cuda_graphs, strict_images=args.strict_images,
    )
    print(report.summary(), flush=True)
    return EXIT_WAITING if report.waiting else 0


def _tables(args) -> int:
    from lst_fast.tables import render

    print(render(args.dirs, args.format, args.table, same_conditions=args.same_conditions), end="")
    return 0


def _info(args) -> int:
    from lst_fast.sweep.info import describe

    print("\n".join(describe(d) for d in args.dirs), end="")
    return 0


def _plot(args) -> int:
    from lst_fast.sweep.figures import plot_sweep

    for path in plot_sweep(
        args.dir, args.out, pairs=args.pairs, path_widths=args.path_widths, width_vecs=args.width_vecs,
        checkpoint=args.checkpoint, device=args.device,
    ):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"demo": _demo, "sweep": _sweep, "tables": _tables, "info": _info, "plot": _plot}
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
        try:
            return handlers[args.command](args)
        except USER_ERRORS as err:
            print(f"lst-fast {args.command}: error: {err}", file=sys.stderr)
            return 2
        except RuntimeError as err:  # torch raises a worker's death wherever the main process happens to be
            failure = err if isinstance(err, data.LoaderError) else data.loader_failure(err)
            if failure is None:
                raise
            print(f"lst-fast {args.command}: error: {failure}", file=sys.stderr)
            return EXIT_FAILED


def _one_line_warnings(command: str, show):
    """``warnings.showwarning`` that gives lst_fast's image warnings as one line each, others as before."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, data.ImageWarning):
            _say(command, f"warning: {message}")
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


if __name__ == "__main__":
    sys.exit(main())
