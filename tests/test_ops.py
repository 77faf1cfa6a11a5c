"""The fused LST step: every backend against a float64 transcription of the spec and the PyTorch twin.

Backends that run here are tested on every device found (CPU always; CUDA when present, which is how
bench/gpu_check.sh runs the Triton and CUDA kernels). The Triton kernels are also run on CPU through the
Triton interpreter, in a subprocess (``test_interpreter_run``), since TRITON_INTERPRET must be set before
triton is imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lst_fast import ops
from lst_fast.kernels import cuda_step, triton_interpreting
from lst_fast.rows import orthogonal_component_
from lst_fast.testing import ADV_STEP_SIZE as ADV
from lst_fast.testing import expected_step, make_inputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on_device(device, *values):
    """A test case on ``device``; marked ``gpu`` on CUDA, so that bench/gpu_check.sh (pytest -m gpu) runs it."""
    return pytest.param(device, *values, marks=[pytest.mark.gpu] if device == "cuda" else [],
                        id="-".join(map(str, (device, *values))))


BACKEND_CASES = [on_device(device, backend) for device in DEVICES for backend in ops.available_backends(device)]
HALF_DTYPES = (torch.float16, torch.bfloat16)
STEP = 0.3  # a large step so that many candidates clip at 0 and 1

# Odd sizes, batch 1, rows that are not a multiple of any block size; rows of 4,097-8,192 elements (the CUDA
# kernel's 512-thread blocks); rows long enough to reach the C++ kernel's split-row plan (>= 16,384 elements
# with 1 or 3 rows) and the GPU kernels' split plans (> 8,192 elements; the Triton interpreter runs them too,
# in a few seconds).
SHAPES = [(1, 3, 5, 7), (4, 3, 32, 32), (3, 2, 9, 1), (6, 1, 1, 1), (2, 3, 40, 50), (1, 3, 128, 128),
          (3, 3, 77, 75)]


def tolerance(dtype: torch.dtype) -> float:
    """Largest error allowed against the float64 result: a few roundings of values of magnitude ~1."""
    return {torch.float64: 1e-12, torch.float32: 5e-6}[dtype]


def assert_close(got, expected, atol):
    assert got.shape == expected.shape
    err = (got.double() - expected.double()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


# ---------------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("adv", [ADV, 0.0], ids=["correction", "no_correction"])
def test_backend_matches_spec_and_twin(device, backend, shape, channels_last, adv):
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last needs 4-D tensors")
    x, grad, tgt, delta = make_inputs(shape, device=device, channels_last=channels_last)
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, adv)
    if x[0].numel() >= 32:
        assert (exp_cand == 0).any() and (exp_cand == 1).any(), "the inputs must exercise clipping at 0 and 1"

    delta_buf, out = delta.clone(), torch.empty_like(x)
    ops.lst_step_(x, grad, tgt, delta_buf, out, step_size=STEP, adv_step_size=adv, backend=backend)
    assert_close(out, exp_cand, tolerance(x.dtype))
    assert_close(delta_buf, exp_delta, tolerance(x.dtype))
    if adv == 0:
        assert torch.equal(delta_buf, delta), "with the correction off delta must stay untouched"
    assert out.stride() == x.stride()

    twin_delta, twin_out = delta.clone(), torch.empty_like(x)
    ops.lst_step_torch_(x, grad, tgt, twin_delta, twin_out, step_size=STEP, adv_step_size=adv)
    assert_close(out, twin_out, 2e-6)
    assert_close(delta_buf, twin_delta, 1e-9)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_hand_computed_step(device, backend):
    # Row 0: v = (0.5, 0), g = (1, 1): <g,v> = 0.5, <g,g> = 2, v_perp = (0.25, -0.25);
    #   delta = clamp((0.05, 0.05), -0.1, 0.1); cand = (0.5 + 0.4 * 0.25 - 0.05, 0.5 - 0.1 - 0.05).
    # Row 1: zero gradient, so v_perp = v = (0.5, -0.5) and delta stays 0.2 -> clamped to 0.1;
    #   cand = clamp((0.5 + 0.2 - 0.1, 0.9 - 0.2 - 0.1)) = (0.6, 0.6).
    x = torch.tensor([[0.5, 0.5], [0.5, 0.9]], device=device)
    grad = torch.tensor([[1.0, 1.0], [0.0, 0.0]], device=device)
    tgt = torch.tensor([[1.0, 0.5], [1.0, 0.4]], device=device)
    delta = torch.tensor([[0.0, 0.0], [0.2, 0.2]], device=device)
    cand, new_delta = ops.lst_step(x, grad, tgt, delta, step_size=0.4, adv_step_size=0.1, backend=backend)
    assert_close(cand, torch.tensor([[0.55, 0.35], [0.6, 0.6]]), 1e-6)
    assert_close(new_delta, torch.tensor([[0.05, 0.05], [0.1, 0.1]]), 1e-7)
    assert torch.equal(delta, torch.tensor([[0.0, 0.0], [0.2, 0.2]], device=device)), "inputs left untouched"


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_functional_form_without_delta(device, backend):
    x, grad, tgt, _ = make_inputs((3, 3, 6, 6), device=device)
    cand, new_delta = ops.lst_step(x, grad, tgt, None, step_size=STEP, adv_step_size=ADV, backend=backend)
    exp_cand, exp_delta = expected_step(x, grad, tgt, None, STEP, ADV)
    assert_close(cand, exp_cand, tolerance(x.dtype))
    assert_close(new_delta, exp_delta, tolerance(x.dtype))
    cand, new_delta = ops.lst_step(x, grad, tgt, None, step_size=STEP, adv_step_size=0.0, backend=backend)
    assert torch.count_nonzero(new_delta) == 0


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_fast_loop_pattern_of_swapped_buffers(device, backend):
    """As in lst_fast.fast: the same buffers every step, iterate and candidate swapping roles; the second
    and later calls (whose checks are remembered) must compute with the buffers' current contents."""
    x, grad, tgt, delta = make_inputs((3, 3, 8, 8), device=device)
    exp_x, exp_delta = x.clone(), delta.clone()
    cand = torch.empty_like(x)
    for it in range(4):
        grad.mul_(-1.0 if it % 2 else 0.5)  # a new gradient every step
        ops.lst_step_(x, grad, tgt, delta, cand, step_size=STEP / 4, adv_step_size=ADV, backend=backend)
        exp_x, exp_delta = expected_step(exp_x, grad, tgt, exp_delta, STEP / 4, ADV)
        assert_close(cand, exp_x, 4 * tolerance(x.dtype))
        assert_close(delta, exp_delta, tolerance(x.dtype))
        x, cand = cand, x
    with pytest.raises(ValueError, match="out must not overlap x"):  # same tensors, bad roles: checked again
        ops.lst_step_(x, grad, tgt, delta, x, step_size=STEP, adv_step_size=ADV, backend=backend)
    with pytest.raises(TypeError, match="step_size must be a real number"):
        ops.lst_step_(x, grad, tgt, delta, cand, step_size=True, adv_step_size=ADV, backend=backend)


