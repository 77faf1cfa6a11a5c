"""The fast loop against the reference loop (algorithm §2) and the loops' contract with the caller."""

import pytest
import torch

import lst_fast
from lst_fast import reference

from helpers import SHARP, SHARPNESS, assert_same_result, colour_patches, run_both, tiny_cnn


@pytest.mark.parametrize("adv_step_size", [2e-3, None, 0.0])
def test_fast_matches_reference_with_rejections_and_invalid_rows(adv_step_size):
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(8), colour_patches(8, seed=1)
    with torch.no_grad():
        labels = model(srcs).argmax(1)
    labels[[2, 6]] = (labels[[2, 6]] + 1) % 5  # rows 2 and 6 are invalid: the model predicts another class
    ref, fast = run_both(model, srcs, tgts, labels, adv_step_size=adv_step_size, **SHARP)
    assert_same_result(ref, fast)
    assert ref.valid.tolist() == [True, True, False, True, True, True, False, True]
    assert (ref.accepted[ref.valid] < SHARP["iters"]).any(), "the test needs rejected steps"
    assert (ref.accepted[ref.valid] > 0).all()
    assert torch.equal(fast.images[~fast.valid], srcs[~fast.valid])  # invalid rows come back unchanged
    assert (fast.accepted[~fast.valid] == 0).all()


def test_fast_matches_reference_on_random_init_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).double().eval()
    srcs, tgts = colour_patches(4, size=32), colour_patches(4, size=32, seed=3)
    with torch.no_grad():
        labels = model(srcs).argmax(1)
    labels[1] = (labels[1] + 1) % 10
    ref, fast = run_both(model, srcs, tgts, labels, iters=8, step_size=0.2)
    assert_same_result(ref, fast)
    assert ref.valid.tolist() == [True, False, True, True]


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fold_batchnorm", [False, True])
@pytest.mark.parametrize("backend", ["torch", None])
def test_every_option_combination_matches_reference(memory_format, fold_batchnorm, backend):
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(4), colour_patches(4, seed=1)
    generator = torch.Generator().manual_seed(5)
    ref = reference.traverse_batch(model, srcs, tgts, generator=generator, **SHARP)
    fast = lst_fast.traverse_batch(
        model, srcs, tgts, generator=torch.Generator().manual_seed(5), memory_format=memory_format,
        fold_batchnorm=fold_batchnorm, backend=backend, **SHARP,
    )
    assert_same_result(ref, fast)


def test_recorded_path_matches_reference():
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(5), colour_patches(5, seed=1)
    labels = torch.tensor([1, 1, 0, 1, 1])  # row 2 invalid for this model (it predicts class 1)
    kwargs = dict(log_every=4, record=("conf", "images"), target_labels=[0, 1, 2, 3, 4], **SHARP)
    ref, fast = run_both(model, srcs, tgts, labels, **kwargs)
    assert_same_result(ref, fast)
    assert ref.path_iters.tolist() == list(range(0, SHARP["iters"], 4))
    n_logs = len(ref.path_iters)
    assert fast.path_conf.shape == fast.path_target_conf.shape == (5, n_logs)
    assert fast.path_images.shape == (5, n_logs, 3, 16, 16)
    torch.testing.assert_close(fast.path_conf, ref.path_conf, atol=1e-9, rtol=0, equal_nan=True)
    torch.testing.assert_close(fast.path_target_conf, ref.path_target_conf, atol=1e-9, rtol=0, equal_nan=True)
    torch.testing.assert_close(fast.path_images, ref.path_images, atol=1e-9, rtol=0)
    assert fast.path_conf[2].isnan().all() and not fast.path_conf[fast.valid].isnan().any()
    # The first record is the start point, whose source-class confidence we can compute independently.
    with torch.no_grad():
        start_conf = model(fast.path_images[:, 0]).softmax(1).gather(1, fast.labels[:, None]).squeeze(1)
    torch.testing.assert_close(fast.path_conf[fast.valid, 0], start_conf[fast.valid], atol=1e-12, rtol=0)


def test_start_point_is_the_specs_single_uniform_draw():
    """iters=0 returns x0 = clamp(src + init_noise * (U - 0.5), 0, 1) with U drawn once for the valid rows."""
    model = tiny_cnn()
    srcs = colour_patches(3)
    labels = torch.tensor([1, 0, 1])  # row 1 invalid
    generator = torch.Generator().manual_seed(9)
    result = lst_fast.traverse_batch(model, srcs, srcs, labels, iters=0, init_noise=0.1, generator=generator)
    noise = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    expected = (srcs[[0, 2]] + 0.1 * (noise - 0.5)).clamp(0, 1)
    assert result.valid.tolist() == [True, False, True]
    torch.testing.assert_close(result.images[[0, 2]], expected, atol=0, rtol=0)
    with torch.no_grad():
        conf = model(expected).softmax(1)[:, 1]
    torch.testing.assert_close(result.final_conf[[0, 2]], conf, atol=1e-12, rtol=0)


