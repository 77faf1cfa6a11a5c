"""The schedules (lst_fast.schedules): the registry and its queries, each schedule's bookkeeping by hand, and the
adaptive schedule (``schedule="adaptive"``) end to end: paper-equivalence, the shrinking batch against the
reference loop's masked twin, the acceptance rule, the per-row counts, the per-row step of the PyTorch twin, bad
knobs."""

import dataclasses

import pytest
import torch

import lst_fast
from lst_fast import ops, reference, schedules
from lst_fast.settings import SWEEP_SETTINGS, TraversalSettings

from helpers import SHARP, SHARPNESS, assert_same_result, colour_patches, tiny_cnn

# A sharp model, a tight threshold and big steps: candidates get rejected and rows finish at different times.
SHARP_MODEL_SCALE = 10.0
ADAPTIVE = dict(iters=40, pthresh=1e-3, step_size=0.05, max_step_scale=4.0, schedule="adaptive")


def test_the_registry_says_what_each_schedule_supports():
    assert schedules.schedule_names() == ("paper", "adaptive")
    assert schedules.schedule_names(records=True) == schedules.schedule_names(fixed_shapes=True) == ("paper",)
    assert schedules.schedule_names(records=False, fixed_shapes=False) == ("adaptive",)
    assert schedules.schedule_named("adaptive") is schedules.AdaptiveSchedule
    assert TraversalSettings().schedule == "paper"  # the first registered schedule is the default
    with pytest.raises(ValueError, match=r"schedule must be one of \['paper', 'adaptive'\], got 'fast'"):
        schedules.schedule_named("fast")


def test_every_knob_is_a_swept_setting_of_one_schedule():
    swept = {f.name for f in SWEEP_SETTINGS}
    knobs = [knob for schedule in schedules.REGISTRY.values() for knob in schedule.knobs]
    assert knobs == ["step_growth", "step_shrink", "max_step_scale"]
    assert set(knobs) <= swept and len(set(knobs)) == len(knobs)
    assert [schedules.knob_owner(k) for k in knobs] == ["adaptive"] * 3
    shared = [f.name for f in dataclasses.fields(TraversalSettings) if schedules.knob_owner(f.name) is None]
    assert "iters" in shared and "step_size" in shared and "schedule" in shared


@pytest.mark.parametrize("name", schedules.schedule_names(records=False))
def test_recording_is_refused_for_every_schedule_that_cannot_record(name):
    with pytest.raises(ValueError, match=f"not available with schedule='{name}'.*with schedule='paper'"):
        TraversalSettings(schedule=name, record=("images",), log_every=2)


def test_the_paper_schedule_by_hand():
    paper = schedules.PaperSchedule(TraversalSettings(iters=3, step_size=0.25), 2, torch.device("cpu"))
    assert paper.step_scale() == 1.0
    assert [paper.needs_gradient(it) for it in range(3)] == [True, True, False]  # the last candidate: conf only
    assert paper.update(torch.tensor([True, False])) is None  # no row finishes before the budget
    assert torch.equal(paper.last_step_sizes(), torch.tensor([0.25, 0.25], dtype=torch.float64))


def test_the_adaptive_schedule_by_hand():
    """Scales start at 1, grow by 2 up to 3 on accept, halve down to 1 on reject; finished at 3 steps' worth."""
    settings = TraversalSettings(iters=3, step_size=0.1, step_growth=2.0, step_shrink=0.5, max_step_scale=3.0)
    adaptive = schedules.AdaptiveSchedule(settings, 3, torch.device("cpu"))
    assert adaptive.step_scale().tolist() == [1.0, 1.0, 1.0]
    assert adaptive.last_step_sizes().tolist() == [0.0, 0.0, 0.0]  # no candidate yet
    assert adaptive.needs_gradient(0)
    assert adaptive.update(torch.tensor([True, False, True])).tolist() == [False, False, False]
    assert adaptive.step_scale().tolist() == [2.0, 1.0, 2.0]  # progress 1, 0, 1
    assert adaptive.last_step_sizes().tolist() == [0.1, 0.1, 0.1]
    assert adaptive.update(torch.tensor([True, True, False])).tolist() == [True, False, False]  # progress 3, 1, 1
    assert adaptive.step_scale().tolist() == [3.0, 2.0, 1.0]  # 4 capped at 3; 2 halved to 1
    assert adaptive.last_step_sizes().tolist() == [0.2, 0.1, 0.2]
    adaptive.keep(torch.tensor([1, 2]))
    assert adaptive.step_scale().tolist() == [2.0, 1.0] and adaptive.last_step_sizes().tolist() == [0.1, 0.2]
    assert adaptive.needs_gradient(1)  # progress + scale: 3 and 2, not every row would finish
    assert not adaptive.needs_gradient(2)  # the budget's last candidate
    adaptive.keep(torch.tensor([0]))
    assert not adaptive.needs_gradient(1)  # progress 1 + scale 2: an accepted candidate finishes the row


