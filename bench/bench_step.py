"""Benchmark of the fused LST step (lst_fast.ops.lst_step_) against the eager and the compiled PyTorch chain.

For every backend that runs on the device, over CIFAR (3x32x32) and ImageNet (3x224x224) rows and several
batch sizes, with the adversarial correction on (the paper's setting), it reports the time per step, the
effective bandwidth (the bytes that must move: read x, grad, tgt, delta; write candidate, delta), the speed-up
over (a) the spec's chain in eager PyTorch with fresh tensors each step (as lst_fast/reference.py writes it)
and (b) the same chain under torch.compile, and the fraction of the machine's copy bandwidth, measured in the
same run with a ``tensor.copy_`` moving as many bytes as the largest step.

Implementations are timed in interleaved rounds (median over rounds), so a machine shared with other work
slows them all alike. The CUDA kernel is timed with both of its launch plans for long rows: ``cuda`` (bounded
launches, the default) and ``cuda_l2`` (groups sized to half of L2; see csrc/lst_step.h). Writes
``step_<device>.csv``, ``.json`` and ``.png`` to ``--out``.

    python bench/bench_step.py                      # CPU, default batches
    python bench/bench_step.py --device cuda        # GPU (see bench/gpu_check.sh)
    python bench/bench_step.py --clock thread       # CPU time of one thread (a machine shared with others)
    python bench/bench_step.py --plot-only bench/results/step_cuda.json
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lst_fast import ops
from lst_fast.kernels import cuda_step

SHAPES = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224), "large": (3, 512, 512)}
DEFAULT_BATCHES = {
    "cpu": {"cifar": [64, 512], "imagenet": [1, 16, 64], "large": []},
    "cuda": {"cifar": [64, 1024, 8192], "imagenet": [1, 64, 256], "large": [1024]},
}
CUDA_PLANS = {"cuda": "bounded", "cuda_l2": "l2_groups"}  # impl name -> lst_fast.kernels.cuda_step plan
STEP_SIZE, ADV_STEP_SIZE = 1e-2, 2e-3
TENSORS_MOVED = 6  # read x, grad, tgt, delta; write candidate, delta


def eager_chain(x, grad, tgt, delta, step_size: float, adv_step_size: float):
    """The spec's step as plain PyTorch with fresh tensors, as in lst_fast/reference.py."""
    v = tgt - x
    grad_v = (grad * v).flatten(1).sum(1)
    grad_grad = (grad * grad).flatten(1).sum(1)
    v_perp = v - grad * (grad_v / grad_grad).view(-1, 1, 1, 1)
    v_perp = torch.where((grad_grad == 0).view(-1, 1, 1, 1), v, v_perp)
    new_delta = torch.clamp(delta + (adv_step_size / 2) * grad, -adv_step_size, adv_step_size)
    return torch.clamp(x + step_size * v_perp - new_delta, 0, 1), new_delta


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
clock = CLOCKS["wall"]


def seconds_per_call(fn, device: torch.device, calls: int) -> float:
    synchronize(device)
    start = clock()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (clock() - start) / calls


def calls_per_round(fn, device: torch.device, round_seconds: float) -> int:
    """Back-to-back calls per timed round: enough for ``round_seconds`` (so GPU launch overhead counts)."""
    fn()
    once = seconds_per_call(fn, device, 1)
    return max(1, min(10_000, int(round_seconds / max(once, 1e-7))))


