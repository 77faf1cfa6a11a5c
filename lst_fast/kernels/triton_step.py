"""The fused LST step in Triton (GPU; CPU only under ``TRITON_INTERPRET=1``, which the tests use).

Two launch plans, picked by row length:

* short rows (``row_len <= max_row_block``, e.g. CIFAR's 3,072): one program per row loads the whole row
  once into registers, reduces, updates and stores. Every tensor is read and written exactly once.
* long rows (ImageNet's 150,528): a row does not fit in one program, so the reduction is split in two
  stages. Stage 1 (``_partial_dots``): each program reduces one block of one row to two partial sums.
  Stage 2 (``_update``): each program adds up its row's partial sums in a fixed order (deterministic, no
  atomics), then updates its block. Stage 2 walks the rows in reverse order, so it starts on the rows that
  stage 1 read last and that are still in the L2 cache.

Loads are converted to float32 and all arithmetic is in float32 (so bf16/fp16 inputs get float32
accumulation); results are stored in the inputs' dtype. Per-row step sizes (float64) are loaded once per
program and rounded to float32, as the scalar sizes are. Runs float32, float16 and bfloat16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lst_fast.kernels import row_values, triton_interpreting

MAX_ROW_BLOCK = 8192  # longest row handled by one program (3 x 8192 float32 values in registers)
SPLIT_BLOCK = 4096  # elements of one row per program in the split plan
MAX_GRID_Y = 65535


def unavailable_reason(device: torch.device) -> str:
    """'' when the kernels can run on ``device`` (CUDA or CPU) here, else why not."""
    if device.type == "cuda":
        return "" if torch.cuda.is_available() else "torch sees no CUDA device"
    return "" if triton_interpreting() else "on CPU only under TRITON_INTERPRET=1 (the interpreter, for tests)"


@triton.jit
def _clamp(v, lo, hi):
    return tl.minimum(tl.maximum(v, lo), hi)


@triton.jit
def _candidate(x, g, t, d_ptrs, mask, coef, step_size, adv_step_size, HAS_DELTA: tl.constexpr):
    """Elementwise part of the step (float32); updates the correction in place when it is on."""
    v_perp = (t - x) - g * coef
    c = x + step_size * v_perp
    if HAS_DELTA:
        d = tl.load(d_ptrs, mask=mask, other=0.0).to(tl.float32)
        new_d = _clamp(d + (adv_step_size * 0.5) * g, -adv_step_size, adv_step_size)
        tl.store(d_ptrs, new_d.to(d_ptrs.dtype.element_ty), mask=mask)
        c = c - new_d
    return _clamp(c, 0.0, 1.0)


@triton.jit
def _row_size(value, ptr, row, PER_ROW: tl.constexpr):
    """A row's step size (float32): ``value`` in every row, or element ``row`` of the per-row float64 sizes."""
    if PER_ROW:
        value = tl.load(ptr + row).to(tl.float32)
    return value


@triton.jit
def _coef(grad_v, grad_grad):
    """<g, v> / <g, g>, and 0 for a zero gradient (then v_perp = v)."""
    return tl.where(grad_grad > 0, grad_v / tl.where(grad_grad > 0, grad_grad, 1.0), 0.0)