def test_cpp_float64_matches_spec():
    if "cpp" not in ops.available_backends("cpu", torch.float64):
        pytest.skip("the C++ extension is not built")
    x, grad, tgt, delta = make_inputs((3, 3, 40, 50), dtype=torch.float64)
    cand, new_delta = ops.lst_step(x, grad, tgt, delta, step_size=STEP, adv_step_size=ADV, backend="cpp")
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, ADV)
    assert_close(cand, exp_cand, 1e-12)
    assert_close(new_delta, exp_delta, 1e-15)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_rows_sliced_from_a_larger_batch(device, backend):
    """Row views keep any batch stride: every other row of a batch is a valid input and output."""
    x, grad, tgt, delta = (t[::2] for t in make_inputs((6, 3, 5, 7), device=device))
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, ADV)
    out_storage = torch.zeros(6, 3, 5, 7, device=device)
    out = out_storage[::2]
    ops.lst_step_(x, grad, tgt, delta, out, step_size=STEP, adv_step_size=ADV, backend=backend)
    assert_close(out, exp_cand, tolerance(x.dtype))
    assert_close(delta, exp_delta, tolerance(x.dtype))
    assert torch.count_nonzero(out_storage[1::2]) == 0, "rows between the views must not be written"


# ---------------------------------------------------------------------------------------------------------
# Per-row step sizes (the adaptive schedule's rows of different scales)

# Every backend with every dtype of float32 and float64 it runs here.
ROW_CASES = [on_device(device, backend, dtype) for device in DEVICES for dtype in (torch.float32, torch.float64)
             for backend in ops.available_backends(device, dtype)]
# Per-row step and correction sizes, each alone, and per-row steps with the correction off.
ROW_SIZES = {"both": (True, True), "step": (True, False), "correction": (False, True), "no_correction": (True, None)}


def row_scales(n: int, device) -> torch.Tensor:
    """Distinct per-row scales (float64, as the adaptive schedule keeps them)."""
    return torch.linspace(0.5, 2.0, n, dtype=torch.float64, device=device)


def sizes_for(kind: str, n: int, device, step: float = STEP, adv: float = ADV):
    """``(step_size, adv_step_size)`` of case ``kind`` of ROW_SIZES: per-row tensors or floats."""
    step_rows, adv_rows = ROW_SIZES[kind]
    scale = row_scales(n, device)
    return step * scale if step_rows else step, 0.0 if adv_rows is None else adv * scale if adv_rows else adv


def expected_rows(x, grad, tgt, delta, step_size, adv_step_size):
    """The spec's step (float64) of each row alone with its own sizes as floats: what per-row sizes mean."""
    def size(value, b):
        return value[b].item() if isinstance(value, torch.Tensor) else value

    steps = [expected_step(x[b:b + 1], grad[b:b + 1], tgt[b:b + 1], None if delta is None else delta[b:b + 1],
                           size(step_size, b), size(adv_step_size, b)) for b in range(len(x))]
    return torch.cat([cand for cand, _ in steps]), torch.cat([new_delta for _, new_delta in steps])