def pairs(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64))


def run(traverse, model, srcs, tgts, **kwargs):
    return traverse(model, srcs, tgts, generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("traverse", [lst_fast.traverse_batch, reference.traverse_batch], ids=["fast", "reference"])
def test_growth_and_shrink_of_one_is_the_paper_loop_exactly(traverse):
    model, images = tiny_cnn(scale=SHARPNESS), colour_patches(6)
    srcs, tgts, common = images, images.roll(1, 0), SHARP
    paper = run(traverse, model, srcs, tgts, **common)
    adaptive = run(traverse, model, srcs, tgts, schedule="adaptive", step_growth=1.0, step_shrink=1.0, **common)
    assert (paper.accepted < common["iters"]).any(), "the test needs rejected candidates"
    for field in ("images", "final_conf", "accepted", "evaluations", "final_step_size"):
        assert torch.equal(getattr(adaptive, field), getattr(paper, field)), field
    assert (paper.evaluations == common["iters"] + 1).all()
    assert (paper.final_step_size == common["step_size"]).all()


def test_the_shrinking_batch_gives_the_rows_of_the_unshrunk_reference():
    """The fast loop removes finished rows from its buffers; the reference keeps every row and masks."""
    model, (srcs, tgts) = tiny_cnn(scale=SHARP_MODEL_SCALE), pairs()
    fast = run(lst_fast.traverse_batch, model, srcs, tgts, **ADAPTIVE)
    ref = run(reference.traverse_batch, model, srcs, tgts, **ADAPTIVE)
    assert len(set(fast.evaluations.tolist())) > 1, "the test needs rows that finish at different times"
    assert (fast.accepted < fast.evaluations - 1).any(), "the test needs rejected candidates"
    assert_same_result(ref, fast, atol=1e-12)
    assert torch.equal(fast.evaluations, ref.evaluations)
    torch.testing.assert_close(fast.final_step_size, ref.final_step_size, atol=0, rtol=1e-15)


def test_the_adaptive_schedule_steps_on_the_chosen_backend(monkeypatch):
    """Rows with different step scales still go through the caller's kernel (one call per step, per-row sizes),
    never the PyTorch twin behind its back; the result equals the reference's."""
    model, (srcs, tgts) = tiny_cnn(scale=SHARP_MODEL_SCALE), pairs()
    ref = run(reference.traverse_batch, model, srcs, tgts, **ADAPTIVE)
    backends, step = [], ops.lst_step_
    monkeypatch.setattr(ops, "lst_step_torch_", lambda *a, **k: pytest.fail("the twin ran in place of cpp"))
    monkeypatch.setattr(ops, "lst_step_", lambda *a, backend=None, **k: backends.append(backend) or step(
        *a, backend=backend, **k))
    fast = run(lst_fast.traverse_batch, model, srcs, tgts, backend="cpp", **ADAPTIVE)
    assert len(set(fast.evaluations.tolist())) > 1, "the test needs rows with different scales"
    assert backends and set(backends) == {"cpp"}
    assert_same_result(ref, fast, atol=1e-12)


def test_each_row_is_its_own_traversal():
    """Without start-point noise a row gives the same result alone as in a batch whose other rows finish earlier
    or later (the batch shrinks around it)."""
    model, (srcs, tgts) = tiny_cnn(scale=SHARP_MODEL_SCALE), pairs()
    batch = run(lst_fast.traverse_batch, model, srcs, tgts, init_noise=0.0, **ADAPTIVE)
    assert len(set(batch.evaluations.tolist())) > 1
    for i in range(len(srcs)):
        alone = run(lst_fast.traverse_batch, model, srcs[i:i + 1], tgts[i:i + 1], init_noise=0.0, **ADAPTIVE)
        torch.testing.assert_close(alone.images[0], batch.images[i], atol=1e-12, rtol=0)
        assert alone.evaluations[0] == batch.evaluations[i] and alone.accepted[0] == batch.accepted[i]


def test_every_output_satisfies_the_acceptance_rule_and_counts_add_up():
    model, (srcs, tgts) = tiny_cnn(scale=SHARP_MODEL_SCALE), pairs()
    result = run(lst_fast.traverse_batch, model, srcs, tgts, **ADAPTIVE)
    with torch.no_grad():
        conf = model(result.images).softmax(1).gather(1, result.labels[:, None])[:, 0]
    moved = result.accepted > 0
    assert moved.all()
    assert (result.init_conf - conf < ADAPTIVE["pthresh"])[moved].all()  # the outputs are accepted candidates
    torch.testing.assert_close(conf, result.final_conf, atol=1e-12, rtol=0)
    assert (result.evaluations <= ADAPTIVE["iters"] + 1).all()  # iters is the budget of candidates
    assert (result.evaluations < ADAPTIVE["iters"] + 1).any()  # ... and the adaptive schedule stops earlier
    largest = ADAPTIVE["step_size"] * ADAPTIVE["max_step_scale"]
    assert ((result.final_step_size >= ADAPTIVE["step_size"]) & (result.final_step_size <= largest)).all()


def test_invalid_rows_report_no_evaluations():
    model, (srcs, tgts) = tiny_cnn(scale=SHARP_MODEL_SCALE), pairs()
    labels = model(srcs).argmax(1)
    labels[2] = (labels[2] + 1) % 5
    result = run(lst_fast.traverse_batch, model, srcs, tgts, labels=labels, **ADAPTIVE)
    assert not result.valid[2] and result.evaluations[2] == 0 and result.final_step_size[2] == 0
    assert torch.equal(result.images[2], srcs[2])


def test_the_twin_takes_per_row_step_sizes():
    """Per-row step sizes in the PyTorch twin equal one call per row with that row's floats."""
    g = torch.Generator().manual_seed(3)
    x, grad, tgt, delta = (torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(4))
    delta = (delta - 0.5) * 1e-2
    step = torch.tensor([0.01, 0.02, 0.05, 0.1], dtype=torch.float64)
    adv = step / 5
    out, new_delta = torch.empty_like(x), delta.clone()
    ops.lst_step_torch_(x, grad, tgt, new_delta, out, step_size=step, adv_step_size=adv)
    for i in range(4):
        row_out, row_delta = torch.empty_like(x[i:i + 1]), delta[i:i + 1].clone()
        ops.lst_step_torch_(x[i:i + 1], grad[i:i + 1], tgt[i:i + 1], row_delta, row_out,
                            step_size=step[i].item(), adv_step_size=adv[i].item())
        torch.testing.assert_close(out[i:i + 1], row_out, atol=1e-15, rtol=0)
        torch.testing.assert_close(new_delta[i:i + 1], row_delta, atol=1e-15, rtol=0)


def test_the_twin_refuses_per_row_step_sizes_of_another_length():
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    out, delta = torch.empty_like(x), torch.zeros_like(x)
    with pytest.raises(ValueError, match=r"step_size must be a float or a \(3,\) tensor of per-row values"):
        ops.lst_step_torch_(x, x, x, delta, out, step_size=torch.ones(2), adv_step_size=0.01)
    with pytest.raises(ValueError, match=r"adv_step_size must be a float or a \(3,\) tensor"):
        ops.lst_step_torch_(x, x, x, delta, out, step_size=0.01, adv_step_size=torch.ones(3, 1))


@pytest.mark.parametrize("settings, error, message", [
    (dict(schedule="fast"), ValueError, r"schedule must be one of \['paper', 'adaptive'\], got 'fast'"),
    (dict(step_growth=0.9), ValueError, "step_growth must be >= 1"),
    (dict(step_growth="2"), TypeError, "step_growth must be a real number"),
    (dict(step_shrink=0), ValueError, "step_shrink must be > 0"),
    (dict(step_shrink=1.5), ValueError, r"step_shrink must be in \(0, 1\]"),
    (dict(max_step_scale=0.5), ValueError, "max_step_scale must be >= 1"),
    (dict(max_step_scale=float("inf")), ValueError, "max_step_scale must be finite"),
    (dict(schedule="adaptive", record=("conf",), log_every=1), ValueError, "not available with schedule='adaptive'"),
])
def test_bad_knobs_are_refused_by_name(settings, error, message):
    with pytest.raises(error, match=message):
        TraversalSettings(**settings)
    model, (srcs, tgts) = tiny_cnn(), pairs(2)
    with pytest.raises(error, match=message):
        lst_fast.traverse_batch(model, srcs, tgts, **settings)


def test_cuda_graphs_run_the_paper_schedule_only():
    model, (srcs, tgts) = tiny_cnn(), pairs(2)
    with pytest.raises(ValueError, match=r"cuda_graphs=True runs only the schedules with fixed shapes \['paper'\]"):
        lst_fast.traverse_batch(model, srcs, tgts, schedule="adaptive", cuda_graphs=True)
