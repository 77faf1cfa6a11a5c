"""pytest-benchmark: the fused LST step, one group per device, shape and batch size.

Every backend available on the device (in place, ``lst_step_`` into the caller's buffers, and out of place,
``lst_step``), the eager chain, the torch.compile'd chain and a ``copy_`` of the same bytes. ``extra_info``:
the bytes the step must move, GB/s, and from one interleaved comparison of the group's implementations
(bench/harness.py): per-round speed-ups over the eager and compiled chains and the fraction of the copy
bandwidth (``copy_fraction``) measured in the same run.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench import harness
from bench.bench_step import (
    COPY,
    DEFAULT_BATCHES,
    bytes_moved,
    compare,
    compile_chain,
    config_inputs,
    implementations,
    step_backends,
    step_fn,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
QUICK = {("cpu", "cifar", 64), ("cpu", "imagenet", 1)}  # the quick selection: compiling the chain takes too long
ROUNDS, ROUND_SECONDS = 15, 0.005  # pytest-benchmark rounds, each of enough calls to last ROUND_SECONDS
COMPARISON_ROUNDS = 9


def cases():
    for device in DEVICES:
        names = implementations(step_backends(torch.device(device), torch.float32))
        for shape, batches in DEFAULT_BATCHES[device].items():
            for batch in batches:
                for name in names:
                    marks = [pytest.mark.gpu] if device == "cuda" else []
                    if (device, shape, batch) in QUICK and not name.startswith("compiled"):
                        marks.append(pytest.mark.quick)
                    yield pytest.param(device, shape, batch, name, marks=marks,
                                       id=f"{device}-{shape}-{batch}-{name.replace('/', '-')}")


@functools.cache
def compiled_chain():
    return compile_chain()


@functools.cache
def inputs_of(device: str, shape: str, batch: int) -> list[torch.Tensor]:
    return config_inputs(shape, batch, device)


@pytest.mark.parametrize("device,shape,batch,impl", list(cases()))
def test_step(benchmark, comparisons, selected, device, shape, batch, impl):
    config = dict(device=device, shape=shape, batch=batch)
    inputs = inputs_of(device, shape, batch)
    # The comparison takes every implementation of this configuration that this session runs, and the copy.
    names = list(dict.fromkeys(p["impl"] for p in selected if all(p.get(k) == v for k, v in config.items())))
    names += [] if COPY in names else [COPY]
    needs_compile = any(n.startswith("compiled") for n in names)
    found = comparisons.get(("step", device, shape, batch, tuple(names)), lambda: compare(
        inputs, names, device, compiled_chain=compiled_chain() if needs_compile else None,
        rounds=harness.rounds_for(benchmark, COMPARISON_ROUNDS),
        round_seconds=0.0 if benchmark.disabled else ROUND_SECONDS))

    fn = step_fn(impl, inputs, compiled_chain() if impl.startswith("compiled") else None)
    calls = harness.calls_for(fn, device, ROUND_SECONDS)  # also the first call (compilation, planning)
    benchmark.group = f"step {device} {shape} batch {batch}"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=calls, warmup_rounds=1)

    nbytes = bytes_moved(inputs[0])
    seconds = harness.benchmark_median(benchmark)
    mine = found[impl]
    benchmark.extra_info.update(
        bytes_moved=nbytes,
        gbps=nbytes / seconds / 1e9 if seconds else None,
        copy_gbps=found[COPY]["gbps"],  # copy_ of the same bytes, in the interleaved comparison
        copy_fraction=mine["copy_fraction"],  # per-round ratio: copy time / this implementation's time
        interleaved_ms=mine["ms"],
        **{k: mine[k] for k in ("vs_eager", "vs_compiled") if k in mine},
    )
