"""Batch-norm folding (lst_fast.fusion) and the cached, tuned model copy (lst_fast.model_runner)."""

import pytest
import torch
from torch import nn

import lst_fast
from lst_fast import model_runner
from lst_fast.fusion import fold_batchnorm

from helpers import tiny_cnn


def test_folding_removes_batch_norms_and_keeps_the_function():
    model = tiny_cnn()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    folded, count = fold_batchnorm(model, x[:1])
    assert count == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-12, rtol=0)


def test_input_gradient_is_unchanged_by_folding():
    model = tiny_cnn()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    folded, _ = fold_batchnorm(model, x[:1].detach())
    grads = [torch.autograd.grad(m(x).logsumexp(1).sum(), x)[0] for m in (model, folded)]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)


def test_timm_batchnorm_act_keeps_its_activation():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 64, 64)
    folded, count = fold_batchnorm(model, x[:1])
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count == bns > 40
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


class ReusesConvOutput(nn.Module):
    """bn(conv(x)) + conv(x): folding bn into conv would change the second term."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        with torch.no_grad():
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(2.0)

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.bn(y) + y)


def test_fast_loop_falls_back_when_the_folded_copy_disagrees():
    model = ReusesConvOutput().double().eval()
    srcs = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    tgts = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="disagrees with the original"):
        got = lst_fast.traverse_batch(model, srcs, tgts, iters=3, generator=torch.Generator().manual_seed(0))
    expected = lst_fast.reference.traverse_batch(model, srcs, tgts, iters=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.images, expected.images, atol=1e-12, rtol=0)


def test_tuned_copy_is_cached_until_the_weights_change():
    model = tiny_cnn()
    srcs = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    lst_fast.traverse_batch(model, srcs, srcs.flip(0), iters=1)
    key = (torch.channels_last, True, torch.float64, srcs.device)
    first = model_runner._cache.get(model, key)
    assert first is not None and first is not model
    lst_fast.traverse_batch(model, srcs, srcs.flip(0), iters=1)
    assert model_runner._cache.get(model, key) is first
    with torch.no_grad():
        model[0].weight.add_(0.1)  # an in-place change of the caller's weights invalidates the copy
    assert model_runner._cache.get(model, key) is None
    result = lst_fast.traverse_batch(model, srcs, srcs.flip(0), iters=2, generator=torch.Generator().manual_seed(0))
    expected = lst_fast.reference.traverse_batch(
        model, srcs, srcs.flip(0), iters=2, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(result.images, expected.images, atol=1e-12, rtol=0)


def test_auto_memory_format_follows_the_architecture():
    assert model_runner.resolve_memory_format("auto", tiny_cnn()) == torch.channels_last
    single_conv = nn.Sequential(nn.Conv2d(3, 4, 16, stride=16), nn.Flatten(), nn.LazyLinear(3))
    assert model_runner.resolve_memory_format("auto", single_conv) == torch.contiguous_format
