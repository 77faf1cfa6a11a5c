"""The ``lst-fast`` command line."""

from __future__ import annotations

import argparse
import sys

from lst_fast import data


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


# Errors in what the user asked for: printed as one line, exit status 2, before any work starts.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)
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
        "and writes what 'lst-fast examples' writes: the outputs, a CSV/JSON of confidences and distances, the "
        "image grid, the triangle and interpolation figures (and with --paths the figures along the paths).",
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
    _add_path_options(demo)
    _add_examples(commands)
    _add_sweep(commands)
    _add_tables(commands)
    _add_info(commands)
    _add_plot(commands)
    _add_report(commands)
    return parser


def _add_examples(commands) -> None:
    from lst_fast.examples import DEFAULT_BATCH_SIZE, PAPER_CLASSES

    examples = commands.add_parser(
        "examples",
        help="the paper's Figure 1 (image grid) and triangle figures for any model and data",
        formatter_class=_DefaultsFormatter,
        description="Picks --per-class images of each of --classes that the model classifies correctly (the first "
        "in a seeded order; or the files named by --images), runs LST on every ordered pair of them and writes into "
        "--out: grid.png (rows = targets, columns = sources), results.csv/results.json (one row per pair), the "
        "outputs as images/SOURCE_to_TARGET.png, triangle_SOURCE.png per source, interpolation.png and, with "
        "--paths, the confidence and path widths along the paths.",
    )
    what = examples.add_argument_group("model and data")
    _add_model_and_data_options(what)
    what.add_argument("--out", required=True, help="output folder (created)")
    pick = examples.add_argument_group("which images")
    by = pick.add_mutually_exclusive_group()
    by.add_argument("--classes", type=int, nargs="+", metavar="C",
                    help=f"class indices of the model (default: the paper's {' '.join(map(str, PAPER_CLASSES))})")
    by.add_argument("--images", nargs="+", metavar="NAME",
                    help="the images by name instead of classes (file name, stem or end of path; for data without "
                    "labels, folder: and embedded, the only way)")
    pick.add_argument("--per-class", type=_at_least_one, help="images per class (default: 1)")
    lst = examples.add_argument_group("LST settings")
    _add_traversal_options(lst)
    lst.add_argument("--seed", type=_positive_int, default=0,
                     help="seed of the image order and the start-point noise (batch b of pairs: seed + b)")
    lst.add_argument("--batch-size", type=_at_least_one, default=DEFAULT_BATCH_SIZE,
                     help="pairs per LST batch (more pairs run in several batches)")
    figures = examples.add_argument_group("figures")
    _add_path_options(figures)
    run = examples.add_argument_group("execution")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_path_options(group) -> None:
    """--paths, --width-vecs and --lpips-weights (lst-fast examples and lst-fast demo)."""
    group.add_argument("--paths", action="store_true",
                       help="also plot the confidence and the path widths along every traversal (paper schedule; "
                       "costs --width-vecs x 4 model calls per recorded point)")
    group.add_argument("--width-vecs", type=_at_least_one, default=256,
                       help="random directions per path-width point (default: %(default)s)")
    group.add_argument("--lpips-weights", metavar="PATH",
                       help="torchvision AlexNet weights for LPIPS (default: torch hub cache; without them LPIPS is "
                       "left out and a note says so)")


def _add_sweep(commands) -> None:
    from lst_fast.sweep.config import PHASES, SweepConfig

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
    _add_model_and_data_options(what)
    what.add_argument("--out", required=True, help="sweep folder (created; resumed if it exists)")

    lst = sweep.add_argument_group("LST and evaluation settings")
    lst.add_argument("--num-samples", type=_at_least_one, default=d.num_samples, help="images in the sweep")
    lst.add_argument("--rounds", type=_at_least_one, default=d.rounds, help="random derangements (pairs per image)")
    lst.add_argument("--batch-size", type=_at_least_one, default=d.batch_size,
                     help="pairs per LST batch = sources per work unit")
    lst.add_argument("--eval-batch-size", type=_at_least_one, default=d.eval_batch_size,
                     help="images per forward-only model call (image selection, triangle statistics)")
    _add_traversal_options(lst)
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
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _add_model_and_data_options(group) -> None:
    """--model, --data and how to load them (lst-fast sweep and lst-fast examples)."""
    from lst_fast.sweep.config import SweepConfig

    group.add_argument("--model", required=True,
                       help="'embedded' (offline EfficientNet-Lite0), a timm model name, or "
                       "'robustbench:[DATASET/[THREAT/]]NAME' (needs the robustbench package)")
    group.add_argument("--data", required=True,
                       help="'embedded' (bundled photos), 'imagenet:DIR' (class folders named by WordNet id, or the "
                       "flat ILSVRC2012 validation images), 'cifar10:DIR' (test split of the python version) or "
                       "'folder:DIR' (any images, no labels: the model's prediction is their label)")
    group.add_argument("--checkpoint",
                       help="local state dict (.pth/.pt/.safetensors) for the timm architecture --model")
    group.add_argument("--num-classes", type=_at_least_one, help="classes of the checkpoint's head (timm models)")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=SweepConfig().pretrained,
                       help="timm pretrained weights (downloaded by timm on first use); --no-pretrained: random init")
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="normalisation mean (default: the model's pretrained_cfg)")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="normalisation std (default: the model's pretrained_cfg)")
    group.add_argument("--image-size", type=_at_least_one,
                       help="input size: resize to size*256/224, centre crop size (default 224; CIFAR-10: 32)")


