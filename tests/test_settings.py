"""One settings object for a traversal (lst_fast.settings.TraversalSettings): checked on construction, taken
by both loops as ``settings=`` or as keywords, embedded in SweepConfig, and the source of the sweep's options."""

import argparse
import dataclasses
import inspect

import pytest
import torch

import lst_fast
from lst_fast import cli, reference
from lst_fast.settings import SWEEP_SETTINGS, Choice, TraversalSettings, check_settings
from lst_fast.sweep.config import SweepConfig, differences

from helpers import SHARP, SHARPNESS, assert_same_result, colour_patches, tiny_cnn


def test_defaults_are_the_papers_and_values_are_normalised():
    settings = TraversalSettings()
    assert (settings.step_size, settings.iters, settings.pthresh) == (1e-2, 400, 0.2)
    assert (settings.adv_step_size, settings.init_noise) == (2e-3, 4 / 255)
    assert TraversalSettings(adv_step_size=None).adv_step_size == 0.0  # the correction off
    assert TraversalSettings(record="conf", log_every=2).record == ("conf",)
    assert TraversalSettings(width_distances=[1, 2]).width_distances == (1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.iters = 3


@pytest.mark.parametrize(
    "keywords, error, match",
    [
        (dict(iters=-1), ValueError, "iters must be >= 0"),
        (dict(iters=2.5), TypeError, "iters must be an int"),
        (dict(step_size=0), ValueError, "step_size must be > 0"),
        (dict(init_noise=float("nan")), ValueError, "init_noise must be finite"),
        (dict(record=("conf",)), ValueError, "needs log_every > 0"),
        (dict(record=("bogus",), log_every=1), ValueError, "record may contain"),
        (dict(width_num_vecs=1), ValueError, "width_num_vecs must be >= 2"),
    ],
)
def test_bad_settings_name_the_field(keywords, error, match):
    with pytest.raises(error, match=match):
        TraversalSettings(**keywords)


def test_both_loops_take_a_settings_object_like_keywords():
    model = tiny_cnn(scale=SHARPNESS)
    srcs, tgts = colour_patches(4), colour_patches(4, seed=1)
    settings = TraversalSettings(log_every=5, record=("conf",), **SHARP)
    for traverse in (reference.traverse_batch, lst_fast.traverse_batch):
        by_keywords = traverse(model, srcs, tgts, generator=torch.Generator().manual_seed(2), log_every=5,
                               record=("conf",), **SHARP)
        by_object = traverse(model, srcs, tgts, settings=settings, generator=torch.Generator().manual_seed(2))
        assert_same_result(by_keywords, by_object, atol=0)
        assert torch.equal(by_keywords.path_conf.nan_to_num(-1), by_object.path_conf.nan_to_num(-1))


def test_settings_and_disagreeing_keywords_are_an_error():
    settings = TraversalSettings(iters=3)
    assert check_settings(settings, iters=3) is settings  # agreeing keywords are fine
    with pytest.raises(ValueError, match=r"disagree: iters=4 but settings.iters=3"):
        check_settings(settings, iters=4)
    model, srcs = tiny_cnn(), colour_patches(2)
    for traverse in (reference.traverse_batch, lst_fast.traverse_batch):
        with pytest.raises(ValueError, match="disagree"):
            traverse(model, srcs, srcs, settings=settings, iters=4)
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['iterations'\]"):
            traverse(model, srcs, srcs, iterations=4)
        with pytest.raises(TypeError, match="settings must be a lst_fast.settings.TraversalSettings"):
            traverse(model, srcs, srcs, settings={"iters": 3})


def test_signatures_list_every_setting_with_its_default():
    for traverse in (reference.traverse_batch, lst_fast.traverse_batch):
        parameters = inspect.signature(traverse).parameters
        for f in dataclasses.fields(TraversalSettings):
            assert parameters[f.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[f.name].default == f.default


def test_sweep_config_embeds_the_settings():
    config = SweepConfig(iters=7, step_size=0.5)
    assert config.traversal == TraversalSettings(iters=7, step_size=0.5)
    assert config.iters == 7 and config.init_noise == 4 / 255  # the swept settings read as attributes
    assert SweepConfig(traversal=TraversalSettings(iters=7, step_size=0.5)) == config
    assert SweepConfig(traversal=config.traversal, iters=9).traversal.iters == 9  # a keyword replaces the field
    assert dataclasses.replace(config, pthresh=0.1).traversal == TraversalSettings(iters=7, step_size=0.5, pthresh=0.1)
    lst = config.lst_settings()
    assert (lst.iters, lst.record, lst.log_every) == (7, ("conf",), config.path_log_every)
    assert config.lst_settings(record=("widths",), width_num_vecs=4).width_num_vecs == 4
    with pytest.raises(ValueError, match="iters must be >= 0"):
        SweepConfig(iters=-1)
    with pytest.raises(ValueError, match=r"a sweep chooses \['log_every', 'record'\] itself"):
        SweepConfig(traversal=TraversalSettings(record=("images",), log_every=1))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['colour'\]"):
        SweepConfig(colour="red")


def test_manifest_keys_are_flat_and_unchanged():
    """The manifest's configuration stays the flat dict that sweep folders made before this class hold, less the
    settings that the sweep's schedule does not read."""
    identity = SweepConfig().identity(normalization=((0.5,) * 3, (0.2,) * 3), distances=("l2",))
    assert list(identity) == [
        "model", "data", "checkpoint", "num_classes", "pretrained", "mean", "std", "image_size", "num_samples",
        "rounds", "batch_size", "eval_batch_size", "iters", "step_size", "pthresh", "adv_step_size", "init_noise",
        "schedule", "precision", "min_conf", "seed", "triangles", "triangle_grid", "log_every", "save_images",
        "distances",
    ]
    older = {k: v for k, v in identity.items() if k != "init_noise"}  # a folder made before init_noise existed
    assert differences(older, identity) == []
    schedule_keys = ("schedule", "step_growth", "step_shrink", "max_step_scale")
    before_schedules = {k: v for k, v in identity.items() if k not in schedule_keys}
    assert differences(before_schedules, identity) == []  # folders made before the adaptive schedule still resume
    adaptive = SweepConfig(schedule="adaptive").identity(normalization=((0.5,) * 3, (0.2,) * 3), distances=("l2",))
    assert list(adaptive) == [k for k in identity if k != "log_every"][:18] + [
        "step_growth", "step_shrink", "max_step_scale"] + [k for k in identity if k != "log_every"][18:]
    assert differences(before_schedules, adaptive) == [
        "log_every: 20 in the folder, not used now", "max_step_scale: not used in the folder, 10.0 now",
        "schedule: 'paper' in the folder, 'adaptive' now", "step_growth: not used in the folder, 1.3 now",
        "step_shrink: not used in the folder, 0.5 now",
    ]
    changed = SweepConfig(init_noise=0.0).identity(normalization=((0.5,) * 3, (0.2,) * 3), distances=("l2",))
    assert differences(older, changed) == [f"init_noise: {4 / 255!r} in the folder, 0.0 now"]


def test_sweep_options_come_from_the_settings_fields():
    parser = cli.build_parser()
    args = parser.parse_args(["sweep", "--model", "embedded", "--data", "embedded", "--out", "x"])
    for f in SWEEP_SETTINGS:
        assert getattr(args, f.name) == f.default
    (sweep,) = [a.choices["sweep"] for a in parser._actions if getattr(a, "choices", None) and "sweep" in a.choices]
    helps = {a.dest: a.help for a in sweep._actions}
    assert all(helps[f.name] == f.metadata["help"] for f in SWEEP_SETTINGS)
    args = parser.parse_args(["sweep", "--model", "m", "--data", "embedded", "--out", "x", "--iters", "9",
                              "--adv-step-size", "0"])
    assert (args.iters, args.adv_step_size) == (9, 0.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--model", "m", "--data", "embedded", "--out", "x", "--pthresh", "-1"])


def test_a_choice_setting_checks_and_parses_its_options():
    """For settings that take one of a few strings (none yet): the check, and the command line's parser."""
    rule = Choice(("paper", "adaptive"))
    assert rule("schedule", "paper") == "paper"
    with pytest.raises(ValueError, match=r"schedule must be one of \['paper', 'adaptive'\], got 'fast'"):
        rule("schedule", "fast")
    parse = cli.option_type("schedule", rule)
    assert parse("adaptive") == "adaptive"
    with pytest.raises(argparse.ArgumentTypeError, match="schedule must be one of"):
        parse("fast")
