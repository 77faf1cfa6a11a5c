"""The CUDA-graph loop (``traverse_batch(..., cuda_graphs=True)``) against the reference loop on real devices.

GPU tests, marked ``gpu`` (bench/gpu_check.sh runs every such test); without CUDA they are skipped. The
comparison itself also runs on CPU (the fast eager loop), so that the check is known to work before a GPU
runs it, and so does the iteration that the graph captures (static buffers, run eagerly).
"""

import warnings

import pytest
import torch

import lst_fast
from lst_fast import fast, graphs, reference, traversal
from lst_fast.classifier import model_guard
from lst_fast.settings import check_settings

from helpers import SHARPNESS, assert_same_result, colour_patches, tiny_cnn

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found)")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
# Enough iterations for several replays after the warm-up, with sharp logits so that some steps are rejected.
SETTINGS = dict(iters=16, step_size=0.5, pthresh=0.02)
# The README's documented float32 tolerance of the fast loop against the reference (images, confidences).
IMAGE_ATOL, CONF_ATOL = 2e-3, 5e-3


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions, as on CPU: TF32 rounding could flip an accept decision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_against_reference(device: str, cuda_graphs: bool) -> None:
    model = tiny_cnn(scale=SHARPNESS).float().to(device)
    srcs, tgts = colour_patches(6).float().to(device), colour_patches(6, seed=1).float().to(device)
    ref = reference.traverse_batch(model, srcs, tgts, generator=torch.Generator(device).manual_seed(0), **SETTINGS)
    got = lst_fast.traverse_batch(model, srcs, tgts, generator=torch.Generator(device).manual_seed(0),
                                  cuda_graphs=cuda_graphs, **SETTINGS)
    assert got.images.device == torch.device(device)
    assert torch.equal(got.valid, ref.valid) and ref.valid.any()
    assert torch.equal(got.accepted, ref.accepted)
    accepted = ref.accepted[ref.valid]
    assert (accepted > graphs.WARMUP_ITERS).any(), "replays must have accepted steps"
    assert (accepted < SETTINGS["iters"]).any(), "the test needs rejected steps"
    torch.testing.assert_close(got.images, ref.images, atol=IMAGE_ATOL, rtol=0)
    torch.testing.assert_close(got.final_conf, ref.final_conf, atol=CONF_ATOL, rtol=0)


def test_comparison_on_cpu():
    check_against_reference("cpu", cuda_graphs=False)


def run_mode(mode: str, **settings):
    """lst_fast.fast.run_schedule in ``mode`` on the pairs of check_against_reference (float64, CPU)."""
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(6), colour_patches(6, seed=1)
    settings = check_settings(**SETTINGS, **settings)
    with model_guard(model):
        problem = traversal.prepare(model, srcs, tgts, None, None, None, settings, torch.Generator().manual_seed(0))
        return fast.run_schedule(problem, problem.forward, settings, torch.contiguous_format, "torch", mode=mode)


@pytest.mark.parametrize("adv_step_size", [2e-3, 0.0])
def test_the_captured_iteration_run_eagerly_equals_the_eager_loop(adv_step_size):
    """Static buffers with masked selection (what a CUDA graph replays) give the eager loop's results exactly,
    though the eager loop swaps buffers, copies only rejected rows and skips the last backward."""
    recording = dict(adv_step_size=adv_step_size, log_every=5, record=("conf",))
    eager, static = run_mode("eager", **recording), run_mode("static", **recording)
    assert (eager.accepted[eager.valid] < SETTINGS["iters"]).any(), "the test needs rejected steps"
    assert_same_result(eager, static, atol=0)
    assert torch.equal(eager.path_conf, static.path_conf)
    assert torch.equal(eager.evaluations, static.evaluations)
    assert torch.equal(eager.final_step_size, static.final_step_size)


@pytest.mark.parametrize("mode, settings, message", [
    ("static", dict(schedule="adaptive"), r"mode='static' runs only the schedules with fixed shapes \['paper'\]"),
    ("replay", {}, r"mode must be one of \['eager', 'static', 'graph'\], got 'replay'"),
])
def test_bad_modes_are_refused_by_name(mode, settings, message):
    with pytest.raises(ValueError, match=message):
        run_mode(mode, **settings)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_match_reference(no_tf32):
    check_against_reference("cuda:0", cuda_graphs=True)


@pytest.mark.gpu
@needs_cuda
@needs_two
def test_cuda_graphs_on_a_device_that_is_not_current(no_tf32):
    """Tensors on cuda:1 while cuda:0 is current, after a capture on cuda:0 in the same process (torch's
    default capture stream then lives on cuda:0)."""
    check_against_reference("cuda:0", cuda_graphs=True)
    with torch.cuda.device(0):
        check_against_reference("cuda:1", cuda_graphs=True)
        assert torch.cuda.current_device() == 0


@pytest.mark.gpu
@needs_cuda
def test_capture_that_records_nothing_is_an_error():
    """An iteration that runs while capturing instead of being recorded (here: its counter lives on the CPU)
    must raise, not leave a graph whose replays do nothing."""
    counter = torch.zeros((), dtype=torch.int64)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="1 iterations ran after the capture"):
        warnings.simplefilter("ignore")  # torch's own "the CUDA graph is empty" warning, if it gives one
        graphs._capture(lambda: counter.add_(1), counter, torch.cuda.Stream(), 0)