def _add_traversal_options(group) -> None:
    """The traversal's settings (see _add_setting_options) and the model's precision during LST."""
    from lst_fast.sweep.config import SweepConfig
    from lst_fast.model_runner import PRECISIONS

    _add_setting_options(group)
    group.add_argument("--precision", choices=list(PRECISIONS), default=SweepConfig().precision,
                       help="model precision during LST (bf16/fp16: autocast; the images stay fp32)")


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

    report = run_demo(
        args.out, iters=args.iters, photos=args.photos, seed=args.seed, device=args.device,
        progress=not args.no_progress, paths=args.paths, width_vecs=args.width_vecs, lpips_weights=args.lpips_weights,
    )
    _print_examples(args.command, report)
    return 0


def _examples(args) -> int:
    from lst_fast.examples import open_model_and_data, run_examples
    from lst_fast.settings import SWEEP_SETTINGS, TraversalSettings

    model, normalizer, dataset = open_model_and_data(
        args.model, args.data, checkpoint=args.checkpoint, num_classes=args.num_classes, pretrained=args.pretrained,
        mean=args.mean, std=args.std, image_size=args.image_size, seed=args.seed,
    )
    settings = TraversalSettings(**{f.name: getattr(args, f.name) for f in SWEEP_SETTINGS},
                                 width_num_vecs=args.width_vecs)
    report = run_examples(
        model, normalizer, dataset, args.out, classes=args.classes, per_class=args.per_class, images=args.images,
        settings=settings, precision=args.precision, seed=args.seed, device=args.device,
        batch_size=args.batch_size, paths=args.paths, lpips_weights=args.lpips_weights,
        progress=not args.no_progress,
        title=f"Level set traversal, {settings.iters} iterations ({args.model}, {settings.schedule} schedule)",
    )
    _print_examples(args.command, report)
    return 0


def _print_examples(command: str, report) -> None:
    """The pairs of an examples run (demo or examples) as a table, its notes and where its files are."""
    width = max(12, *(len(name) for name in report.chosen.names))
    print(f"{'source':>{width}} -> {'target':<{width}} {'p0':>6} {'final':>6} {'L2/sqrt(D)':>10} {'Linf':>6}")
    for row in report.rows:
        print(
            f"{row['source']:>{width}} -> {row['target']:<{width}} {row['init_conf']:6.3f} {row['final_conf']:6.3f} "
            f"{row['l2_to_target']:10.4f} {row['linf_to_target']:6.3f}"
        )
    for note in report.notes:
        print(f"lst-fast {command}: note: {note}")
    print(f"{len(report.rows)} pairs in {report.seconds:.1f} s; outputs in {report.out_dir.resolve()}")


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


def _add_report(commands) -> None:
    from lst_fast.sweep.report import PAGE_SIZE, THUMB_SIZE

    report = commands.add_parser(
        "report",
        help="one self-contained HTML page of sweep folders: configuration, tables, figures, a gallery of pairs",
        formatter_class=_DefaultsFormatter,
        description="Writes one HTML file (no network, opens from disk) with each sweep's configuration and "
        "provenance, Tables 1 and 2 (several sweeps side by side, as 'lst-fast tables'), the figures of 'lst-fast "
        "plot' and a gallery of every valid pair (source, target and LST output thumbnails, classes, confidences, "
        "distances), sortable and filterable by source class. The data sets are read again for the thumbnails.",
    )
    report.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folder(s) written by 'lst-fast sweep'")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--no-figures", action="store_true",
                        help="leave out the figures of 'lst-fast plot' (they load each sweep's model again)")
    report.add_argument("--pairs", type=_at_least_one, default=4, help="how many pairs and sources the figures show")
    report.add_argument("--thumb-size", type=_at_least_one, default=THUMB_SIZE,
                        help="longest side of the gallery thumbnails, in pixels")
    report.add_argument("--page-size", type=_at_least_one, default=PAGE_SIZE, help="gallery elements per page")
    report.add_argument("--device", help="torch device for the figures (default: cuda if available, else cpu)")


def _sweep(args) -> int:
    from lst_fast.settings import SWEEP_SETTINGS
    from lst_fast.sweep import SweepConfig, run_sweep

    config = SweepConfig(
        model=args.model, data=args.data, checkpoint=args.checkpoint, num_classes=args.num_classes,
        pretrained=args.pretrained, mean=None if args.mean is None else tuple(args.mean),
        std=None if args.std is None else tuple(args.std), image_size=args.image_size,
        num_samples=args.num_samples, rounds=args.rounds, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, precision=args.precision, min_conf=args.min_conf, seed=args.seed,
        triangles=not args.no_triangles, log_every=args.log_every, save_images=args.save_images,
        **{f.name: getattr(args, f.name) for f in SWEEP_SETTINGS},
    )
    report = run_sweep(
        config, args.out, device=args.device, workers=args.workers, shard=args.shard, phase=args.phase,
        wait=args.wait, progress=not args.no_progress, lpips_weights=args.lpips_weights,
        cuda_graphs=args.cuda_graphs,
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


def _report(args) -> int:
    from lst_fast.sweep.report import write_report

    path = write_report(
        args.dirs, args.out, figures=not args.no_figures, figure_pairs=args.pairs, thumb_size=args.thumb_size,
        page_size=args.page_size, device=args.device,
    )
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"demo": _demo, "examples": _examples, "sweep": _sweep, "tables": _tables, "info": _info, "plot": _plot,
                "report": _report}
    try:
        return handlers[args.command](args)
    except USER_ERRORS as err:
        print(f"lst-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
