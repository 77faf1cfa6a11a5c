"""Sweeps: the plan, resuming after SIGKILL, torchrun and --shard, corrupt units, refused configurations,
tables of partial sweeps, and parity of a unit with the reference loop.

Most tests share one uninterrupted single-process sweep of a tiny random-init timm network on 10 random
images (``reference_sweep``) and compare other ways of running the same sweep with it bit for bit. All runs
are single-threaded so that their float results can be compared exactly.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lst_fast
from lst_fast import data, metrics, models, reference
from lst_fast.sweep import SweepConfig, run_sweep, schema, tables
from lst_fast.sweep.config import differences
from lst_fast.sweep.info import describe
from lst_fast.sweep.placement import Placement, parse_shard, resolve_placement
from lst_fast.sweep.plan import derangements, make_plan, unit_generator
from lst_fast.sweep.store import SweepStore

from helpers import (
    BATCH,
    ITERS,
    ROUNDS,
    TRAVERSE_UNITS,
    TRIANGLE_UNITS,
    N,
    assert_same_sweep,
    cli_args,
    single_threaded_env,
    sweep_config,
    table_numbers,
    unit_files,
)

# The per-pair diagnostics that units written before lst_fast recorded them lack.
DIAGNOSTICS = ("evaluations", "final_step_size", "final_target_conf")

# --- the plan ----------------------------------------------------------------------------------------------


def test_derangements_are_seeded_and_give_every_source_distinct_targets():
    targets = derangements(6, 5, seed=3)
    assert targets.shape == (5, 6)
    for row in targets:
        assert sorted(row) == list(range(6))  # a permutation
        assert not (row == np.arange(6)).any()  # no image is its own target
    for source in range(6):
        assert len(set(targets[:, source])) == 5  # a different target in every round
    assert (derangements(6, 5, seed=3) == targets).all()
    assert not (derangements(6, 5, seed=4) == targets).all()
    with pytest.raises(ValueError, match="rounds must be between 1 and"):
        derangements(4, 4, seed=0)


def test_units_cover_every_pair_once_for_any_number_of_workers():
    plan = make_plan(7, 3, 3, seed=1)
    assert [len(u.sources) for u in plan.traverse] == [3, 3, 1] * 3  # the last batch is short, never padded
    pairs = [(u.round, s, t) for u in plan.traverse for s, t in zip(u.sources, u.targets)]
    assert len(pairs) == len(set(pairs)) == plan.pairs == 21
    for count in (1, 2, 4, 5):
        owned = [
            [u.index for u in plan.traverse if Placement(i, count, 0, "").owns(u.index)] for i in range(count)
        ]
        assert sorted(sum(owned, [])) == list(range(len(plan.traverse)))


def test_placement_from_shard_and_torchrun_environment():
    assert parse_shard("1/4") == (1, 4)
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    placement = resolve_placement((2, 3), env=torchrun)
    assert (placement.index, placement.count, placement.local_rank) == (5, 6, 1)
    assert placement.label == "shard 2/3 rank 1/2"
    assert resolve_placement(None, env={}).count == 1
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


# --- one sweep, checked against independent computations ----------------------------------------------------


def test_sweep_units_match_the_reference_loop(reference_sweep, tiny_checkpoint):
    config, out, report = reference_sweep
    assert report.traverse.computed == TRAVERSE_UNITS and report.triangles.computed == TRIANGLE_UNITS
    assert report.finished == {"traverse": (TRAVERSE_UNITS, TRAVERSE_UNITS), "triangles": (3, 3)}
    store = SweepStore(out)
    selection = store.read_json(store.selection_path)
    dataset = data.open_dataset(config.data, image_size=config.image_size)
    model, normalizer = models.load_model(config.model, checkpoint=config.checkpoint, num_classes=config.num_classes)
    images = torch.stack([dataset[i][0] for i in selection["indices"]])
    with torch.no_grad():
        probs = model(normalizer(images)).softmax(1)
    # unlabelled images: the label is the model's prediction, and every selected image is distinct
    assert selection["labels"] == probs.argmax(1).tolist()
    assert len(set(selection["indices"])) == N

    plan = make_plan(N, ROUNDS, BATCH, config.seed)
    unit = plan.traverse[5]
    saved = load_file(str(store.unit_path("traverse", unit.name)))
    assert saved["source"].tolist() == list(unit.sources) and saved["target"].tolist() == list(unit.targets)
    srcs, tgts = images[list(unit.sources)], images[list(unit.targets)]
    expected = reference.traverse_batch(
        model, srcs, tgts, torch.tensor(selection["labels"])[list(unit.sources)], normalizer=normalizer,
        iters=config.iters, generator=unit_generator(config.seed, unit.round, unit.batch, torch.device("cpu")),
    )
    assert saved["valid"].all()
    torch.testing.assert_close(saved["outputs"], expected.images, rtol=0, atol=1e-4)
    torch.testing.assert_close(saved["final_conf"], expected.final_conf, rtol=0, atol=1e-4)
    want = metrics.distances(saved["outputs"], tgts, which=("l2", "linf", "ssim"))
    for name, values in want.items():
        torch.testing.assert_close(saved[f"dist_{name}"], values)


def load_reference_inputs(config, out):
    """The reference sweep's model, normaliser, selection and selected images, loaded independently of the sweep."""
    store = SweepStore(out)
    selection = store.read_json(store.selection_path)
    dataset = data.open_dataset(config.data, image_size=config.image_size)
    model, normalizer = models.load_model(config.model, checkpoint=config.checkpoint, num_classes=config.num_classes)
    images = torch.stack([dataset[i][0] for i in selection["indices"]])
    return model, normalizer, selection, images


