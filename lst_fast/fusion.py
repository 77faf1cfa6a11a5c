"""Folding eval-mode batch norm into the convolution before it, for a faster forward+backward.

In eval mode ``bn(conv(x))`` is an affine map per channel of the convolution's output, so it can be folded
into the convolution's weights and bias. The gradient with respect to the input is mathematically the
same; only float rounding differs (~1e-6 relative in float32). On the offline EfficientNet-Lite0 this
removes about a third of a CPU forward+backward.

Which batch norm follows which convolution is found by running the model once with hooks (a batch norm
whose input tensor *is* a convolution's output), so no graph tracing is needed. The folded copy is then
checked against the original on real inputs and discarded if the two disagree (for example if the
convolution's raw output was also used elsewhere).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Batch-norm classes whose forward is "normalise, then these submodules": folding keeps the submodules.
_NORM_ACT_TAILS = {"BatchNormAct2d": ("drop", "act")}


def _replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What a folded batch norm becomes, or None if its forward is not known to be plain batch norm."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    tail = _NORM_ACT_TAILS.get(type(bn).__name__)
    if tail and all(hasattr(bn, name) for name in tail):
        return nn.Sequential(*(getattr(bn, name) for name in tail))
    return None


def _foldable(bn: nn.Module) -> bool:
    return (
        isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and _replacement(bn) is not None
    )


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs where bn's input is conv's output, each module called exactly once."""
    produced_by: dict[int, nn.Conv2d] = {}
    calls: dict[int, int] = {}
    pairs = []

    def on_conv(module, inputs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        produced_by[id(output)] = module

    def on_bn(module, inputs, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        conv = produced_by.get(id(inputs[0]))
        if conv is not None:
            pairs.append((conv, module))

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(on_conv))
        elif _foldable(module):
            hooks.append(module.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    convs_used = [id(conv) for conv, _ in pairs]
    return [
        (conv, bn)
        for conv, bn in pairs
        if calls[id(conv)] == 1 and calls[id(bn)] == 1 and convs_used.count(id(conv)) == 1
    ]


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + shift).to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with batch norms folded into their convolutions, and how many were
    folded. ``example`` is one model input used to find the pairs. The original model is not touched."""
    folded = copy.deepcopy(model).eval()
    pairs = _conv_bn_pairs(folded, example)
    replacements = {id(bn): _replacement(bn) for _, bn in pairs}
    for conv, bn in pairs:
        _fold_pair(conv, bn)
    for parent in folded.modules():
        for name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, name, replacements[id(child)])
    return folded, len(pairs)