def interleaved_rounds(fns: dict, device: torch.device, rounds: int, round_seconds: float) -> dict[str, list]:
    """Seconds per call of every function in each of ``rounds`` rounds, the functions taking turns."""
    calls = {name: calls_per_round(fn, device, round_seconds) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(seconds_per_call(fn, device, calls[name]))
    return samples


def make_inputs(batch: int, shape, device, dtype, memory_format):
    gen = torch.Generator(device=device).manual_seed(0)
    full = (batch, *shape)
    x = torch.rand(full, generator=gen, device=device, dtype=dtype)
    grad = torch.randn(full, generator=gen, device=device, dtype=dtype)
    tgt = torch.rand(full, generator=gen, device=device, dtype=dtype)
    delta = torch.zeros(full, device=device, dtype=dtype)
    return [t.contiguous(memory_format=memory_format) for t in (x, grad, tgt, delta)]


def copy_bandwidth(nbytes: int, device: torch.device, rounds: int, round_seconds: float) -> float:
    """Bytes read plus written per second by ``dst.copy_(src)`` into a preallocated buffer."""
    src = torch.rand(nbytes // 2 // 4, device=device)
    dst = torch.empty_like(src)
    samples = interleaved_rounds({"copy": lambda: dst.copy_(src)}, device, rounds, round_seconds)["copy"]
    return 2 * src.numel() * 4 / statistics.median(samples)


def with_cuda_plan(plan: str, step):
    def run():
        cuda_step.set_plan(plan)  # a module global, read at the launch
        step()

    return run


def bench_config(name, batch, device, dtype, memory_format, backends, compiled_chain, args):
    x, grad, tgt, delta = make_inputs(batch, SHAPES[name], device, dtype, memory_format)
    out = torch.empty_like(x)
    fns = {
        "eager": lambda: eager_chain(x, grad, tgt, delta, STEP_SIZE, ADV_STEP_SIZE),
        "compiled": lambda: compiled_chain(x, grad, tgt, delta, STEP_SIZE, ADV_STEP_SIZE),
    }
    for backend in backends:
        step = functools.partial(ops.lst_step_, x, grad, tgt, delta, out, step_size=STEP_SIZE,
                                 adv_step_size=ADV_STEP_SIZE, backend=backend)
        if backend == "cuda":
            fns.update({impl: with_cuda_plan(plan, step) for impl, plan in CUDA_PLANS.items()})
        else:
            fns[backend] = step
    samples = interleaved_rounds(fns, device, args.rounds, args.round_seconds)
    seconds = {impl: statistics.median(s) for impl, s in samples.items()}
    nbytes = TENSORS_MOVED * x.numel() * x.element_size()
    return [
        dict(shape=name, batch=batch, impl=impl, ms=s * 1e3, ms_min=min(samples[impl]) * 1e3,
             gbps=nbytes / s / 1e9, vs_eager=seconds["eager"] / s, vs_compiled=seconds["compiled"] / s)
        for impl, s in seconds.items()
    ]


def fits(batch: int, shape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a step's inputs, outputs and the eager chain's temporaries (~12 batches) fit in half of the free
    memory of a GPU (e.g. the large shape on a 24 GB card). CPUs are not checked."""
    if device.type != "cuda":
        return True
    return 12 * batch * torch.Size(shape).numel() * dtype.itemsize < torch.cuda.mem_get_info(device)[0] / 2


def run(args) -> dict:
    global clock
    device = torch.device(args.device)
    if args.clock == "thread":  # CPU time of this one thread: robust to other processes taking the cores
        if device.type != "cpu":
            raise SystemExit("--clock thread measures CPU work: use it with --device cpu")
        torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    dtype = getattr(torch, args.dtype)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    backends = [b for b in ops.available_backends(device, dtype) if not (device.type == "cpu" and b == "triton")]
    batches = DEFAULT_BATCHES[device.type]
    if args.batches:
        batches = {name: args.batches for name in SHAPES}
    compiled_chain = torch.compile(eager_chain, dynamic=True)
    rows = []
    for name in SHAPES:
        for batch in batches[name]:
            if not fits(batch, SHAPES[name], dtype, device):
                print(f"skipped {name} batch {batch}: the eager chain's tensors would not fit in device memory")
                continue
            found = bench_config(name, batch, device, dtype, memory_format, backends, compiled_chain, args)
            rows += found
            print(" ".join(f"{r['impl']}={r['ms']:.3f}ms" for r in found), f"[{name} batch {batch}]", flush=True)
    largest = max(r["batch"] * torch.Size(SHAPES[r["shape"]]).numel() for r in rows)
    copy_gbps = copy_bandwidth(TENSORS_MOVED * largest * dtype.itemsize, device, args.rounds,
                               args.round_seconds) / 1e9
    for r in rows:
        r["copy_fraction"] = r["gbps"] / copy_gbps
    return dict(
        device=str(device), device_name=device_name(device), dtype=args.dtype, load_average=os.getloadavg(),
        memory_format="channels_last" if args.channels_last else "contiguous",
        threads=torch.get_num_threads(), clock=args.clock, torch=torch.__version__, python=platform.python_version(),
        copy_gbps=copy_gbps, tensors_moved=TENSORS_MOVED, rounds=args.rounds, results=rows,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return models[0] if models else platform.processor() or platform.machine()


def write_results(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_thread_time" if report["clock"] == "thread" else ""
    stem = out / f"step_{report['device'].split(':')[0]}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report["results"][0]))
        writer.writeheader()
        writer.writerows(report["results"])
    return stem


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, len(SHAPES), figsize=(6 * len(SHAPES), 4), squeeze=False)
    for ax, name in zip(axes[0], SHAPES):
        batches = sorted({r["batch"] for r in rows if r["shape"] == name})
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = [next((r["gbps"] for r in rows if (r["shape"], r["batch"], r["impl"]) == (name, b, impl)), 0)
                      for b in batches]
            ax.bar([k + i * width for k in range(len(batches))], values, width, label=impl)
        ax.axhline(report["copy_gbps"], color="k", linestyle="--", label="copy_ bandwidth")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(batches))], [f"B={b}" for b in batches])
        ax.set_title(f"{name} {'x'.join(map(str, SHAPES[name]))}")
        ax.set_ylabel("effective GB/s (6 tensors moved)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"LST step on {report['device_name']} ({report['device']}, {report['dtype']}, "
                 f"{report['threads']} threads, {report.get('clock', 'wall')} clock)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(report: dict) -> str:
    lines = [f"copy_ bandwidth: {report['copy_gbps']:.1f} GB/s ({report['device_name']}, {report['threads']} threads, "
             f"load average {report['load_average'][0]:.1f}, {report.get('clock', 'wall')} clock); medians over "
             f"{report['rounds']} interleaved rounds",
             f"{'shape':9s} {'batch':>6s} {'impl':9s} {'ms':>9s} {'min ms':>9s} {'GB/s':>7s} {'x eager':>8s} "
             f"{'x compiled':>10s} {'of copy':>8s}"]
    for r in report["results"]:
        lines.append(f"{r['shape']:9s} {r['batch']:6d} {r['impl']:9s} {r['ms']:9.3f} {r['ms_min']:9.3f} "
                     f"{r['gbps']:7.1f} {r['vs_eager']:8.2f} {r['vs_compiled']:10.2f} {r['copy_fraction']:8.0%}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs (default contiguous)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes for every shape (default per device)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (median reported)")
    parser.add_argument("--round-seconds", type=float, default=0.02, help="minimum length of one timed round")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: elapsed time with all threads (default); thread: CPU time of one thread, for "
                             "machines shared with other work (CPU only; writes step_cpu_thread_time.*)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--plot-only", type=Path, help="redraw the plot of an earlier JSON report")
    args = parser.parse_args(argv)
    if args.plot_only:
        report = json.loads(args.plot_only.read_text())
        stem = args.plot_only.with_suffix("")
    else:
        report = run(args)
        stem = write_results(report, args.out)
    print(summary(report))
    try:
        plot(report, stem.with_suffix(".png"))
    except ImportError as err:  # e.g. a GPU machine without matplotlib: redraw later with --plot-only
        print(f"no plot ({err}); redraw with --plot-only {stem.with_suffix('.json')}")
    print(f"results: {stem}.{{csv,json,png}}")


if __name__ == "__main__":
    main()
