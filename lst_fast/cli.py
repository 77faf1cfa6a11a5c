"""The ``lst-fast`` command line.

The parser is built from light modules only (lst_fast.choices, lst_fast.settings, lst_fast.sweep.config: no
torch), so that ``--help`` and errors in the arguments come before any heavy import; each command imports what
it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from lst_fast import choices


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
# A data loading worker failed (data.LoaderError), or a file of the sweep folder could not be written (a full
# disk, a file size limit: lst_fast.sweep.store.StorageError): one line; finished units are kept, and running the
# same command again (with the cause gone) resumes the sweep.
EXIT_FAILED = 1
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
        "--photos", nargs="+", default=list(choices.EMBEDDED_PHOTOS[:4]), choices=choices.EMBEDDED_PHOTOS,
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
    paper = " ".join(map(str, choices.PAPER_CLASSES))
    by.add_argument("--classes", type=int, nargs="+", metavar="C",
                    help=f"class indices of the model (default: the paper's {paper})")
    by.add_argument("--images", nargs="+", metavar="NAME",
                    help="the images by name instead of classes (file name, stem or end of path; for data without "
                    "labels, folder: and embedded, the only way)")
    pick.add_argument("--per-class", type=_at_least_one, help="images per class (default: 1)")
    lst = examples.add_argument_group("LST settings")
    _add_traversal_options(lst)
    lst.add_argument("--seed", type=_positive_int, default=0,
                     help="seed of the image order and the start-point noise (batch b of pairs: seed + b)")
    lst.add_argument("--batch-size", type=_at_least_one, default=choices.EXAMPLES_BATCH_SIZE,
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
    from lst_fast.sweep.config import GROUPS, PHASES

    sweep = commands.add_parser(
        "sweep",
        help="the full evaluation (algorithm §6): LST over many pairs, resumable and sharded",
        formatter_class=_DefaultsFormatter,
        description="Picks --num-samples images that the model classifies correctly (confidence > --min-conf), "
        "pairs each with a different target in each of --rounds random derangements, runs LST on every pair, "
        "computes each pair's distances to its target and, once all rounds of a batch of sources are done, "
        "their triangle statistics. Work is cut into units (round x batch) written to --out as they finish: "
        "re-running the same command resumes; a different configuration is refused. Under torchrun each rank "
        "takes its own units; --shard I/N splits the units among separate jobs sharing the folder.",
    )
    groups = {name: sweep.add_argument_group(name) for name in GROUPS}
    groups[GROUPS[0]].add_argument("--out", required=True, help="sweep folder (created; resumed if it exists)")
    _add_config_options(groups)

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


def _add_config_options(groups, names=None) -> None:
    """One option per field of lst_fast.sweep.SweepConfig (or of its fields ``names``), in its group (``groups``:
    group name -> argparse group), from the field: the name (--num-samples for num_samples), default, help text,
    check and metavar; an on/off field gets --NAME and --no-NAME, a field of several numbers takes that many
    values, and the traversal field the options of its swept settings."""
    from lst_fast.sweep.config import Flag, Numbers, config_options

    for f in config_options():
        if names is not None and f.name not in names:
            continue
        group = groups[f.metadata["group"]]
        if f.name == "traversal":
            _add_setting_options(group)
            continue
        check, flag = f.metadata["check"], "--" + f.name.replace("_", "-")
        kwargs = {"default": f.default, "help": f.metadata["help"]}
        if isinstance(check, Flag):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if isinstance(check, Numbers):
            kwargs["nargs"] = check.count
        if hasattr(check, "parse"):
            kwargs["type"] = option_type(f.name, check)
        kwargs["choices"] = getattr(check, "options", None)
        kwargs["metavar"] = f.metadata["metavar"]
        group.add_argument(flag, required=f.metadata["required"], **kwargs)


def _add_model_and_data_options(group) -> None:
    """SweepConfig's model and data options (--model, --data, --checkpoint, ...) in ``group`` (lst-fast examples)."""
    from lst_fast.sweep.config import GROUPS, config_options

    names = [f.name for f in config_options() if f.metadata["group"] == GROUPS[0]]
    _add_config_options({GROUPS[0]: group}, names)