def test_traversal_units_hold_the_listed_fields_and_per_pair_diagnostics(reference_sweep):
    config, out, _ = reference_sweep
    model, normalizer, selection, images = load_reference_inputs(config, out)
    distances = json.loads((out / "manifest.json").read_text())["config"]["distances"]
    expected_keys = {
        "source", "target", "labels", "target_labels", "valid", "init_conf", "final_conf", "accepted", "outputs",
        "path_iters", "path_conf", "path_target_conf", *DIAGNOSTICS, *(f"dist_{d}" for d in distances),
    }
    for unit in make_plan(N, ROUNDS, BATCH, config.seed).traverse:
        saved = load_file(str(SweepStore(out).unit_path("traverse", unit.name)))
        assert set(saved) == expected_keys, unit.name
        schema.TRAVERSE.pack(saved)  # dtypes and shapes as the schema lists them
        valid = saved["valid"]
        # the paper's schedule: every valid pair evaluates its start point and iters candidates at step_size
        assert saved["evaluations"].tolist() == [ITERS + 1 if v else 0 for v in valid.tolist()]
        assert saved["final_step_size"].tolist() == [config.step_size if v else 0.0 for v in valid.tolist()]
        assert (saved["accepted"] <= ITERS).all()
        target_labels = torch.tensor(selection["labels"])[list(unit.targets)]
        assert torch.equal(saved["target_labels"], target_labels)
        with torch.no_grad():
            probs = model(normalizer(saved["outputs"])).softmax(1)
        want = probs.gather(1, target_labels[:, None]).squeeze(1)
        torch.testing.assert_close(saved["final_target_conf"], want, rtol=0, atol=1e-6)
        with torch.no_grad():
            init = model(normalizer(images[list(unit.sources)])).softmax(1)
        torch.testing.assert_close(saved["init_conf"], init.gather(1, saved["labels"][:, None]).squeeze(1),
                                   rtol=0, atol=1e-6)


def test_cost_table_counts_evaluations_and_recorded_seconds(reference_sweep):
    config, out, _ = reference_sweep
    store = SweepStore(out)
    seconds, pairs = 0.0, 0
    for unit in make_plan(N, ROUNDS, BATCH, config.seed).traverse:
        seconds += store.read_provenance("traverse", unit.name)["seconds"]
        pairs += len(unit.sources)
    results = tables.load_results(out)
    (row,) = tables.cost_table([results]).numbers
    assert row == {"pairs": float(N * ROUNDS), "evaluations_mean": ITERS + 1.0, "evaluations_max": ITERS + 1.0,
                   "seconds_per_pair": pytest.approx(seconds / pairs)}
    markdown = tables.render([out], which="cost")
    assert f"| {out} | test_efficientnet | folder:" in markdown
    assert f"| paper | {N * ROUNDS} | {ITERS + 1:.1f} | {ITERS + 1} | {seconds / pairs:.4g} |" in markdown


# --- resuming, sharding, torchrun --------------------------------------------------------------------------