@triton.jit
def _row_step(x_ptr, g_ptr, t_ptr, d_ptr, out_ptr, sx, sg, st, sd, so, row_len, step_size, adv_step_size,
              steps_ptr, advs_ptr, HAS_DELTA: tl.constexpr, ROW_STEPS: tl.constexpr, ROW_ADVS: tl.constexpr,
              BLOCK: tl.constexpr):
    """One program per row; the whole row (row_len <= BLOCK) stays in registers."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < row_len
    x = tl.load(x_ptr + row * sx + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * sg + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + row * st + offs, mask=mask, other=0.0).to(tl.float32)
    coef = _coef(tl.sum(g * (t - x), axis=0), tl.sum(g * g, axis=0))
    step = _row_size(step_size, steps_ptr, row, ROW_STEPS)
    adv = _row_size(adv_step_size, advs_ptr, row, ROW_ADVS)
    cand = _candidate(x, g, t, d_ptr + row * sd + offs, mask, coef, step, adv, HAS_DELTA)
    tl.store(out_ptr + row * so + offs, cand.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _partial_dots(x_ptr, g_ptr, t_ptr, part_ptr, sx, sg, st, row_len, n_blocks, BLOCK: tl.constexpr):
    """Stage 1: partial <g, t - x> and <g, g> of block ``program_id(0)`` of row ``program_id(1)``."""
    blk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_len
    x = tl.load(x_ptr + row * sx + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * sg + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + row * st + offs, mask=mask, other=0.0).to(tl.float32)
    base = part_ptr + (row * n_blocks + blk) * 2
    tl.store(base, tl.sum(g * (t - x), axis=0))
    tl.store(base + 1, tl.sum(g * g, axis=0))


@triton.jit
def _update(x_ptr, g_ptr, t_ptr, d_ptr, out_ptr, part_ptr, sx, sg, st, sd, so, row_len, n_rows, n_blocks,
            step_size, adv_step_size, steps_ptr, advs_ptr, HAS_DELTA: tl.constexpr, ROW_STEPS: tl.constexpr,
            ROW_ADVS: tl.constexpr, BLOCK: tl.constexpr, BLOCKS_P2: tl.constexpr):
    """Stage 2: the row's projection coefficient from its partial sums, then the elementwise update."""
    blk = tl.program_id(0)
    row = (n_rows - 1 - tl.program_id(1)).to(tl.int64)  # reverse order: L2-hot rows of stage 1 first
    parts = tl.arange(0, BLOCKS_P2)
    part_mask = parts < n_blocks
    base = part_ptr + row * n_blocks * 2 + parts * 2
    grad_v = tl.sum(tl.load(base, mask=part_mask, other=0.0), axis=0)
    grad_grad = tl.sum(tl.load(base + 1, mask=part_mask, other=0.0), axis=0)
    coef = _coef(grad_v, grad_grad)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_len
    x = tl.load(x_ptr + row * sx + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * sg + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + row * st + offs, mask=mask, other=0.0).to(tl.float32)
    step = _row_size(step_size, steps_ptr, row, ROW_STEPS)
    adv = _row_size(adv_step_size, advs_ptr, row, ROW_ADVS)
    cand = _candidate(x, g, t, d_ptr + row * sd + offs, mask, coef, step, adv, HAS_DELTA)
    tl.store(out_ptr + row * so + offs, cand.to(out_ptr.dtype.element_ty), mask=mask)


def _warps(block: int) -> int:
    return max(1, min(16, block // 512))


def _scalar_and_rows(size, unused: torch.Tensor) -> tuple[float, torch.Tensor, bool]:
    """A step size as the kernels take it: (the float, ``unused`` as the pointer never read, False) or
    (0.0, the per-row float64 values, True)."""
    size = row_values(size)
    return (0.0, size, True) if isinstance(size, torch.Tensor) else (size, unused, False)


def lst_step_triton_(x, grad, tgt, delta, out, n_rows: int, row_len: int, step_size, adv_step_size, *,
                     max_row_block: int = MAX_ROW_BLOCK, split_block: int = SPLIT_BLOCK) -> None:
    """Launch (see :mod:`lst_fast.kernels` for the contract) on the current device.

    ``max_row_block`` and ``split_block`` (powers of two) pick the launch plan; the tests shrink them to reach
    the split plan with small shapes.
    """
    has_delta = delta is not None
    d = delta if has_delta else out  # never read or written when the correction is off
    strides = (x.stride(0), grad.stride(0), tgt.stride(0), d.stride(0), out.stride(0))
    step, steps, row_steps = _scalar_and_rows(step_size, x)
    adv, advs, row_advs = _scalar_and_rows(adv_step_size, x)
    flags = dict(HAS_DELTA=has_delta, ROW_STEPS=row_steps, ROW_ADVS=row_advs)
    if row_len <= max_row_block:
        block = max(16, triton.next_power_of_2(row_len))
        _row_step[(n_rows,)](x, grad, tgt, d, out, *strides, row_len, step, adv, steps, advs, **flags, BLOCK=block,
                             num_warps=_warps(block))
        return
    n_blocks = triton.cdiv(row_len, split_block)
    partials = torch.empty((n_rows, n_blocks, 2), dtype=torch.float32, device=x.device)
    for r0 in range(0, n_rows, MAX_GRID_Y):  # the second grid dimension is limited to 65,535
        r1 = min(n_rows, r0 + MAX_GRID_Y)
        tensors = (x[r0:r1], grad[r0:r1], tgt[r0:r1], d[r0:r1], out[r0:r1])
        sizes = (step, adv, steps[r0:r1] if row_steps else x, advs[r0:r1] if row_advs else x)
        grid = (n_blocks, r1 - r0)
        _partial_dots[grid](*tensors[:3], partials[r0:r1], *strides[:3], row_len, n_blocks,
                            BLOCK=split_block, num_warps=_warps(split_block))
        _update[grid](*tensors, partials[r0:r1], *strides, row_len, r1 - r0, n_blocks, *sizes, **flags,
                      BLOCK=split_block, BLOCKS_P2=max(2, triton.next_power_of_2(n_blocks)),
                      num_warps=_warps(split_block))
