"""Benchmark of the fused LST step (lst_fast.ops) against the eager and the compiled PyTorch chain.

For every backend that runs on the device, over CIFAR (3x32x32) and ImageNet (3x224x224) rows and several
batch sizes, with the adversarial correction on (the paper's setting), it reports the time per step in place
(``lst_step_`` into buffers the caller owns, as the fast loop calls it) and out of place (``lst_step``), the
effective bandwidth (the bytes that must move: read x, grad, tgt, delta; write candidate, delta), the
speed-up over (a) the spec's chain in eager PyTorch with fresh tensors (lst_fast.testing.eager_step) and (b)
the same chain under torch.compile, and the fraction of the machine's copy bandwidth: a ``copy_`` of the
same bytes into a preallocated buffer, timed in the same rounds.

The CUDA kernel is timed with both of its launch plans: ``cuda`` (bounded launches, the default) and ``cuda_l2``
(groups sized to half of L2; see csrc/lst_step.h). Implementations are timed in interleaved rounds
(bench/harness.py); ratios are medians of per-round ratios.
Writes ``step_<device>.csv``, ``.json`` and ``.png`` to ``--out``.

    python -m bench.bench_step                      # CPU, default batches
    python -m bench.bench_step --device cuda        # GPU (see bench/gpu_check.sh)
    python -m bench.bench_step --clock thread       # CPU time of one thread (a machine shared with others)
    python -m bench.bench_step --plot-only bench/results/step_cuda.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench import harness
from lst_fast import ops
from lst_fast.kernels import cuda_step
from lst_fast.testing import ADV_STEP_SIZE, eager_step, make_inputs

SHAPES = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224), "large": (3, 512, 512)}
DEFAULT_BATCHES = {
    "cpu": {"cifar": [64, 512], "imagenet": [1, 16, 64], "large": []},
    "cuda": {"cifar": [64, 1024, 8192], "imagenet": [1, 64, 256], "large": [1024]},
}
CUDA_PLANS = {"cuda": "bounded", "cuda_l2": "l2_groups"}  # impl name -> lst_fast.kernels.cuda_step plan
STEP_SIZE = 1e-2  # the paper's step size
TENSORS_MOVED = 6  # read x, grad, tgt, delta; write candidate, delta
COPY = "copy/in_place"  # the bandwidth every implementation is compared with


def step_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The backends to time: every one that runs on the device, without the Triton interpreter (tests only)."""
    return [b for b in ops.available_backends(device, dtype) if not (device.type == "cpu" and b == "triton")]


def implementations(backends: list[str], compiled: bool = True) -> list[str]:
    """Names ``impl/placement`` of everything timed for one configuration."""
    names = ["eager/out_of_place"] + (["compiled/out_of_place"] if compiled else [])
    impls = [i for b in backends for i in (CUDA_PLANS if b == "cuda" else [b])]  # both CUDA launch plans
    names += [f"{i}/{placement}" for i in impls for placement in ("in_place", "out_of_place")]
    return names + ["copy/in_place", "copy/out_of_place"]


def step_fn(name: str, inputs: list[torch.Tensor], compiled_chain=None):
    """A call of implementation ``name`` on ``inputs`` (x, grad, tgt, delta), timing only the step."""
    x, grad, tgt, delta = inputs
    impl, placement = name.split("/")
    if impl == "copy":  # as many bytes as the step moves: read 3 and write 3 tensors of x's size
        src = torch.cat([x.flatten(), grad.flatten(), tgt.flatten()])
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)) if placement == "in_place" else src.clone
    if impl == "eager":
        return lambda: eager_step(x, grad, tgt, delta, STEP_SIZE, ADV_STEP_SIZE)
    if impl == "compiled":
        return lambda: compiled_chain(x, grad, tgt, delta, STEP_SIZE, ADV_STEP_SIZE)
    backend = "cuda" if impl in CUDA_PLANS else impl
    if placement == "in_place":
        out = torch.empty_like(x)
        step = lambda: ops.lst_step_(x, grad, tgt, delta, out, step_size=STEP_SIZE,  # noqa: E731
                                     adv_step_size=ADV_STEP_SIZE, backend=backend)
    else:
        step = lambda: ops.lst_step(x, grad, tgt, delta, step_size=STEP_SIZE,  # noqa: E731
                                    adv_step_size=ADV_STEP_SIZE, backend=backend)
    return with_cuda_plan(CUDA_PLANS[impl], step) if impl in CUDA_PLANS else step


def with_cuda_plan(plan: str, step):
    def run():
        cuda_step.set_plan(plan)  # a module global, read at the launch
        return step()

    return run


