"""The fast path's tuning options (issue 6): each combination that runs on CPU against the reference."""

import pytest
import torch

import lst_fast
from lst_fast import fast, model_runner, reference, traversal
from lst_fast.classifier import input_grad_loss, model_guard
from lst_fast.settings import check_settings

from helpers import SHARP, SHARPNESS, assert_same_result, colour_patches, tiny_cnn


def run_static_body(model, srcs, tgts, labels, seed, **kwargs):
    """The CUDA-graph loop's iteration run eagerly (static buffers, no capture), as a TraversalResult."""
    settings = check_settings(
        step_size=kwargs["step_size"], iters=kwargs["iters"], pthresh=kwargs["pthresh"],
        adv_step_size=kwargs.get("adv_step_size", 2e-3), init_noise=4 / 255,
        log_every=kwargs.get("log_every", 0), record=kwargs.get("record", ()),
    )
    generator = torch.Generator().manual_seed(seed)
    with model_guard(model):
        problem = traversal.prepare(model, srcs, tgts, labels, None, None, settings, generator)
        return fast.run_schedule(problem, problem.forward, settings, torch.channels_last, "cpp", mode="static")


@pytest.mark.parametrize("adv_step_size", [2e-3, None])
def test_cuda_graph_iteration_matches_reference(adv_step_size):
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(8), colour_patches(8, seed=1)
    with torch.no_grad():
        labels = model(srcs).argmax(1)
    labels[2] = (labels[2] + 1) % 5
    kwargs = dict(adv_step_size=adv_step_size, log_every=7, record=("conf", "images"), **SHARP)
    ref = reference.traverse_batch(model, srcs, tgts, labels, generator=torch.Generator().manual_seed(3), **kwargs)
    static = run_static_body(model, srcs, tgts, labels, seed=3, **kwargs)
    assert_same_result(ref, static)
    assert (ref.accepted[ref.valid] < SHARP["iters"]).any(), "the test needs rejected steps"
    torch.testing.assert_close(static.path_conf, ref.path_conf, atol=1e-9, rtol=0, equal_nan=True)
    torch.testing.assert_close(static.path_images, ref.path_images, atol=1e-9, rtol=0)


def test_float32_fast_path_is_as_close_to_exact_as_the_float32_reference():
    """Float32 noise, made precise: the fast path's distance from the float64 computation is of the same
    order as the float32 reference's own (init_noise=0 so that both precisions start at the same point)."""
    model64 = tiny_cnn(scale=SHARPNESS)
    model32 = tiny_cnn(scale=SHARPNESS).float()
    srcs, tgts = colour_patches(6), colour_patches(6, seed=1)
    kwargs = dict(iters=12, step_size=0.2, pthresh=0.05, init_noise=0.0)
    exact = reference.traverse_batch(model64, srcs, tgts, **kwargs)
    ref32 = reference.traverse_batch(model32, srcs.float(), tgts.float(), **kwargs)
    fast32 = lst_fast.traverse_batch(model32, srcs.float(), tgts.float(), **kwargs)
    assert torch.equal(fast32.accepted, exact.accepted) and torch.equal(ref32.accepted, exact.accepted)
    ref_error = (ref32.images.double() - exact.images).abs().max().item()
    fast_error = (fast32.images.double() - exact.images).abs().max().item()
    assert fast_error <= 4 * ref_error + 1e-6, (fast_error, ref_error)