def test_global_rng_is_used_without_generator():
    model = tiny_cnn()
    srcs, tgts = colour_patches(2), colour_patches(2, seed=1)
    torch.manual_seed(123)
    first = lst_fast.traverse_batch(model, srcs, tgts, iters=3)
    torch.manual_seed(123)
    second = reference.traverse_batch(model, srcs, tgts, iters=3)
    torch.testing.assert_close(first.images, second.images, atol=1e-9, rtol=0)


def test_no_valid_rows_returns_sources():
    model = tiny_cnn()
    srcs = colour_patches(2)
    result = lst_fast.traverse_batch(model, srcs, srcs, labels=[0, 0], iters=5)  # the model predicts 1
    assert not result.valid.any()
    assert torch.equal(result.images, srcs)
    assert torch.equal(result.final_conf, result.init_conf)


def test_model_state_is_restored_and_untouched():
    model = tiny_cnn().train()
    model[0].weight.requires_grad_(False)  # a mix of flags must come back exactly
    flags = [p.requires_grad for p in model.parameters()]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    srcs, tgts = colour_patches(2), colour_patches(2, seed=1)
    with pytest.warns(UserWarning, match="train mode"):
        lst_fast.traverse_batch(model, srcs, tgts, iters=3, memory_format="channels_last")
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key  # running stats untouched: eval mode was used
        assert value.is_contiguous(), key  # the caller's weights keep their memory format


def test_train_mode_model_gives_eval_mode_results():
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(3), colour_patches(3, seed=1)
    expected = lst_fast.traverse_batch(model, srcs, tgts, generator=torch.Generator().manual_seed(0), **SHARP)
    with pytest.warns(UserWarning):
        got = lst_fast.traverse_batch(
            model.train(), srcs, tgts, generator=torch.Generator().manual_seed(0), **SHARP
        )
    torch.testing.assert_close(got.images, expected.images, atol=0, rtol=0)


def test_normalizer_is_applied_before_the_model():
    model = tiny_cnn()
    srcs, tgts = colour_patches(3), colour_patches(3, seed=1)
    normalizer = lst_fast.models.Normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.25)).double()
    wrapped = lst_fast.models.with_normalization(model, normalizer)
    ref = reference.traverse_batch(wrapped, srcs, tgts, iters=5, generator=torch.Generator().manual_seed(0))
    fast = lst_fast.traverse_batch(
        model, srcs, tgts, normalizer=normalizer, iters=5, generator=torch.Generator().manual_seed(0)
    )
    assert_same_result(ref, fast)


def test_progress_bar_runs(capsys):
    model = tiny_cnn()
    srcs = colour_patches(2)
    lst_fast.traverse_batch(model, srcs, srcs.flip(0), iters=2, progress=True)
    assert "LST" in capsys.readouterr().err


