"""Provenance of sweep units: what every unit records, old folders without it, and what is promised about mixing.

Under the same conditions (threads, device, versions) a resumed sweep is bit-identical to one uninterrupted run,
and the tables say nothing; units computed under other conditions are reported, refused on request, and agree
only to float rounding. The reference is the single-threaded sweep of ``test_sweep.py``.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import lst_fast
from lst_fast import cli, ops
from lst_fast.sweep import run_sweep, tables
from lst_fast.sweep.info import describe
from lst_fast.sweep.provenance import CONDITIONS
from lst_fast.sweep.store import SweepStore

from helpers import TRAVERSE_UNITS, TRIANGLE_UNITS, assert_same_sweep, table_numbers, unit_files

REDONE = ["r000_b00001", "r002_b00002"]  # traversal units deleted and computed again in these tests


def provenance_of(path) -> dict | None:
    """The provenance in a unit file's safetensors header, read without lst_fast."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(length))["__metadata__"]
    return json.loads(metadata["provenance"]) if "provenance" in metadata else None


def strip_provenance(out) -> None:
    """Rewrite every unit file as an lst_fast without provenance wrote it (same tensors and other metadata)."""
    for path in unit_files(out).values():
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            metadata = json.loads(f.read(length))["__metadata__"]
        del metadata["provenance"]
        save_file(load_file(str(path)), str(path), metadata=metadata)


def delete_units(out) -> None:
    """Delete two traversal units and the triangle units that need them."""
    store = SweepStore(out)
    for name in REDONE:
        store.unit_path("traverse", name).unlink()
    for batch in (1, 2):
        store.unit_path("triangles", f"b{batch:05d}").unlink()


def stamps(out) -> dict:
    return {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in unit_files(out).items()}


def test_every_unit_records_what_computed_it(reference_sweep):
    _, out, _ = reference_sweep
    def git(*command):
        return subprocess.run(["git", "-C", str(Path(lst_fast.__file__).parent), *command], capture_output=True,
                              text=True, check=True).stdout.strip()

    try:  # HEAD, marked when tracked files differ from it
        commit = git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    files = unit_files(out)
    assert len(files) == TRAVERSE_UNITS + TRIANGLE_UNITS
    for name, path in files.items():
        record = provenance_of(path)
        assert set(CONDITIONS) <= set(record), name
        assert record["device"] == "cpu" and record["threads"] == 1  # the reference sweep runs single-threaded
        assert record["precision"] == "fp32" and record["schedule"] == "paper"
        assert record["backend"] == ops.default_backend("cpu", torch.float32)
        assert (record["torch"], record["timm"], record["lst_fast"]) == (
            torch.__version__, timm.__version__, lst_fast.__version__)
        assert record["commit"] == commit
        if cpu:
            assert record["device_name"] == cpu[0]
        assert record["process"] == "single process" and record["seconds"] > 0
    text = describe(out)
    assert f"conditions of the {len(files)} finished units ({len(files)} with provenance" in text
    assert "threads: 1 (12 units)" in text and "bit-identical" in text


def test_resume_under_the_same_conditions_is_bit_identical_and_says_nothing(reference_sweep, tmp_path, one_thread):
    config, expected, _ = reference_sweep
    out = tmp_path / "resumed"
    shutil.copytree(expected, out)
    delete_units(out)
    report = run_sweep(config, out, workers=0, progress=False)
    assert report.traverse.computed == len(REDONE) and report.triangles.computed == 2
    assert_same_sweep(out, expected)
    markdown = tables.render([out], same_conditions=True)  # accepted: one set of conditions
    assert table_numbers(out) == table_numbers(expected)
    assert "conditions" not in markdown and "provenance" not in markdown