def test_bf16_stays_within_documented_tolerance(embedded_model, photos):
    """Autocast changes the gradient (bf16 has 8 bits of mantissa), so results drift from the float32
    reference. Documented tolerance after 4 iterations at the paper's settings on the offline model:
    images within 0.02 (L-inf), source-class confidence within 0.05; every step still respects pthresh."""
    model, normalizer = embedded_model
    srcs, tgts = photos[:2], photos[2:]
    ref = reference.traverse_batch(
        model, srcs, tgts, normalizer=normalizer, iters=4, generator=torch.Generator().manual_seed(0)
    )
    got = lst_fast.traverse_batch(
        model, srcs, tgts, normalizer=normalizer, iters=4, precision="bf16",
        generator=torch.Generator().manual_seed(0),
    )
    assert got.images.dtype == torch.float32
    torch.testing.assert_close(got.images, ref.images, atol=0.02, rtol=0)
    torch.testing.assert_close(got.final_conf, ref.final_conf, atol=0.05, rtol=0)
    assert (got.init_conf - got.final_conf < 0.2).all()


def test_fp16_runs_the_model_in_half_precision():
    """fp16 autocast on CPU is slow (no fast kernels) but must work; checked on a small float32 CNN."""
    model = tiny_cnn().float()
    srcs, tgts = colour_patches(4).float(), colour_patches(4, seed=1).float()
    seen = []
    hook = model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    kwargs = dict(iters=5, step_size=0.1, generator=None)
    torch.manual_seed(0)
    ref = reference.traverse_batch(model, srcs, tgts, **kwargs)
    seen.clear()
    torch.manual_seed(0)
    got = lst_fast.traverse_batch(model, srcs, tgts, precision="fp16", fold_batchnorm=False, **kwargs)
    hook.remove()
    assert torch.float16 in seen
    torch.testing.assert_close(got.images, ref.images, atol=5e-3, rtol=0)
    assert (got.init_conf - got.final_conf < 0.2).all()