def kill_part_way_then_rerun(config, expected, out):
    """Run ``lst-fast sweep`` for ``config`` into ``out``, SIGKILL it after its first units, run it again, and check
    that no finished unit was redone and the folder equals the uninterrupted one in ``expected``."""
    command = [sys.executable, "-m", "lst_fast.cli"] + cli_args(config, out)
    process = subprocess.Popen(command, env=single_threaded_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(unit_files(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()
    before = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in unit_files(out).items()}
    assert 3 <= len(before) < TRAVERSE_UNITS + TRIANGLE_UNITS  # really killed part-way

    rerun = subprocess.run(command, env=single_threaded_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    done = sum(name.startswith(os.path.join("units", "traverse")) for name in before)
    assert f"{done} already done, 0 corrupt redone" in rerun.stdout
    after = unit_files(out)
    for name, stamp in before.items():  # no finished unit was computed (or even written) again
        assert (after[name].stat().st_ino, after[name].stat().st_mtime_ns) == stamp, name
    assert_same_sweep(out, expected)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_and_skips_finished_units(reference_sweep, tmp_path):
    config, expected, _ = reference_sweep
    kill_part_way_then_rerun(config, expected, tmp_path / "killed")


@pytest.mark.slow
def test_adaptive_sweep_resumes_after_sigkill_to_identical_tables(image_folder, tiny_checkpoint, tmp_path, one_thread):
    config = sweep_config(image_folder, tiny_checkpoint, schedule="adaptive", iters=40, step_size=0.05)
    expected = tmp_path / "uninterrupted"
    run_sweep(config, expected, workers=1, progress=False)
    manifest = json.loads((expected / "manifest.json").read_text())
    assert manifest["config"]["schedule"] == "adaptive"
    saved = load_file(str(next(p for name, p in unit_files(expected).items() if "traverse" in name)))
    assert "path_conf" not in saved  # the adaptive schedule records no path
    kill_part_way_then_rerun(config, expected, tmp_path / "killed")
    assert "| adaptive |" in tables.render([expected], "markdown")

    # the adaptive schedule's own per-pair costs are kept: as the fast loop reports them for the same unit
    model, normalizer, selection, images = load_reference_inputs(config, expected)
    unit = make_plan(N, ROUNDS, BATCH, config.seed).traverse[4]
    saved = load_file(str(SweepStore(expected).unit_path("traverse", unit.name)))
    labels = torch.tensor(selection["labels"])
    again = lst_fast.traverse_batch(
        model, images[list(unit.sources)], images[list(unit.targets)], labels[list(unit.sources)],
        normalizer=normalizer, settings=config.lst_settings(), target_labels=labels[list(unit.targets)],
        generator=unit_generator(config.seed, unit.round, unit.batch, torch.device("cpu")),
    )
    assert torch.equal(saved["evaluations"], again.evaluations)
    assert torch.equal(saved["final_step_size"], again.final_step_size)
    assert (saved["evaluations"] < 40 + 1).any()  # the adaptive schedule stops before the budget

    # its cost next to the paper's of the same data: evaluations per valid pair over all of its units
    evaluations = torch.cat([
        u["evaluations"][u["valid"]] for u in map(load_file, map(str, unit_files(expected).values()))
        if "evaluations" in u
    ]).double()
    paper = tmp_path / "paper"
    run_sweep(sweep_config(image_folder, tiny_checkpoint, iters=40, step_size=0.05), paper, workers=1,
              progress=False)
    cost = tables.cost_table([tables.load_results(d) for d in (paper, expected)])
    assert [n["evaluations_mean"] for n in cost.numbers] == [41.0, pytest.approx(evaluations.mean().item())]
    assert cost.numbers[1]["evaluations_max"] == evaluations.max().item()
    # each row names its folder and the settings in which the two differ ("-": not used by that schedule)
    assert cost.columns[:8] == ["sweep", "model", "data", "schedule", "log_every", "step_growth", "step_shrink",
                                "max_step_scale"]
    assert [[row[0]] + row[3:8] for row in cost.rows] == [
        [str(paper), "paper", "2", "-", "-", "-"], [str(expected), "adaptive", "-", "1.3", "0.5", "10.0"]]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(reference_sweep, tmp_path):
    config, expected, _ = reference_sweep
    out = tmp_path / "torchrun"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "lst_fast.cli",
    ] + cli_args(config, out)
    run = subprocess.run(command, env=single_threaded_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    computed = [int(line.split("LST: ")[1].split(" units")[0]) for line in run.stdout.splitlines() if "LST: " in line]
    assert len(computed) == 2 and all(c > 0 for c in computed) and sum(computed) == TRAVERSE_UNITS
    assert "[rank 0/2]" in run.stdout and "[rank 1/2]" in run.stdout
    assert_same_sweep(out, expected)


def test_shards_wait_for_each_other_and_equal_one_process(reference_sweep, tmp_path, one_thread):
    config, expected, _ = reference_sweep
    out = tmp_path / "shards"
    first = run_sweep(config, out, shard="0/2", wait=0, workers=0, progress=False)
    # shard 0 owns traversal units 0, 2, 4, 6, 8 (= round * 3 + batch) and the triangle units of batches 0 and 2,
    # which also need units 3 and 5 of shard 1
    assert first.traverse.computed == 5
    assert first.waiting == ["b00000", "b00002"] and first.triangles.computed == 0
    assert tables.load_results(out).units == {"traverse": (5, 9), "triangles": (0, 3)}

    second = run_sweep(config, out, shard="1/2", wait=0, workers=0, progress=False)
    assert second.traverse.computed == 4 and second.triangles.computed == 1 and not second.waiting
    third = run_sweep(config, out, shard="0/2", phase="triangles", wait=0, workers=0, progress=False)
    assert third.traverse.computed == 0 and third.triangles.computed == 2 and not third.waiting
    assert_same_sweep(out, expected)


def test_corrupt_units_are_detected_and_redone(reference_sweep, tmp_path, one_thread):
    config, expected, _ = reference_sweep
    out = tmp_path / "corrupt"
    shutil.copytree(expected, out)
    store = SweepStore(out)
    truncated = store.unit_path("traverse", "r000_b00001")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    damaged = store.unit_path("traverse", "r002_b00002")
    raw = bytearray(damaged.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte inside the tensor data
    damaged.write_bytes(bytes(raw))
    triangle = store.unit_path("triangles", "b00002")
    triangle.write_bytes(b"")

    report = run_sweep(config, out, workers=0, progress=False)
    assert sorted(report.traverse.redone) == ["r000_b00001", "r002_b00002"]
    assert report.traverse.computed == 2 and report.traverse.skipped == TRAVERSE_UNITS - 2
    assert report.triangles.redone == ["b00002"] and report.triangles.computed == 1
    assert_same_sweep(out, expected)


def test_other_configuration_is_refused(reference_sweep, tmp_path):
    config, expected, _ = reference_sweep
    out = tmp_path / "other"
    shutil.copytree(expected, out)
    files = {name: p.stat().st_mtime_ns for name, p in unit_files(out).items()}
    other = SweepConfig(**{**config.__dict__, "iters": ITERS + 1, "seed": 8})
    with pytest.raises(ValueError, match="another configuration") as error:
        run_sweep(other, out, workers=0, progress=False)
    assert f"iters: {ITERS} in the folder, {ITERS + 1} now" in str(error.value)
    assert "seed: 7 in the folder, 8 now" in str(error.value)
    assert {name: p.stat().st_mtime_ns for name, p in unit_files(out).items()} == files


# --- tables ------------------------------------------------------------------------------------------------


def test_tables_of_a_partial_sweep(reference_sweep, tmp_path):
    config, expected, _ = reference_sweep
    out = tmp_path / "partial"
    shutil.copytree(expected, out)
    store = SweepStore(out)
    kept = ["r000_b00000", "r001_b00002", "r002_b00001"]
    for unit in make_plan(N, ROUNDS, BATCH, config.seed).traverse:
        if unit.name not in kept:
            store.unit_path("traverse", unit.name).unlink()
    store.unit_path("triangles", "b00001").unlink()

    results = tables.load_results(out)
    assert not results.corrupt
    units = [load_file(str(store.unit_path("traverse", name))) for name in kept]
    l2 = np.concatenate([u["dist_l2"].numpy() for u in units]).astype(np.float64)
    markdown = tables.render([out])
    assert f"{l2.mean():.4f} ± {l2.std():.4f}" in markdown
    assert f"covers {len(l2)} of {N * ROUNDS} pairs (3 of {TRAVERSE_UNITS} traversal units finished)" in markdown
    sources = results.sources["src_source"]
    assert sorted(sources.tolist()) == [0, 1, 2, 6, 7]  # batch 1 (sources 3, 4, 5) is missing
    assert f"covers 5 of {N} sources (2 of 3 triangle units finished" in markdown
    triangle_units = [load_file(str(store.unit_path("triangles", f"b{b:05d}"))) for b in (0, 2)]
    p_src = np.concatenate([u["src_p_src"].numpy() for u in triangle_units]).astype(np.float64)
    assert f"{p_src.mean():.4f} ± {p_src.std():.4f}" in markdown

    csv_lines = tables.render([out], "csv", which="1").splitlines()
    header, row = csv_lines[0].split(","), csv_lines[1].split(",")
    assert float(row[header.index("l2_mean")]) == pytest.approx(l2.mean())
    assert float(row[header.index("pairs_total")]) == N * ROUNDS
    latex = tables.render([out], "latex", which="2")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex
    both = tables.render([out, expected], which="1").splitlines()  # one row per sweep folder, named by it
    assert [line.split(" | ")[0] for line in both if "| test_efficientnet |" in line] == [f"| {out}", f"| {expected}"]
    assert f"- {expected}: covers {N * ROUNDS} of {N * ROUNDS} pairs" in "\n".join(both)


def test_info_and_tables_judge_truncated_and_emptied_units_alike(reference_sweep, tmp_path):
    _, expected, _ = reference_sweep
    out = tmp_path / "damaged"
    shutil.copytree(expected, out)
    store = SweepStore(out)
    truncated = store.unit_path("traverse", "r000_b00001")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    store.unit_path("traverse", "r002_b00002").write_bytes(b"")

    info = describe(out)
    finished = TRAVERSE_UNITS - 2
    assert f"traverse {finished}/{TRAVERSE_UNITS} finished (2 corrupt: r000_b00001, r002_b00002)" in info
    assert f"triangles {TRIANGLE_UNITS}/{TRIANGLE_UNITS} finished;" not in info  # (";" only between kinds)
    assert f"conditions of the {finished + TRIANGLE_UNITS} finished units ({finished + TRIANGLE_UNITS} with" in info
    assert "older lst_fast" not in info and "provenance unknown" not in info
    markdown = tables.render([out])
    assert f"({finished} of {TRAVERSE_UNITS} traversal units finished)" in markdown
    assert "corrupt unit files left out: traverse/r000_b00001, traverse/r002_b00002" in markdown
    assert tables.load_results(out).units["traverse"] == (finished, TRAVERSE_UNITS)


def test_units_without_the_per_pair_diagnostics_still_tabulate(reference_sweep, tmp_path):
    """A unit as lst_fast wrote it before it recorded evaluations, step sizes and target confidences."""
    _, expected, _ = reference_sweep
    out = tmp_path / "older"
    shutil.copytree(expected, out)
    store = SweepStore(out)
    config_id = json.loads((out / "manifest.json").read_text())["config_id"]
    name = "r001_b00001"
    tensors = {k: v for k, v in load_file(str(store.unit_path("traverse", name))).items() if k not in DIAGNOSTICS}
    store.write_unit("traverse", name, tensors, config_id, provenance=store.read_provenance("traverse", name))

    results = tables.load_results(out)
    assert results.units["traverse"] == (TRAVERSE_UNITS, TRAVERSE_UNITS) and not results.corrupt
    assert table_numbers(out)[:2] == table_numbers(expected)[:2]  # the same Tables 1 and 2
    (cost,) = tables.cost_table([results]).numbers
    older = int(tensors["valid"].sum())
    assert cost["pairs"] == N * ROUNDS - older and cost["evaluations_mean"] == ITERS + 1
    markdown = tables.render([out])
    assert f"{out}: {older} valid pair(s) left out of the evaluations" in markdown
    assert f"traverse {TRAVERSE_UNITS}/{TRAVERSE_UNITS} finished" in describe(out)


def test_settings_of_another_schedule_are_not_part_of_the_identity():
    normalization, distances = ((0.5,) * 3, (0.2,) * 3), ("l2",)
    paper = SweepConfig(step_growth=2.0).identity(normalization=normalization, distances=distances)
    assert not {"step_growth", "step_shrink", "max_step_scale"} & set(paper)
    assert paper == SweepConfig().identity(normalization=normalization, distances=distances)
    older = paper | {"step_growth": 2.0, "step_shrink": 0.5, "max_step_scale": 10.0}  # as manifests held them
    assert differences(older, paper) == []
    adaptive = SweepConfig(schedule="adaptive", log_every=3).identity(normalization=normalization, distances=distances)
    assert "log_every" not in adaptive  # the adaptive schedule records no path
    assert differences(adaptive | {"log_every": 20}, adaptive) == []
    faster = SweepConfig(schedule="adaptive", step_growth=2.0).identity(normalization=normalization,
                                                                         distances=distances)
    assert differences(adaptive, faster) == ["step_growth: 1.3 in the folder, 2.0 now"]  # its own knobs still count