@pytest.mark.parametrize("device,backend,dtype", ROW_CASES)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (4, 3, 32, 32), (1, 3, 128, 128), (3, 3, 77, 75)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", list(ROW_SIZES))
def test_per_row_sizes_match_spec_and_twin(device, backend, dtype, shape, kind):
    """Per-row sizes on every launch plan (one block per row; long rows split across threads or blocks)."""
    x, grad, tgt, delta = make_inputs(shape, dtype=dtype, device=device)
    step, adv = sizes_for(kind, shape[0], device)
    exp_cand, exp_delta = expected_rows(x, grad, tgt, delta, step, adv)

    delta_buf, out = delta.clone(), torch.empty_like(x)
    ops.lst_step_(x, grad, tgt, delta_buf, out, step_size=step, adv_step_size=adv, backend=backend)
    assert_close(out, exp_cand, tolerance(dtype))
    assert_close(delta_buf, exp_delta, tolerance(dtype))
    if kind == "no_correction":
        assert torch.equal(delta_buf, delta), "with the correction off delta must stay untouched"

    twin_delta, twin_out = delta.clone(), torch.empty_like(x)
    ops.lst_step_torch_(x, grad, tgt, twin_delta, twin_out, step_size=step, adv_step_size=adv)
    assert_close(out, twin_out, 2e-6 if dtype == torch.float32 else 1e-12)
    assert_close(delta_buf, twin_delta, 1e-9 if dtype == torch.float32 else 1e-15)


@pytest.mark.parametrize("device,backend,dtype", ROW_CASES)
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (3, 3, 77, 75)], ids=["short_rows", "long_rows"])
def test_equal_per_row_sizes_give_the_scalar_step(device, backend, dtype, shape):
    """Per-row sizes that are all equal reproduce the scalar step bit for bit (both forms)."""
    x, grad, tgt, delta = make_inputs(shape, dtype=dtype, device=device)
    ones = torch.ones(shape[0], dtype=torch.float64, device=device)
    scalar = ops.lst_step(x, grad, tgt, delta, step_size=STEP, adv_step_size=ADV, backend=backend)
    per_row = ops.lst_step(x, grad, tgt, delta, step_size=STEP * ones, adv_step_size=ADV * ones, backend=backend)
    assert torch.equal(per_row[0], scalar[0]) and torch.equal(per_row[1], scalar[1])
    delta_buf, out = delta.clone(), torch.empty_like(x)
    ops.lst_step_(x, grad, tgt, delta_buf, out, step_size=STEP * ones, adv_step_size=ADV, backend=backend)
    assert torch.equal(out, scalar[0]) and torch.equal(delta_buf, scalar[1])


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_fast_loop_pattern_with_new_per_row_sizes_every_step(device, backend):
    """As the adaptive loop calls it: the same buffers, new per-row sizes (fresh tensors) at every step; the
    remembered checks must not keep the first step's sizes."""
    x, grad, tgt, delta = make_inputs((3, 3, 8, 8), device=device)
    exp_x, exp_delta = x.clone(), delta.clone()
    cand = torch.empty_like(x)
    scale = row_scales(3, device)
    for it in range(3):
        scale = torch.where(torch.arange(3, device=device) == it, scale * 1.5, scale)  # rows grow at different times
        ops.lst_step_(x, grad, tgt, delta, cand, step_size=STEP / 4 * scale, adv_step_size=ADV * scale,
                      backend=backend)
        exp_x, exp_delta = expected_rows(exp_x, grad, tgt, exp_delta, STEP / 4 * scale, ADV * scale)
        assert_close(cand, exp_x, 4 * tolerance(x.dtype))
        assert_close(delta, exp_delta, tolerance(x.dtype))
        x, cand = cand, x


@pytest.mark.parametrize("name", ["step_size", "adv_step_size"])
@pytest.mark.parametrize(
    "sizes,error,match",
    [
        (torch.full((3,), 0.1), ValueError, r"must be a float or a \(2,\) tensor of per-row values, got shape \(3,\)"),
        (torch.full((2, 1), 0.1), ValueError, r"must be a float or a \(2,\) tensor .*, got shape \(2, 1\)"),
        (torch.ones(2, dtype=torch.int64), TypeError, r"must be a float or a \(2,\) tensor .*got dtype torch.int64"),
        (torch.full((2,), 0.1, device="meta"), ValueError, r"is on meta, expected the device of x \(cpu\)"),
    ],
    ids=["too_many_rows", "a_column", "integers", "another_device"],
)
@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_bad_per_row_sizes_are_named(backend, name, sizes, error, match):
    args = _args(backend=backend)
    good = dict(step_size=torch.full((2,), STEP), adv_step_size=torch.full((2,), ADV))
    _step(dict(args, **good))  # remembered checks of good per-row sizes must not hide the bad ones
    with pytest.raises(error, match=f"^{name} {match}"):
        _step(dict(args, **{name: sizes}))
    with pytest.raises(error, match=f"^{name} {match}"):
        ops.lst_step(args["x"], args["grad"], args["tgt"], args["delta"], **dict(good, **{name: sizes}),
                     backend=backend)