def confident_linear_model(gap: float = 30.0) -> torch.nn.Module:
    """A linear classifier whose class 0 leads by ``gap`` logits: the other probabilities are ~exp(-gap)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():
        model[1].weight.mul_(0.1)
        model[1].bias.copy_(torch.tensor([gap, 0.0, 0.0]))
    return model.eval()


def test_fp16_loss_scaling_keeps_a_gradient_that_underflows_without_it():
    """A confident row's loss gradient (~exp(-30) = 1e-13) is below float16's smallest value (6e-8): an
    unscaled fp16 backward returns exactly zero; the scaled one returns the gradient the float32 loop uses."""
    model = confident_linear_model()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, dtype=torch.int64)
    leaf = x.clone().requires_grad_(True)
    fp32 = torch.autograd.grad(input_grad_loss(model(leaf), labels), leaf)[0]
    assert fp32.abs().max() > 0
    assert torch.equal(model_runner.input_grad(model(leaf), labels, leaf), fp32), "float32 logits: the plain gradient"

    def fp16_logits(leaf):
        with torch.autocast("cpu", dtype=torch.float16):
            return model(leaf)

    unscaled = torch.autograd.grad(input_grad_loss(fp16_logits(leaf), labels), leaf)[0]
    assert torch.count_nonzero(unscaled) == 0, "the test needs a gradient that underflows in float16"
    scaled = model_runner.input_grad(fp16_logits(leaf), labels, leaf)
    assert scaled.dtype == torch.float32
    # float16 logits (resolution 2^-6 at 30) perturb exp(-30) by up to ~1%; the weights' rounding adds less.
    error = (scaled - fp32).flatten(1).norm(dim=1) / fp32.flatten(1).norm(dim=1)
    assert (error < 0.05).all(), error


def test_fp16_traversal_of_a_confident_model_follows_the_float32_path():
    """With the gradient lost, v_perp would be v and the path the straight line; with loss scaling the fp16
    path is the float32 one up to float16 rounding of the model."""
    model = confident_linear_model()
    srcs, tgts = colour_patches(4, size=8).float(), colour_patches(4, size=8, seed=1).float()
    kwargs = dict(iters=6, step_size=0.2, init_noise=0.0, fold_batchnorm=False)
    fp32 = lst_fast.traverse_batch(model, srcs, tgts, **kwargs)
    fp16 = lst_fast.traverse_batch(model, srcs, tgts, precision="fp16", **kwargs)
    straight = srcs.clone()
    for _ in range(kwargs["iters"]):  # the path a zero gradient gives (the correction is ~1e-16 here)
        straight = (straight + kwargs["step_size"] * (tgts - straight)).clamp(0, 1)
    assert (fp32.images - straight).abs().max() > 5e-3, "the projection must matter for this test"
    torch.testing.assert_close(fp16.images, fp32.images, atol=5e-4, rtol=0)  # measured: 1.1e-5
    assert torch.equal(fp16.accepted, fp32.accepted)


@pytest.mark.parametrize("rows_per_call", [1, 3, None])
def test_rows_per_call_splits_model_calls_without_changing_results(rows_per_call):
    model = tiny_cnn(scale=SHARPNESS)
    call_sizes = []  # the hook function is shared by the fast path's private copy of the model
    model.register_forward_pre_hook(lambda module, args: call_sizes.append(len(args[0])))
    srcs, tgts = colour_patches(8), colour_patches(8, seed=1)
    ref = reference.traverse_batch(model, srcs, tgts, generator=torch.Generator().manual_seed(1), **SHARP)
    call_sizes.clear()
    fast = lst_fast.traverse_batch(
        model, srcs, tgts, generator=torch.Generator().manual_seed(1), rows_per_call=rows_per_call, **SHARP
    )
    assert_same_result(ref, fast)
    assert (ref.accepted < SHARP["iters"]).any(), "the test needs rejected steps"
    expected = {1: {1}, 3: {3, 2}, None: {8}}[rows_per_call]
    assert set(call_sizes[-SHARP["iters"]:]) == expected  # the loop's last calls (set-up calls come first)


def test_rows_per_call_default_depends_on_device_and_image_size():
    assert model_runner.default_rows_per_call(torch.zeros(2, 3, 224, 224), convolutional=True) == 4
    assert model_runner.default_rows_per_call(torch.zeros(2, 3, 32, 32), convolutional=True) == 196
    assert model_runner.default_rows_per_call(torch.zeros(2, 3, 224, 224), convolutional=False) is None  # ViTs
    assert model_runner.default_rows_per_call(torch.zeros(2, 3, 224, 224, device="meta"), convolutional=True) is None
    assert [(s.start, s.stop) for s in model_runner.row_slices(6, 4)] == [(0, 3), (3, 6)]  # even calls, not 4 + 2
    assert [(s.start, s.stop) for s in model_runner.row_slices(8, 3)] == [(0, 2), (2, 5), (5, 8)]
    assert model_runner.row_slices(5, None) == [slice(0, 5)] and model_runner.row_slices(5, 9) == [slice(0, 5)]
    with pytest.raises(ValueError, match="rows_per_call must be >= 1"):
        model_runner.row_slices(4, 0)
    with pytest.raises(TypeError, match="rows must be an int"):
        model_runner.row_slices(4.0, 2)
    with pytest.raises(TypeError, match="x must be a batch tensor"):
        model_runner.default_rows_per_call([1, 2], convolutional=True)
    assert model_runner.is_convolutional(tiny_cnn()) and not model_runner.is_convolutional(torch.nn.Conv2d(3, 3, 1))
    for bad in (0, -2, 2.0, True, "all"):
        with pytest.raises(ValueError, match="rows_per_call must be"):
            lst_fast.traverse_batch(tiny_cnn(), colour_patches(2), colour_patches(2), rows_per_call=bad)


def test_options_the_device_cannot_do_fail_cleanly():
    model = tiny_cnn()
    srcs = colour_patches(2)
    with pytest.raises(ValueError, match="cuda_graphs=True needs CUDA tensors"):
        lst_fast.traverse_batch(model, srcs, srcs, cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        lst_fast.traverse_batch(model, srcs, srcs, cuda_graphs=1)
    with pytest.raises(ValueError, match="precision must be one of"):
        lst_fast.traverse_batch(model, srcs, srcs, precision="int8")