def fits(batch: int, shape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a step's inputs, outputs and the eager chain's temporaries (~12 batches) fit in half of the free
    memory of a GPU (e.g. the large shape on a 24 GB card). CPUs are not checked."""
    if device.type != "cuda":
        return True
    return 12 * batch * torch.Size(shape).numel() * dtype.itemsize < torch.cuda.mem_get_info(device)[0] / 2


def compile_chain():
    """The eager chain under torch.compile (one compilation for every batch size)."""
    return torch.compile(eager_step, dynamic=True)


def config_inputs(shape: str, batch: int, device, dtype=torch.float32, channels_last=False) -> list[torch.Tensor]:
    return make_inputs((batch, *SHAPES[shape]), dtype=dtype, device=device, channels_last=channels_last)


def bytes_moved(x: torch.Tensor) -> int:
    return TENSORS_MOVED * x.numel() * x.element_size()


def compare(inputs, names: list[str], device, *, compiled_chain=None, rounds=9, round_seconds=0.02,
            clock="wall") -> dict[str, dict]:
    """Every implementation of one configuration in interleaved rounds: per name, ms per call, GB/s and the
    per-round ratios vs_eager, vs_compiled (speed-ups) and copy_fraction (fraction of the copy bandwidth)."""
    fns = {name: step_fn(name, inputs, compiled_chain) for name in names}
    timed = harness.interleaved_rounds(fns, device, rounds, round_seconds=round_seconds, clocks=(clock,))
    nbytes = bytes_moved(inputs[0])
    found = {}
    for name in names:
        seconds = timed.median(name, clock)
        found[name] = {"ms": seconds * 1e3, "ms_min": min(timed.seconds(name, clock)) * 1e3,
                       "gbps": nbytes / seconds / 1e9}
        for column, baseline in (("vs_eager", "eager/out_of_place"), ("vs_compiled", "compiled/out_of_place")):
            if baseline in fns:
                found[name][column] = timed.ratio(baseline, name, clock)
        found[name]["copy_fraction"] = timed.ratio(COPY, name, clock)
    return found


def run(args) -> list[dict]:
    device = torch.device(args.device)
    if args.clock == "thread":
        if device.type != "cpu":
            raise SystemExit("--clock thread measures CPU work: use it with --device cpu")
        harness.use_thread_clock()
    dtype = getattr(torch, args.dtype)
    names = implementations(step_backends(device, dtype))
    batches = {name: args.batches for name in SHAPES} if args.batches else DEFAULT_BATCHES[device.type]
    compiled_chain = compile_chain()
    rows = []
    for shape in SHAPES:
        for batch in batches[shape]:
            if not fits(batch, SHAPES[shape], dtype, device):
                print(f"skipped {shape} batch {batch}: the eager chain's tensors would not fit in device memory")
                continue
            inputs = config_inputs(shape, batch, device, dtype, args.channels_last)
            found = compare(inputs, names, device, compiled_chain=compiled_chain, rounds=args.rounds,
                            round_seconds=args.round_seconds, clock=args.clock)
            for name, values in found.items():
                impl, placement = name.split("/")
                rows.append({"shape": shape, "batch": batch, "impl": impl, "placement": placement,
                             "bytes_moved": bytes_moved(inputs[0]), **values})
            print(" ".join(f"{n}={v['ms']:.3f}ms" for n, v in found.items()), f"[{shape} batch {batch}]", flush=True)
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["placement"] == "in_place" or r["impl"] in ("eager", "compiled")]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    shapes = [name for name in SHAPES if any(r["shape"] == name for r in rows)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, name in zip(axes[0], shapes):
        batches = sorted({r["batch"] for r in rows if r["shape"] == name})
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = [next((r["gbps"] for r in rows if (r["shape"], r["batch"], r["impl"]) == (name, b, impl)), 0)
                      for b in batches]
            ax.bar([k + i * width for k in range(len(batches))], values, width, label=impl)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(batches))], [f"B={b}" for b in batches])
        ax.set_title(f"{name} {'x'.join(map(str, SHAPES[name]))}")
        ax.set_ylabel("effective GB/s (6 tensors moved)")
    axes[0][0].legend(fontsize=8)
    machine, config = report["machine"], report["config"]
    fig.suptitle(f"LST step on {machine['gpu'] or machine['cpu']} ({config['device']}, {config['dtype']}, "
                 f"{machine['torch_threads']} threads, {config['clock']} clock; copy = copy_ of the same bytes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(report: dict) -> str:
    machine, config = report["machine"], report["config"]
    lines = [f"{machine['gpu'] or machine['cpu']}, {machine['torch_threads']} threads, load average "
             f"{machine['load_average'][0]:.1f}, {config['clock']} clock; medians over {config['rounds']} "
             f"interleaved rounds; ratios are per-round medians",
             f"{'shape':9s} {'batch':>6s} {'impl':9s} {'placement':13s} {'ms':>9s} {'min ms':>9s} {'GB/s':>7s} "
             f"{'x eager':>8s} {'x compiled':>10s} {'of copy':>8s}"]
    for r in report["rows"]:
        lines.append(f"{r['shape']:9s} {r['batch']:6d} {r['impl']:9s} {r['placement']:13s} {r['ms']:9.3f} "
                     f"{r['ms_min']:9.3f} {r['gbps']:7.1f} {r['vs_eager']:8.2f} {r['vs_compiled']:10.2f} "
                     f"{r['copy_fraction']:8.0%}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs (default contiguous)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes for every shape (default per device)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (median reported)")
    parser.add_argument("--round-seconds", type=float, default=0.02, help="minimum length of one timed round")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="wall: elapsed time with all threads (default); thread: CPU time of one thread, for "
                             "machines shared with other work (CPU only; writes step_cpu_thread_time.*)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--plot-only", type=Path, help="redraw the plot of an earlier JSON result")
    args = parser.parse_args(argv)
    if args.plot_only:
        path = args.plot_only
    else:
        config = {k: v for k, v in vars(args).items() if k not in ("out", "plot_only")}
        suffix = "_thread_time" if args.clock == "thread" else ""
        stem = args.out / f"step_{torch.device(args.device).type}{suffix}"
        path = harness.write_result(stem, config=config, rows=run(args), device=args.device)
    report = harness.read_result(path)
    print(summary(report))
    try:
        plot(report, path.with_suffix(".png"))
    except ImportError as err:  # e.g. a GPU machine without matplotlib: redraw later with --plot-only
        print(f"no plot ({err}); redraw with --plot-only {path}")
    print(f"results: {path.with_suffix('')}.{{csv,json,png}}")


if __name__ == "__main__":
    main()
