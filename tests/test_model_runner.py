"""The model runner (lst_fast.model_runner): its options' checks, ``evaluate`` and ``confidences`` against plain
autograd and softmax on the caller's model, the lazily built tuned copy and the eval-mode guard."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lst_fast import model_runner
from lst_fast.classifier import model_guard
from lst_fast.model_runner import DEFAULT_BATCH_SIZE, ModelRunner, RunnerOptions, guarded_runner

from helpers import colour_patches, tiny_cnn


def plain_softmax_and_grad(model, x, labels):
    """The spec's quantities on the caller's model itself: softmax and the summed cross-entropy's input gradient."""
    x_in = x.detach().clone().requires_grad_(True)
    logits = model(x_in)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x_in)
    return logits.detach().softmax(1), grad


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("normalizer", 3, TypeError, "normalizer must be callable"),
        ("memory_format", "nhwc", ValueError, "memory_format must be 'auto' or one of"),
        ("fold_batchnorm", "yes", TypeError, "fold_batchnorm must be a bool"),
        ("precision", "int8", ValueError, "precision must be one of"),
        ("rows_per_call", 0, ValueError, "rows_per_call must be 'auto', None or a positive int"),
        ("rows_per_call", 2.0, ValueError, "rows_per_call must be"),
        ("rows_per_call", True, ValueError, "rows_per_call must be"),
        ("rows_per_call", "all", ValueError, "rows_per_call must be"),
    ],
)
def test_options_name_the_bad_field(field, value, error, match):
    with pytest.raises(error, match=match):
        RunnerOptions(**{field: value})


def test_options_are_frozen_and_the_runner_wants_them():
    options = RunnerOptions(rows_per_call=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rows_per_call = 4
    with pytest.raises(TypeError, match="options must be a RunnerOptions"):
        ModelRunner(tiny_cnn(), {"rows_per_call": 3}, colour_patches(2))


@pytest.mark.parametrize("rows_per_call", [1, 3, None])
def test_evaluate_is_the_softmax_and_input_gradient_of_the_model(rows_per_call):
    model = tiny_cnn()
    x, labels = colour_patches(7), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    expected_probs, expected_grad = plain_softmax_and_grad(model, x, labels)
    call_sizes = []
    model.register_forward_pre_hook(lambda module, args: call_sizes.append(len(args[0])))  # shared by the copy
    with model_guard(model):
        runner = ModelRunner(model, RunnerOptions(rows_per_call=rows_per_call), x)
        assert runner.layout == torch.channels_last and runner.module is not model  # folded, channels_last
        x_in = x.contiguous(memory_format=runner.layout)
        call_sizes.clear()
        probs, grad = runner.evaluate(x_in, labels, need_grad=True)
        assert set(call_sizes) == {1: {1}, 3: {2, 3}, None: {7}}[rows_per_call]
        no_grad_probs, no_grad = runner.evaluate(x_in, labels, need_grad=False)
    torch.testing.assert_close(probs, expected_probs, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)
    assert grad.stride() == x_in.stride()  # the fused step needs the iterate's layout
    assert no_grad is None
    torch.testing.assert_close(no_grad_probs, expected_probs, atol=1e-12, rtol=0)


def test_evaluate_applies_the_normalizer_and_precision():
    model = tiny_cnn().float()
    x, labels = colour_patches(4).float(), torch.tensor([0, 1, 2, 3])
    normalizer = lambda images: (images - 0.5) / 0.25  # noqa: E731
    options = RunnerOptions(normalizer=normalizer, memory_format="contiguous", fold_batchnorm=False, precision="bf16")
    with model_guard(model):
        runner = ModelRunner(model, options, x)
        assert runner.module is model  # contiguous and unfolded: nothing to tune
        probs, grad = runner.evaluate(x, labels, need_grad=True)
        x_in = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the model under autocast, the loss outside it
            logits = model(normalizer(x_in))
        (expected_grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x_in)
    assert logits.dtype == torch.bfloat16 and probs.dtype == torch.float32
    torch.testing.assert_close(probs, logits.detach().float().softmax(1), atol=0, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=0, rtol=0)
    _, fp32_grad = plain_softmax_and_grad(lambda images: model(normalizer(images)), x, labels)
    assert not torch.equal(grad, fp32_grad)  # bf16 really ran


def test_confidences_are_the_source_class_softmax_over_blocks():
    model = tiny_cnn()
    blocks = [(colour_patches(n, seed=n), torch.arange(n) % 5) for n in (3, 1, 6, 2)]
    call_sizes = []
    model.register_forward_pre_hook(lambda module, args: call_sizes.append(len(args[0])))
    with guarded_runner(model, RunnerOptions(rows_per_call=4), blocks[0][0]) as runner:
        assert runner.batch_size == 4 and runner.module is not model  # the copy is made (checked on examples)
        call_sizes.clear()
        got = runner.confidences(iter(blocks))
    assert call_sizes == [4, 4, 4]  # 12 points in calls of 4 that span the blocks
    assert [len(c) for c in got] == [3, 1, 6, 2]
    for conf, (points, labels) in zip(got, blocks):
        with torch.no_grad():
            expected = model(points).softmax(1).gather(1, labels.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(conf, expected, atol=1e-12, rtol=0)


def test_batch_size_follows_rows_per_call():
    model, x = tiny_cnn(), colour_patches(2)  # 3x16x16 images: four 224x224 images' worth is 784 of them
    sizes = {rows: ModelRunner(model, RunnerOptions(rows_per_call=rows), x) for rows in ("auto", None, 5)}
    assert (sizes["auto"].rows_per_call, sizes["auto"].batch_size) == (784, 784)
    assert (sizes[None].rows_per_call, sizes[None].batch_size) == (None, DEFAULT_BATCH_SIZE)
    assert (sizes[5].rows_per_call, sizes[5].batch_size) == (5, 5)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5)).double()
    assert ModelRunner(linear, RunnerOptions(), x).rows_per_call is None  # not convolutional: one call


def test_the_tuned_copy_is_made_on_first_use_only():
    model, x = tiny_cnn(), colour_patches(3)
    key = (torch.channels_last, True, x.dtype, x.device)
    with model_guard(model):
        runner = ModelRunner(model, RunnerOptions(), x)
        assert model_runner._cache.get(model, key) is None  # a batch without valid rows never needs the copy
        runner.evaluate(x.contiguous(memory_format=runner.layout), torch.zeros(3, dtype=torch.long), need_grad=False)
        assert model_runner._cache.get(model, key) is runner.module
        again = ModelRunner(model, RunnerOptions(), x)
        assert again.module is runner.module  # cached per model


def test_guarded_runner_restores_the_callers_model():
    model = tiny_cnn().train()
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="model is in train mode"):
        with guarded_runner(model, RunnerOptions(), colour_patches(2)) as runner:
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            runner.confidences([(colour_patches(2), torch.tensor([0, 1]))])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with guarded_runner(lambda images: images, RunnerOptions(), colour_patches(2)):
            pass