def test_old_folders_without_provenance_resume_and_tabulate(reference_sweep, tmp_path, one_thread, capsys):
    config, expected, _ = reference_sweep
    out = tmp_path / "old"
    shutil.copytree(expected, out)
    strip_provenance(out)
    delete_units(out)
    old = stamps(out)
    report = run_sweep(config, out, workers=0, progress=False)
    assert report.traverse.computed == len(REDONE) and report.traverse.skipped == TRAVERSE_UNITS - len(REDONE)
    assert report.traverse.redone == [] and report.triangles.redone == []
    assert {name: stamp for name, stamp in stamps(out).items() if name in old} == old  # nothing old rewritten
    assert "provenance unknown" in capsys.readouterr().out  # the resuming process said so
    assert_same_sweep(out, expected)

    unknown = len(old)  # the new units have provenance, the old ones not
    markdown = tables.render([out])
    assert f"provenance unknown for {unknown} of {TRAVERSE_UNITS + TRIANGLE_UNITS} units" in markdown
    assert table_numbers(out)[0] == table_numbers(expected)[0]  # the same Table 1
    assert f"provenance unknown for {unknown}" in describe(out)
    with pytest.raises(ValueError, match="provenance unknown"):
        tables.render([out], same_conditions=True)


@pytest.mark.slow
def test_other_thread_counts_are_reported_refused_on_request_and_close(reference_sweep, tmp_path, capsys):
    """Units recomputed on 2 threads: the tables name the mix and stay within float rounding (amplified by a
    few LST iterations) of the single-threaded sweep."""
    config, expected, _ = reference_sweep
    out = tmp_path / "mixed"
    shutil.copytree(expected, out)
    delete_units(out)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_sweep(config, out, workers=0, progress=False)
    finally:
        torch.set_num_threads(before)
    assert "unrecorded) conditions than this process's (threads: " in capsys.readouterr().out  # warned when resuming
    for name in REDONE:
        assert provenance_of(SweepStore(out).unit_path("traverse", name))["threads"] == 2
        got, want = (load_file(str(SweepStore(d).unit_path("traverse", name))) for d in (out, expected))
        for key in ("outputs", "final_conf", "dist_l2"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-3)

    markdown = tables.render([out])
    units = TRAVERSE_UNITS + TRIANGLE_UNITS
    assert f"threads: 1 ({units - len(REDONE) - 2} units), 2 ({len(REDONE) + 2} units)" in markdown
    for make in (tables.distance_table, tables.triangle_table):  # every mean and std of Tables 1 and 2
        got, want = (make([tables.load_results(d)]).numbers[0] for d in (out, expected))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-3), key
    with pytest.raises(ValueError, match="threads: 1 .*, 2 "):
        tables.render([out], same_conditions=True)
    assert cli.main(["tables", str(out), "--same-conditions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lst-fast tables: error:") and "different conditions" in err and len(err.splitlines()) == 1
    assert cli.main(["info", str(out)]) == 0
    assert "threads: 1 (" in capsys.readouterr().out


def test_unit_files_of_another_device_or_version_still_load(reference_sweep, tmp_path):
    """Provenance is never checked when a unit is read: a unit from another machine is as good as any."""
    config, expected, _ = reference_sweep
    out = tmp_path / "foreign"
    shutil.copytree(expected, out)
    store = SweepStore(out)
    path = store.unit_path("traverse", "r001_b00000")
    with open(path, "rb") as f:
        metadata = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    record = json.loads(metadata["provenance"]) | {"device": "cuda", "device_name": "NVIDIA H200", "torch": "9.9"}
    save_file(load_file(str(path)), str(path), metadata=metadata | {"provenance": json.dumps(record)})
    results = tables.load_results(out)
    assert results.units["traverse"] == (TRAVERSE_UNITS, TRAVERSE_UNITS) and not results.corrupt
    differing = results.provenance.differing()
    assert set(differing) == {"device", "device_name", "torch", "threads"}  # threads: not recorded for GPU units
    assert differing["device"] == {"cpu": TRAVERSE_UNITS + TRIANGLE_UNITS - 1, "cuda": 1}