# Half precision. Flash-attention's rule: a kernel's error against a float64 computation (on the same rounded
# inputs) is at most twice the error of the PyTorch twin run in the same low precision; and at most a few units
# of the output dtype's resolution. The inputs make both terms of the step large next to that resolution: a
# gradient correlated with tgt - x (a large projection) and a correction step of 0.1.
HALF_ADV = 0.1
# Every kernel that runs half precision here, except the twin itself (the torch backend).
HALF_CASES = [on_device(device, backend, dtype) for device in DEVICES for dtype in HALF_DTYPES
              for backend in ops.available_backends(device, dtype) if backend != "torch"] or [
    pytest.param(None, None, None, marks=pytest.mark.skip(
        reason="no half-precision kernel here: Triton runs it on a GPU or under TRITON_INTERPRET=1 "
               "(test_interpreter_run); the C++ kernel takes float32/float64 only"))]


def half_inputs(shape, dtype, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    tgt = torch.rand(shape, generator=gen, dtype=torch.float64)
    grad = (tgt - x) + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    delta = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * HALF_ADV
    return [t.to(device=device, dtype=dtype) for t in (x, grad, tgt, delta)]


def max_error(got, expected) -> float:
    return (got.double() - expected.double()).abs().max().item()


@pytest.mark.parametrize("device,backend,dtype", HALF_CASES)
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (3, 3, 224, 224)], ids=["cifar", "imagenet"])
@pytest.mark.parametrize("kind", ["scalar", "per_row"])
def test_half_precision(device, backend, dtype, shape, kind):
    """Per-row sizes scale the rows' steps and corrections by 0.5 to 2 (bounds of 0.05 to 0.2)."""
    x, grad, tgt, delta = half_inputs(shape, dtype, device)
    step, adv = (STEP, HALF_ADV) if kind == "scalar" else sizes_for("both", shape[0], device, STEP, HALF_ADV)
    exp_cand, exp_delta = expected_rows(x, grad, tgt, delta, step, adv)
    eps = torch.finfo(dtype).eps  # the spacing of values in [1, 2); candidates lie in [0, 1]
    # The test can fail: a kernel without the projection, or without the correction, is far outside it.
    step_column = step.view(-1, 1, 1, 1) if isinstance(step, torch.Tensor) else step
    no_projection = torch.clamp(x.double() + step_column * (tgt.double() - x.double()) - exp_delta, 0, 1)
    no_correction, _ = expected_rows(x, grad, tgt, None, step, 0.0)
    assert min(max_error(no_projection, exp_cand), max_error(no_correction, exp_cand)) > 4 * (2 * eps)

    cand, new_delta = ops.lst_step(x, grad, tgt, delta, step_size=step, adv_step_size=adv, backend=backend)
    twin_delta, twin_cand = delta.clone(), torch.empty_like(x)
    ops.lst_step_torch_(x, grad, tgt, twin_delta, twin_cand, step_size=step, adv_step_size=adv)
    assert cand.dtype == dtype and new_delta.dtype == dtype
    cand_error, twin_cand_error = max_error(cand, exp_cand), max_error(twin_cand, exp_cand)
    assert cand_error <= 2 * twin_cand_error and cand_error <= 2 * eps, (cand_error, twin_cand_error, eps)
    # The correction relative to its bound HALF_ADV, where the resolution is HALF_ADV * eps.
    delta_error = max_error(new_delta, exp_delta) / HALF_ADV
    twin_delta_error = max_error(twin_delta, exp_delta) / HALF_ADV
    assert delta_error <= 2 * twin_delta_error and delta_error <= 2 * eps, (delta_error, twin_delta_error, eps)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("backend", [b for b in ("triton", "cuda") if b in ops.available_backends("cuda")])
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 3, 224, 224)], ids=["cifar", "imagenet"])
def test_cuda_graph_capture(backend, shape):
    x, grad, tgt, delta = make_inputs(shape, device="cuda")
    out = torch.empty_like(x)
    step = lambda: ops.lst_step_(x, grad, tgt, delta, out, step_size=STEP, adv_step_size=ADV, backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up (Triton compiles outside the capture)
    torch.cuda.current_stream().wait_stream(stream)
    x0, grad0, tgt0, delta0 = make_inputs(shape, device="cuda")
    delta.copy_(delta0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    delta.copy_(delta0)
    graph.replay()
    graph.replay()  # two steps: delta is updated twice
    _, once = expected_step(x0, grad0, tgt0, delta0, STEP, ADV)
    exp_cand, exp_delta = expected_step(x0, grad0, tgt0, once, STEP, ADV)
    torch.cuda.synchronize()
    assert_close(out, exp_cand, tolerance(x.dtype))
    assert_close(delta, exp_delta, tolerance(x.dtype))


CUDA_KERNEL_HERE = torch.cuda.is_available() and "cuda" in ops.available_backends("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_KERNEL_HERE, reason=f"needs the CUDA kernel on a GPU: {cuda_step.unavailable_reason()}")
@pytest.mark.parametrize("plan", cuda_step.PLANS)
def test_cuda_launch_plans(plan):
    """Both ways of grouping long rows into launches, on a batch where they differ (150 ImageNet rows: groups
    of 19 rows, or as many as fit half of the L2 cache) and end in a partial group."""
    x, grad, tgt, delta = make_inputs((150, 3, 224, 224), device="cuda")
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, ADV)
    previous = cuda_step.set_plan(plan)
    try:
        cand, new_delta = ops.lst_step(x, grad, tgt, delta, step_size=STEP, adv_step_size=ADV, backend="cuda")
    finally:
        cuda_step.set_plan(previous)
    assert_close(cand, exp_cand, tolerance(x.dtype))
    assert_close(new_delta, exp_delta, tolerance(x.dtype))


def test_cuda_plan_choice_is_checked():
    with pytest.raises(ValueError, match="plan must be one of"):
        cuda_step.set_plan("fastest")
    assert cuda_step.set_plan(cuda_step.set_plan("l2_groups")) == "l2_groups"


# ---------------------------------------------------------------------------------------------------------
# Launch plans of the Triton kernels, reached with small shapes by shrinking the block sizes


@pytest.mark.gpu  # on CUDA when there is a device; also run on CPU by test_interpreter_run
@pytest.mark.skipif(
    "triton" not in ops.available_backends("cpu") and not torch.cuda.is_available(),
    reason="needs a GPU or TRITON_INTERPRET=1 (run on CPU by test_interpreter_run)",
)
@pytest.mark.parametrize("adv", [ADV, 0.0], ids=["correction", "no_correction"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_triton_split_plan(adv, channels_last):
    from lst_fast.kernels import triton_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, grad, tgt, delta = make_inputs((3, 3, 7, 9), device=device, channels_last=channels_last)
    out = torch.empty_like(x)
    # 189 elements per row in blocks of 32: six full blocks and a partial one, summed in stage 2.
    triton_step.lst_step_triton_(x, grad, tgt, delta if adv else None, out, 3, 189, STEP, adv,
                                 max_row_block=16, split_block=32)
    exp_cand, exp_delta = expected_step(*make_inputs((3, 3, 7, 9), device=device), STEP, adv)
    assert_close(out, exp_cand, tolerance(x.dtype))
    assert_close(delta, exp_delta, tolerance(x.dtype))


TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _triton_signature(kernel, dtype: torch.dtype) -> dict[str, str]:
    """Argument types as Triton's ahead-of-time compiler wants them: tensors of ``dtype`` (the partial sums
    are float32, per-row step sizes float64), float scalars for the step sizes, int32 for sizes and strides."""
    types = {}
    for param in kernel.params:
        if param.is_constexpr:
            types[param.name] = "constexpr"
        elif param.name == "part_ptr":
            types[param.name] = "*fp32"
        elif param.name in ("steps_ptr", "advs_ptr"):
            types[param.name] = "*fp64"
        elif param.name.endswith("_ptr"):
            types[param.name] = "*" + TRITON_TYPES[dtype]
        else:
            types[param.name] = "fp32" if param.name.endswith("step_size") else "i32"
    return types


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpus(arch):
    """The Triton kernels compile to cubins for Ampere and Hopper without a GPU (the interpreter does not
    check what the GPU compiler does), for every dtype, both launch plans and per-row or scalar sizes."""
    if triton_interpreting():
        pytest.skip("the interpreter replaces the compiler")
    triton = pytest.importorskip("triton", reason="triton is not installed")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lst_fast.kernels import triton_step

    scalar, per_row = {"ROW_STEPS": False, "ROW_ADVS": False}, {"ROW_STEPS": True, "ROW_ADVS": True}
    cases = [
        (triton_step._row_step, {"HAS_DELTA": True, **scalar, "BLOCK": 16}, 1),
        (triton_step._row_step, {"HAS_DELTA": True, **per_row, "BLOCK": 16}, 1),
        (triton_step._row_step, {"HAS_DELTA": False, **scalar, "BLOCK": triton_step.MAX_ROW_BLOCK}, 16),
        (triton_step._partial_dots, {"BLOCK": triton_step.SPLIT_BLOCK}, 8),
        (triton_step._update, {"HAS_DELTA": True, **scalar, "BLOCK": triton_step.SPLIT_BLOCK, "BLOCKS_P2": 64}, 8),
        (triton_step._update, {"HAS_DELTA": True, **per_row, "BLOCK": triton_step.SPLIT_BLOCK, "BLOCKS_P2": 64}, 8),
    ]
    for dtype in TRITON_TYPES:
        for kernel, constexprs, warps in cases:
            source = ASTSource(kernel, _triton_signature(kernel, dtype), constexprs=constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            assert len(compiled.asm["cubin"]) > 0


def test_interpreter_run():
    """Run this file's Triton cases on CPU under the Triton interpreter, in a fresh process."""
    if triton_interpreting():
        pytest.skip("already inside the interpreter run")
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
           "triton and not interpreter_run"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    # the grid (6 shapes x 2 layouts x 2 corrections) and the other Triton tests
    assert passed is not None and int(passed.group(1)) >= 30, done.stdout[-2000:]


# ---------------------------------------------------------------------------------------------------------
# torch.library registration


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_opcheck(device, backend):
    x, grad, tgt, delta = make_inputs((3, 3, 5, 7), device=device)
    out = torch.empty_like(x)
    torch.library.opcheck(torch.ops.lst_fast.lst_step.default, (x, grad, tgt, delta, STEP, ADV, backend))
    torch.library.opcheck(torch.ops.lst_fast.lst_step.default, (x, grad, tgt, None, STEP, 0.0, backend))
    torch.library.opcheck(torch.ops.lst_fast.lst_step_.default, (x, grad, tgt, delta, out, STEP, ADV, backend))
    steps, advs = STEP * row_scales(3, device), ADV * row_scales(3, device)
    torch.library.opcheck(torch.ops.lst_fast.lst_step.default, (x, grad, tgt, delta, 0.0, 0.0, backend, steps, advs))
    torch.library.opcheck(torch.ops.lst_fast.lst_step_.default,
                          (x, grad, tgt, delta, out, 0.0, ADV, backend, steps, None))


def test_per_row_op_arguments_match_eager_calls():
    x, grad, tgt, delta = make_inputs((3, 3, 5, 7))
    steps, advs = STEP * row_scales(3, "cpu"), ADV * row_scales(3, "cpu")
    cand, new_delta = torch.ops.lst_fast.lst_step(x, grad, tgt, delta, 0.0, 0.0, None, steps, advs)
    exp_cand, exp_delta = expected_rows(x, grad, tgt, delta, steps, advs)
    assert_close(cand, exp_cand, tolerance(x.dtype))
    assert_close(new_delta, exp_delta, tolerance(x.dtype))


OP_ERRORS = [  # (change of the arguments of lst_fast::lst_step, error, message)
    (dict(grad=torch.empty(2, 3, 4, 5)), ValueError, r"grad has shape \(2, 3, 4, 5\), expected the shape of x"),
    (dict(tgt=torch.empty(2, 3, 4, 4, dtype=torch.float64)), TypeError, "tgt has dtype torch.float64"),
    (dict(adv_step_size=-1.0), ValueError, "adv_step_size must be >= 0"),
    (dict(row_step_sizes=torch.empty(3)), ValueError,
     r"row_step_sizes must be None or a \(2,\) tensor of per-row values, got shape \(3,\)"),
    (dict(row_adv_step_sizes=torch.empty(2, dtype=torch.int32)), TypeError, "row_adv_step_sizes must be None or a"),
    (dict(step_size=STEP, row_step_sizes=torch.empty(2)), ValueError,
     "step_size must be 0 when row_step_sizes is given"),
    (dict(backend="numba"), ValueError, "backend must be None or one of"),
]


def _op_args(**change):
    x = torch.empty(2, 3, 4, 4)
    args = dict(x=x, grad=torch.empty_like(x), tgt=torch.empty_like(x), delta=None, step_size=0.0,
                adv_step_size=0.0, backend=None, row_step_sizes=torch.empty(2), row_adv_step_sizes=None)
    args.update(change)
    return list(args.values())


@pytest.mark.parametrize("change,error,match", OP_ERRORS)
def test_fake_implementations_check_arguments(change, error, match):
    """Traced (FakeTensor: torch.compile, export) the ops raise what the eager calls raise."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    good, bad = ([mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                 for args in (_op_args(), _op_args(**change)))
    with mode:
        cand, new_delta = torch.ops.lst_fast.lst_step(*good)
        assert cand.shape == new_delta.shape == (2, 3, 4, 4)
        with pytest.raises(error, match=match):
            torch.ops.lst_fast.lst_step(*bad)


@pytest.mark.parametrize("change,error,match", OP_ERRORS)
def test_direct_op_calls_check_arguments(change, error, match):
    with pytest.raises(error, match=match):
        torch.ops.lst_fast.lst_step(*_op_args(**change))


def test_ops_match_eager_calls():
    x, grad, tgt, delta = make_inputs((2, 3, 5, 7))
    cand, new_delta = torch.ops.lst_fast.lst_step(x, grad, tgt, delta, STEP, ADV, "torch")
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, ADV)
    assert_close(cand, exp_cand, tolerance(x.dtype))
    assert_close(new_delta, exp_delta, tolerance(x.dtype))


def test_torch_compile():
    """Both ops inside one compiled function (full graph, no graph break) give the eager results."""

    def two_steps(x, grad, tgt, delta, out):
        ops.lst_step_(x, grad, tgt, delta, out, step_size=STEP, adv_step_size=ADV)
        cand, new_delta = ops.lst_step(out, grad, tgt, delta, step_size=STEP, adv_step_size=ADV)
        return cand * 0.5, new_delta

    inputs = make_inputs((2, 3, 5, 7))
    compiled_delta, eager_delta = inputs[3].clone(), inputs[3].clone()
    compiled_out, eager_out = torch.empty_like(inputs[0]), torch.empty_like(inputs[0])
    got = torch.compile(two_steps, fullgraph=True)(*inputs[:3], compiled_delta, compiled_out)
    expected = two_steps(*inputs[:3], eager_delta, eager_out)
    for g, e in zip(got + (compiled_delta, compiled_out), expected + (eager_delta, eager_out)):
        assert torch.equal(g, e)


# ---------------------------------------------------------------------------------------------------------
# Backends and row views


def test_available_backends_here():
    cpu = ops.available_backends("cpu")
    assert cpu[0] == ("cpp" if "cpp" in cpu else "torch") and "torch" in cpu
    assert ops.available_backends("cpu", torch.float16) == ["torch"] + (["triton"] if "triton" in cpu else [])
    assert ops.default_backend("cpu", torch.float64) == cpu[0]
    if not torch.cuda.is_available():
        assert ops.available_backends("cuda") == ["torch"]
        assert cuda_step.unavailable_reason() != ""


def test_backend_choice_is_explained_once(monkeypatch, caplog):
    reasons = ops.backend_reasons("cpu", torch.float16)
    assert reasons["torch"] == "" and reasons["cpp"] == "float32 and float64 only"
    assert reasons["cuda"] == "CUDA tensors only"
    assert ("TRITON_INTERPRET=1" in reasons["triton"]) != triton_interpreting()
    if not torch.cuda.is_available():
        assert all(why for name, why in ops.backend_reasons("cuda").items() if name != "torch")
    monkeypatch.setattr(ops, "_available_cache", {})
    with caplog.at_level("INFO", logger="lst_fast"):
        for _ in range(3):
            assert ops.available_backends("cpu", torch.float16)[0] == "torch"
    lines = [r.getMessage() for r in caplog.records if r.name == "lst_fast"]
    assert len(lines) == 1 and "runs on 'torch'" in lines[0] and "cpp: float32 and float64 only" in lines[0]


def test_check_backend_resolves_and_explains():
    assert ops.check_backend(None, "cpu", torch.float32) == ops.default_backend("cpu", torch.float32)
    assert ops.check_backend("torch", "meta") == "torch"
    with pytest.raises(ValueError, match=r"backend must be None or one of \('triton', 'cuda', 'cpp', 'torch'\)"):
        ops.check_backend("numba", "cpu")
    with pytest.raises(ValueError, match=r"backend 'cpp' cannot run torch.float16 on cpu here \(float32 and "
                                         r"float64 only\); backend must be one of \['torch'"):
        ops.check_backend("cpp", "cpu", torch.float16)
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run on cpu here \(CUDA tensors only\)"):
        ops.check_backend("cuda", "cpu")


def _recording_backend(calls: list, **fields) -> ops.BackendInfo:
    """A backend on CPU whose launcher is the twin's, recording each launch's step sizes."""
    def launcher(x, grad, tgt, delta, out, n_rows, row_len, step_size, adv_step_size):
        calls.append((step_size, adv_step_size))
        ops.lst_step_torch_(x, grad, tgt, delta, out, step_size=step_size, adv_step_size=adv_step_size)

    return ops.BackendInfo(**{"name": "recording", "priority": 9, "devices": ("cpu",), "dtypes": (torch.float64,),
                              "runtime_reason": lambda device: "", "load_kernel": lambda: launcher, **fields})


def test_a_backend_is_one_registry_record(monkeypatch):
    """The choice, the checks and the dispatch all come from BACKEND_REGISTRY."""
    calls = []
    monkeypatch.setattr(ops, "BACKEND_REGISTRY", ops.BACKEND_REGISTRY + (_recording_backend(calls),))
    monkeypatch.setattr(ops, "_available_cache", {})
    monkeypatch.setattr(ops, "_planned", {})
    assert ops.available_backends("cpu", torch.float64)[0] == "recording"  # the highest priority
    assert "recording" not in ops.available_backends("cpu", torch.float32)
    assert ops.backend_reasons("cuda", torch.float64)["recording"] == "CPU tensors only"
    assert ops.backend_reasons("cpu", torch.float32)["recording"] == "float64 only"
    x, grad, tgt, delta = make_inputs((3, 3, 4, 4), dtype=torch.float64)
    steps = STEP * row_scales(3, "cpu")
    cand, new_delta = ops.lst_step(x, grad, tgt, delta, step_size=steps, adv_step_size=ADV)
    assert len(calls) == 1 and calls[0][0] is steps and calls[0][1] == ADV
    exp_cand, exp_delta = expected_rows(x, grad, tgt, delta, steps, ADV)
    assert_close(cand, exp_cand, 1e-12)
    assert_close(new_delta, exp_delta, 1e-15)
    with pytest.raises(ValueError, match=r"backend 'recording' cannot run torch.float32 on cpu here \(float64 only\)"):
        ops.check_backend("recording", "cpu", torch.float32)


def test_interpreted_backends_come_last(monkeypatch):
    interpreted = _recording_backend([], interpreted_on=("cpu",), dtypes=None)
    monkeypatch.setattr(ops, "BACKEND_REGISTRY", ops.BACKEND_REGISTRY + (interpreted,))
    monkeypatch.setattr(ops, "_available_cache", {})
    assert ops.available_backends("cpu")[-1] == "recording"


def test_cuda_module_imports_without_gpu():
    """The CUDA module (built when nvcc is present) links its runtime statically: it imports anywhere."""
    module = cuda_step._module()
    if module is None:
        pytest.skip("lst_fast._C_cuda was not built here (no nvcc at install time)")
    assert module.workspace_size(4, 3 * 32 * 32) == 0  # one block per row: no workspace
    assert module.workspace_size(4, 3 * 224 * 224) == 4 * 37 * 2  # 37 chunks of 4,096 per row
    if not torch.cuda.is_available():
        assert module.runtime_error() != ""


@pytest.mark.parametrize("channels_last", [False, True])
def test_rows_views_share_memory(channels_last):
    t = torch.rand(3, 4, 5, 6)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    r = ops.rows(t)
    assert r.shape == (3, 120) and r.data_ptr() == t.data_ptr()
    expected = t.permute(0, 2, 3, 1) if channels_last else t
    assert torch.equal(r, expected.reshape(3, 120))
    assert ops.row_orders(t) == ({"channels_last"} if channels_last else {"contiguous"})
    assert ops.row_orders(torch.rand(2, 1, 3, 3)) == {"contiguous", "channels_last"}


def test_row_dot_any_layout():
    a, b = torch.rand(3, 4, 5, 6), torch.rand(3, 4, 5, 6)
    expected = (a.double() * b.double()).flatten(1).sum(1)
    got = ops.row_dot(a.contiguous(memory_format=torch.channels_last), b)
    assert_close(got, expected, 1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_orthogonal_component_is_the_spec_projection_in_place(channels_last):
    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 4, 5, 6, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    grad[2] = 0
    if channels_last:
        v, grad = v.contiguous(memory_format=torch.channels_last), grad.contiguous(memory_format=torch.channels_last)
    expected = v.clone()
    for i in range(2):  # algorithm §2.3 row by row; a zero gradient keeps v (the documented deviation)
        expected[i] = v[i] - grad[i] * (grad[i] * v[i]).sum() / (grad[i] * grad[i]).sum()
    got = orthogonal_component_(v, grad)
    assert got is v  # written into v
    assert_close(got, expected, 1e-12)
    assert_close((got * grad).flatten(1).sum(1), torch.zeros(3, dtype=torch.float64), 1e-12)


def test_twin_takes_any_layout():
    x, grad, tgt, delta = make_inputs((2, 3, 6, 5))
    exp_cand, exp_delta = expected_step(x, grad, tgt, delta, STEP, ADV)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, rows not dense in either order
    out = torch.empty_like(x)
    ops.lst_step_(xt, grad, tgt, delta, out, step_size=STEP, adv_step_size=ADV, backend="torch")
    assert_close(out, exp_cand, tolerance(x.dtype))
    assert_close(delta, exp_delta, tolerance(x.dtype))


def test_empty_batch_is_a_no_op():
    x = torch.empty(0, 3, 4, 4)
    cand, new_delta = ops.lst_step(x, x, x, None, step_size=STEP, adv_step_size=ADV)
    assert cand.shape == (0, 3, 4, 4) and new_delta.shape == (0, 3, 4, 4)


# ---------------------------------------------------------------------------------------------------------
# Bad input


def _args(**change):
    x, grad, tgt, delta = make_inputs((2, 3, 4, 4))
    args = dict(x=x, grad=grad, tgt=tgt, delta=delta, out=torch.empty_like(x), step_size=STEP,
                adv_step_size=ADV, backend=None)
    args.update(change)
    return args


def _step(args):
    a = dict(args)
    ops.lst_step_(a.pop("x"), a.pop("grad"), a.pop("tgt"), a.pop("delta"), a.pop("out"), **a)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(grad=torch.rand(2, 3, 4, 5)), ValueError, "grad has shape"),
        (dict(tgt=torch.rand(2, 3, 4, 4, dtype=torch.float64)), TypeError, "tgt has dtype"),
        (dict(delta=torch.rand(2, 3, 4, 4, device="meta")), ValueError, "delta is on meta"),
        (dict(out=[0.0]), TypeError, "out must be a torch.Tensor"),
        (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), TypeError, "x must be a floating-point"),
        (dict(x=torch.rand(5)), ValueError, "x must have shape"),
        (dict(step_size=-0.1), ValueError, "step_size must be > 0"),
        (dict(step_size=0.0), ValueError, "step_size must be > 0"),
        (dict(adv_step_size=-1e-3), ValueError, "adv_step_size must be >= 0"),
        (dict(step_size=True), TypeError, "step_size must be a real number"),
        (dict(adv_step_size=float("nan")), ValueError, "adv_step_size must be finite"),
        (dict(backend="numba"), ValueError, "backend must be None or one of"),
        (dict(backend="cuda"), ValueError, "backend 'cuda' cannot run"),
    ],
)
def test_bad_arguments(change, error, match):
    if change.get("backend") == "cuda" and torch.cuda.is_available():
        pytest.skip("the cuda backend does not run on CPU tensors anyway; covered by the device message")
    with pytest.raises(error, match=match):
        _step(_args(**change))


@pytest.mark.parametrize("backend", [b for b in ops.available_backends("cpu") if b != "torch"])
def test_kernel_rejects_layouts_it_cannot_take(backend):
    args = _args(backend=backend)
    strided = args["x"].transpose(2, 3).contiguous().transpose(2, 3)
    with pytest.raises(ValueError, match=r"x with dense rows .*contiguous\(\)"):
        _step(dict(args, x=strided))
    with pytest.raises(ValueError, match="one memory format"):
        _step(dict(args, grad=args["grad"].contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("backend", ops.available_backends("cpu"))
def test_out_must_not_overlap_inputs(backend):
    args = _args(backend=backend)
    with pytest.raises(ValueError, match="out must not overlap x"):
        _step(dict(args, out=args["x"]))
    with pytest.raises(ValueError, match="out must not overlap delta"):
        _step(dict(args, out=args["delta"]))
