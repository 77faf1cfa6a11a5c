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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"demo": _demo}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