def _add_traversal_options(group) -> None:
    """The traversal's settings and the model's precision during LST, as the sweep has them (lst-fast examples)."""
    from lst_fast.sweep.config import GROUPS

    _add_config_options({GROUPS[1]: group}, ("traversal", "precision"))


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
    tables = commands.add_parser(
        "tables",
        help="the paper's Tables 1 and 2 and each sweep's cost, from sweep folders (finished or not)",
        formatter_class=_DefaultsFormatter,
        description="Table 1: distances of LST outputs to their targets; Table 2: triangle statistics per source; "
        "each mean ± std, one row per sweep folder, with how many pairs and sources the finished units cover; "
        "then the cost: model evaluations per pair (mean, max) and seconds per pair. Each row names its folder "
        "and the settings in which the shown sweeps differ.",
    )
    tables.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folder(s) written by 'lst-fast sweep'")
    tables.add_argument("--format", choices=choices.TABLE_FORMATS, default="markdown", help="output format")
    tables.add_argument("--table", choices=choices.TABLE_WHICH, default="all",
                        help="which table(s): 1, 2, the cost, or all")
    tables.add_argument("--same-conditions", action="store_true",
                        help="refuse a sweep whose units were computed under different (or unrecorded) conditions "
                        "(threads, device, versions, ...): only then are its tables bit-identical to one "
                        "uninterrupted run's; without it such sweeps are tabulated with a note")


def _add_info(commands) -> None:
    info = commands.add_parser(
        "info",
        help="a sweep folder's configuration, progress and the conditions its units were computed under",
        description="Prints each sweep's configuration, how many units are finished (and which are corrupt or "
        "missing, judged as 'lst-fast tables' judges them), and the conditions they were computed under (device "
        "and its model, threads, precision, backend, schedule, versions, commit) with how many units each, and says "
        "whether they differ.",
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
        "--path-widths also the path width along the paths (the LST units of those pairs are run again to record "
        "it). The model and data are loaded again from the sweep's manifest.",
    )
    plot.add_argument("dir", metavar="DIR", help="sweep folder written by 'lst-fast sweep'")
    plot.add_argument("--out", help="folder for the figures (default: DIR/figures)")
    plot.add_argument("--pairs", type=_at_least_one, default=4,
                      help="how many pairs (from the finished LST units, in plan order) and sources to plot")
    plot.add_argument("--path-widths", action="store_true",
                      help="also plot path widths (costs one LST unit plus width-vecs x 4 model calls per point)")
    plot.add_argument("--width-vecs", type=_at_least_one, default=256,
                      help="random directions per path-width point")
    plot.add_argument("--checkpoint", help="where the sweep's checkpoint is now, if it has moved")
    plot.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _add_report(commands) -> None:
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
    report.add_argument("--thumb-size", type=_at_least_one, default=choices.THUMB_SIZE,
                        help="longest side of the gallery thumbnails, in pixels")
    report.add_argument("--page-size", type=_at_least_one, default=choices.PAGE_SIZE, help="gallery elements per page")
    report.add_argument("--device", help="torch device for the figures (default: cuda if available, else cpu)")


def _say(command: str, text: str) -> None:
    """One line on stderr, above any progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"lst-fast {command}: {text}", file=sys.stderr)


def _first_process() -> bool:
    """Not a second or later rank under torchrun (each rank would say the same)."""
    return os.environ.get("RANK", "0") == "0"


def _sweep_notes(args) -> None:
    """What the sweep will read and run on, where the user did not say it: the kind of a bare --data folder, and
    random weights."""
    from lst_fast import data, models

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
    from lst_fast.sweep.config import config_options

    names = [f.name for f in config_options() if f.name != "traversal"] + [f.name for f in SWEEP_SETTINGS]
    return SweepConfig(**{name: _value(getattr(args, name)) for name in names})


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


def _value(parsed):
    """An option's value as SweepConfig takes it: several numbers as a tuple."""
    return tuple(parsed) if isinstance(parsed, list) else parsed


def _tables(args) -> int:
    from lst_fast.sweep.tables import render

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
    from lst_fast import data  # the arguments are parsed: from here on the commands import torch

    handlers = {"demo": _demo, "examples": _examples, "sweep": _sweep, "tables": _tables, "info": _info, "plot": _plot,
                "report": _report}
    from lst_fast.sweep.store import StorageError

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
        try:
            return handlers[args.command](args)
        except StorageError as err:
            print(f"lst-fast {args.command}: error: {err}", file=sys.stderr)
            return EXIT_FAILED
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
        from lst_fast import data

        if issubclass(category, data.ImageWarning):
            _say(command, f"warning: {message}")
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


if __name__ == "__main__":
    sys.exit(main())