def test_offline_model_keeps_confidence_and_approaches_target(embedded_model, photos):
    """Algorithm §7 in miniature: the source class stays confident while the image moves to the target."""
    model, normalizer = embedded_model
    srcs, tgts = photos, photos.roll(1, 0)
    result = lst_fast.traverse_batch(
        model, srcs, tgts, normalizer=normalizer, iters=12, step_size=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.valid.all()
    assert result.labels.tolist() == [282, 967, 657, 450]  # tiger cat, espresso, missile, (astronaut)
    assert (result.init_conf - result.final_conf < 0.2).all()
    start = (srcs - tgts).flatten(1).norm(dim=1)
    end = (result.images - tgts).flatten(1).norm(dim=1)
    assert (end < 0.6 * start).all(), (end / start)
    assert (result.accepted > 6).all()


def test_offline_model_fast_path_agrees_with_reference_in_float32(embedded_model, photos):
    """In float32 the two loops agree up to float32 noise: on this model the float32 reference itself is
    ~4e-4 (images) and ~5e-4 (confidence) away from the float64 computation after 4 iterations, and
    batch-norm folding / channels_last only change rounding. Documented tolerance: 2e-3 and 5e-3."""
    model, normalizer = embedded_model
    srcs, tgts = photos, photos.roll(1, 0)
    ref, fast = run_both(model, srcs, tgts, normalizer=normalizer, iters=4, seed=0)
    assert torch.equal(ref.accepted, fast.accepted)
    torch.testing.assert_close(fast.images, ref.images, atol=2e-3, rtol=0)
    torch.testing.assert_close(fast.final_conf, ref.final_conf, atol=5e-3, rtol=0)


# --------------------------------------------------------------------------------------------------------
# Bad input: every case names the offending argument.


def good_args():
    return tiny_cnn(), colour_patches(2), colour_patches(2, seed=1)


@pytest.mark.parametrize("traverse", [lst_fast.traverse_batch, reference.traverse_batch])
@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(srcs=a["srcs"][:1]), ValueError, "tgts has shape"),
        (lambda a: a.update(srcs=a["srcs"].numpy()), TypeError, "srcs must be a torch.Tensor"),
        (lambda a: a.update(srcs=(a["srcs"] * 255).to(torch.uint8)), TypeError, "srcs must be a floating"),
        (lambda a: a.update(tgts=a["tgts"].float()), ValueError, "tgts is torch.float32"),
        (lambda a: a.update(srcs=a["srcs"][0]), ValueError, r"srcs must have shape \(B, C, H, W\)"),
        (lambda a: a.update(srcs=a["srcs"][:0], tgts=a["tgts"][:0]), ValueError, "srcs is an empty batch"),
        (lambda a: a["srcs"].__setitem__((0, 0, 0, 0), float("nan")), ValueError, "srcs contains NaN"),
        (lambda a: a["tgts"].__setitem__((0, 0, 0, 0), float("inf")), ValueError, "tgts contains NaN or inf"),
        (lambda a: a["srcs"].__setitem__((0, 0, 0, 0), 1.01), ValueError, r"srcs must have values in \[0, 1\]"),
        (lambda a: a["tgts"].__setitem__((0, 0, 0, 0), -0.5), ValueError, r"tgts must have values in \[0, 1\]"),
        (lambda a: a.update(labels=[0]), ValueError, r"labels must have shape \(2,\)"),
        (lambda a: a.update(labels=[0, 7]), ValueError, r"labels must be class indices in \[0, 5\)"),
        (lambda a: a.update(labels=[-1, 0]), ValueError, "labels must be class indices"),
        (lambda a: a.update(labels=torch.tensor([0.0, 1.0])), TypeError, "labels must hold integer"),
        (lambda a: a.update(target_labels=[0, 9]), ValueError, "target_labels must be class indices"),
        (lambda a: a.update(iters=-1), ValueError, "iters must be >= 0"),
        (lambda a: a.update(iters=2.5), TypeError, "iters must be an int"),
        (lambda a: a.update(step_size=0), ValueError, "step_size must be > 0"),
        (lambda a: a.update(step_size=-1e-2), ValueError, "step_size must be > 0"),
        (lambda a: a.update(pthresh=0), ValueError, "pthresh must be > 0"),
        (lambda a: a.update(adv_step_size=-1.0), ValueError, "adv_step_size must be >= 0"),
        (lambda a: a.update(init_noise=float("nan")), ValueError, "init_noise must be finite"),
        (lambda a: a.update(record=("conf",)), ValueError, "needs log_every > 0"),
        (lambda a: a.update(record=("bogus",), log_every=1), ValueError, "record may contain"),
        (lambda a: a.update(generator="seed"), TypeError, "generator must be a torch.Generator"),
        (lambda a: a.update(normalizer=3), TypeError, "normalizer must be callable"),
        (lambda a: a.update(model=lambda x: x), TypeError, "model must be a torch.nn.Module"),
        (lambda a: a.update(model=torch.nn.Conv2d(3, 2, 1).double().eval()), ValueError, "model must return logits"),
    ],
)
def test_bad_input_names_the_argument(traverse, change, error, match):
    model, srcs, tgts = good_args()
    args = dict(model=model, srcs=srcs, tgts=tgts, iters=2)
    change(args)
    with pytest.raises(error, match=match):
        traverse(**args)


def test_fast_only_options_are_checked():
    model, srcs, tgts = good_args()
    with pytest.raises(ValueError, match="memory_format must be"):
        lst_fast.traverse_batch(model, srcs, tgts, memory_format="nhwc")
    with pytest.raises(ValueError, match="backend must be one of"):
        lst_fast.traverse_batch(model, srcs, tgts, backend="cuda")
    with pytest.raises(TypeError, match="fold_batchnorm must be a bool"):
        lst_fast.traverse_batch(model, srcs, tgts, fold_batchnorm="yes")


def test_values_within_rounding_tolerance_are_accepted():
    model, srcs, tgts = good_args()
    srcs[0, 0, 0, 0] = 1 + 1e-7
    result = lst_fast.traverse_batch(model, srcs, tgts, iters=1)
    assert result.images.max() <= 1
