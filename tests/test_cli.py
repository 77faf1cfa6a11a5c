"""The ``lst-fast`` command line: help for every option, bad input rejected before any work, tables output,
saved images, and a small sweep of the offline model."""

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lst_fast.sweep
from lst_fast import cli, data
from lst_fast.settings import SWEEP_SETTINGS
from lst_fast.sweep import SweepConfig
from lst_fast.sweep.config import config_options
from lst_fast.sweep.runner import image_stems


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("name", ["demo", "sweep", "tables", "info", "plot"])
def test_every_option_is_explained(name, capsys):
    sub = _subcommands()[name]
    for action in sub._actions:
        assert action.help and len(action.help) > 10, f"{name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text


def test_demo_is_still_there():
    args = cli.build_parser().parse_args(["demo", "--iters", "3"])
    assert args.command == "demo" and args.iters == 3 and args.photos == ["chelsea", "coffee", "rocket", "astronaut"]


def _tiny_sweep_args(image_folder, tiny_checkpoint, out, *extra):
    path, arch, classes = tiny_checkpoint
    return [
        "sweep", "--model", arch, "--checkpoint", str(path), "--num-classes", str(classes),
        "--data", f"folder:{image_folder}", "--out", str(out), "--image-size", "16", "--num-samples", "3",
        "--rounds", "2", "--batch-size", "3", "--iters", "1", "--min-conf", "0", "--no-progress", "--workers", "0",
        *extra,
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "resnet_9000"], "unknown model 'resnet_9000'"),
        (["--data", "imagenette:/x"], "unknown data 'imagenette:/x'"),
        (["--data", "folder:/no/such/folder"], "does not exist"),
        (["--shard", "2/2"], "0 <= I < N"),
        (["--rounds", "1"], "rounds must be >= 2 for the triangle statistics"),
        (["--min-conf", "0.999"], "only 0 of 10 images are classified correctly with confidence > 0.999"),
        (["--num-samples", "2"], "num_samples must be >= 2 and > rounds"),
        (["--checkpoint", "/no/such.safetensors"], "checkpoint '/no/such.safetensors' does not exist"),
        (["--lpips-weights", "/no/alexnet.pth"], "LPIPS AlexNet weights file '/no/alexnet.pth' does not exist"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_bad_input_fails_before_any_work(image_folder, tiny_checkpoint, tmp_path, capsys, change, message, one_thread):
    out = tmp_path / "out"
    args = _tiny_sweep_args(image_folder, tiny_checkpoint, out)
    option = change[0]
    args = args[: args.index(option)] + change + args[args.index(option) + 2 :] if option in args else args + change
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lst-fast sweep: error:") and message in err
    assert not (out / "units").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_that_is_a_file_is_an_error(image_folder, tiny_checkpoint, tmp_path, capsys, where):
    existing = tmp_path / "results.csv"
    existing.write_text("a file the user wants to keep\n")
    out = existing if where == "file" else existing / "sweep"
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out)) == 2
    err = capsys.readouterr().err
    assert err == f"lst-fast sweep: error: out must be a sweep folder (new or existing), but {str(existing)!r} is a " \
                  "file; choose another --out\n"
    assert existing.read_text() == "a file the user wants to keep\n"


def test_lpips_note_is_short_and_said_once(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread, monkeypatch):
    from lst_fast import metrics

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))  # no AlexNet weights here
    assert not metrics.lpips_available()
    folders = [tmp_path / "a", tmp_path / "b"]
    for out in folders:
        assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--no-triangles")) == 0
    assert capsys.readouterr().out.count("LPIPS") == 2  # one note per sweep run
    assert cli.main(["tables", *map(str, folders)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "LPIPS" in line]
    assert len(notes) == 1 and len(notes[0]) < 220 and "--lpips-weights PATH" in notes[0]


def test_tables_of_something_else_is_an_error(tmp_path, capsys):
    assert cli.main(["tables", str(tmp_path)]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err


def test_sweep_saves_images_and_prints_tables(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--save-images", "--no-triangles")) == 0
    summary = capsys.readouterr().out
    assert "LST: 2 units (6 pairs" in summary and "traverse 2/2 units finished" in summary
    unit = load_file(str(out / "units" / "traverse" / "r001_b00000.safetensors"))
    files = sorted(image_folder.iterdir())  # the folder's images in the data set's order (img_00.jpg, ...)
    stem = [files[i].stem for i in json.loads((out / "selection.json").read_text())["indices"]]
    written = sorted(p.name for p in (out / "images" / "r001").iterdir())
    assert written == sorted(f"{stem[s]}_to_{stem[t]}.png" for s, t in zip(unit["source"], unit["target"]))
    for k, (s, t) in enumerate(zip(unit["source"].tolist(), unit["target"].tolist())):
        png = np.asarray(Image.open(out / "images" / "r001" / f"{stem[s]}_to_{stem[t]}.png"))
        expected = unit["outputs"][k].permute(1, 2, 0).numpy() * 255
        assert np.abs(png.astype(float) - expected).max() <= 0.5 + 1e-3  # 8-bit rounding only

    assert cli.main(["tables", str(out)]) == 0
    markdown = capsys.readouterr().out
    assert "| test_efficientnet |" in markdown and "covers 6 of 6 pairs (2 of 2 traversal units finished)" in markdown
    assert "Table 2" not in markdown
    assert cli.main(["tables", str(out), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("sweep,model,data,schedule,pairs,pairs_total,l2_mean,l2_std")


def test_saved_images_are_named_by_unique_file_stems():
    files = [Path("cats/x.png"), Path("dogs/x.png"), Path("dogs/y.jpg"), Path("birds/x.jpeg")]
    dataset = data.ImageFiles(files, [0] * len(files), transform=None)
    assert image_stems(dataset, [2, 0, 1]) == ["y", "x_00001", "x_00002"]  # x twice: the sweep position added
    assert image_stems(dataset, [3, 2]) == ["x", "y"]  # only names shared within the selection are changed
    photos = data.EMBEDDED_PHOTOS
    assert image_stems(data.EmbeddedPhotos(transform=None), [1, 0]) == [photos[1], photos[0]]
    assert image_stems(torch.utils.data.TensorDataset(torch.zeros(5)), [4, 1]) == ["00000", "00001"]


def test_offline_model_sweep_keeps_confident_photos(tmp_path, capsys, one_thread):
    """The offline EfficientNet on the bundled photos: only chelsea (p 0.38), coffee (0.95) and rocket (0.32)
    have a top-1 confidence above 0.3 (see docs/algorithm.md, §7)."""
    out = tmp_path / "embedded"
    args = ["sweep", "--model", "embedded", "--data", "embedded", "--out", str(out), "--min-conf", "0.3",
            "--num-samples", "6", "--rounds", "2", "--iters", "2", "--batch-size", "3", "--no-triangles",
            "--no-progress", "--workers", "1"]
    assert cli.main(args) == 0
    assert "only 3 of the 6 requested images" in capsys.readouterr().out
    unit = load_file(str(out / "units" / "traverse" / "r000_b00000.safetensors"))
    assert sorted(unit["labels"].tolist()) == [282, 657, 967]  # tiger cat, missile, espresso
    assert unit["valid"].all() and (unit["init_conf"] > 0.3).all()


def test_plot_writes_the_figures_of_a_sweep(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out)) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(out), "--pairs", "2", "--path-widths", "--width-vecs", "4"]) == 0
    written = [p for p in capsys.readouterr().out.splitlines() if p]
    unit = load_file(str(out / "units" / "traverse" / "r000_b00000.safetensors"))
    (s0, s1), (t0, t1) = unit["source"][:2].tolist(), unit["target"][:2].tolist()
    names = {"confidence_paths.png", "interpolation.png", f"triangle_{s0:05d}.png", f"triangle_{s1:05d}.png",
             f"path_width_{s0:05d}_to_{t0:05d}.png", f"path_width_{s1:05d}_to_{t1:05d}.png"}
    assert sorted(written) == sorted(str(out / "figures" / name) for name in names)
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_plot_takes_pairs_across_units(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"  # 3 images, batches of 2: units of 2 and 1 pairs per round, 6 pairs in all
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--batch-size", "2", "--no-triangles")) == 0
    pairs = []
    for name in ("r000_b00000", "r000_b00001", "r001_b00000", "r001_b00001"):  # plan order
        unit = load_file(str(out / "units" / "traverse" / f"{name}.safetensors"))
        pairs += zip(unit["source"].tolist(), unit["target"].tolist())
    capsys.readouterr()
    for asked, shown in ((5, 5), (8, 6)):
        figures = tmp_path / f"figures_{asked}"
        assert cli.main(["plot", str(out), "--out", str(figures), "--pairs", str(asked), "--path-widths",
                         "--width-vecs", "2"]) == 0
        written = capsys.readouterr()
        widths = sorted(p.name for p in figures.glob("path_width_*.png"))
        assert widths == sorted(f"path_width_{s:05d}_to_{t:05d}.png" for s, t in pairs[:shown])
        notes = written.err.splitlines()
        if asked > shown:
            assert notes == [("lst-fast plot: note: the sweep has 6 finished pairs, fewer than the 8 asked for; "
                              "plotting 6")]
        else:
            assert notes == []


def test_plot_and_info_of_an_empty_sweep(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--phase", "triangles", "--wait", "0")) == 3
    capsys.readouterr()
    assert cli.main(["plot", str(out)]) == 2
    assert "has no finished LST unit yet" in capsys.readouterr().err
    assert cli.main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  units: traverse 0/2 finished (2 missing); triangles 0/1 finished (1 missing)" in lines
    assert lines[-1] == "  no finished units yet, so no conditions to list"
    assert not any(line.endswith(":") for line in lines)


def test_tables_name_each_sweep_and_the_settings_that_differ(image_folder, tiny_checkpoint, tmp_path, capsys,
                                                              one_thread):
    folders = [tmp_path / "one_iteration", tmp_path / "two_iterations"]
    for out, iters in zip(folders, ("1", "2")):
        args = _tiny_sweep_args(image_folder, tiny_checkpoint, out, "--no-triangles")
        args[args.index("--iters") + 1] = iters
        assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["tables", *map(str, folders), "--table", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| sweep | model | data | schedule | iters | pairs | L2/sqrt(D) |")
    data = f"folder:{image_folder}"
    assert lines[4].startswith(f"| {folders[0]} | test_efficientnet | {data} | paper | 1 | 6 |")
    assert lines[5].startswith(f"| {folders[1]} | test_efficientnet | {data} | paper | 2 | 6 |")
    assert cli.main(["tables", *map(str, folders), "--table", "cost", "--format", "csv"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.startswith("sweep,model,data,schedule,iters,pairs,evaluations_mean,evaluations_max")
    assert first.startswith(f"{folders[0]},test_efficientnet,{data},paper,1,6.0,2.0,2.0,")  # iters + 1 evaluations
    assert second.startswith(f"{folders[1]},test_efficientnet,{data},paper,2,6.0,3.0,3.0,")
    assert cli.main(["tables", str(folders[0])]) == 0  # one sweep alone: nothing differs
    assert "| sweep | model | data | schedule | pairs |" in capsys.readouterr().out


def test_knobs_of_another_schedule_do_not_lock_the_folder(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    args = _tiny_sweep_args(image_folder, tiny_checkpoint, out, "--no-triangles")
    assert cli.main(args + ["--step-growth", "2.0"]) == 0  # changes nothing under the paper's schedule
    manifest = out / "manifest.json"
    stored = json.loads(manifest.read_text())
    assert not {"step_growth", "step_shrink", "max_step_scale"} & set(stored["config"])
    capsys.readouterr()
    assert cli.main(args) == 0  # resumed without it
    assert "LST: 0 units (0 pairs" in capsys.readouterr().out
    # a folder whose manifest holds them, as lst_fast wrote every schedule's settings before, still resumes
    stored["config"] |= {"step_growth": 2.0, "step_shrink": 0.5, "max_step_scale": 10.0}
    manifest.write_text(json.dumps(stored))
    assert cli.main(args + ["--step-shrink", "0.25"]) == 0
    assert "LST: 0 units (0 pairs, 0.00 pairs/s), 2 already done" in capsys.readouterr().out


def test_files_of_a_sweep_follow_the_umask(image_folder, tiny_checkpoint, tmp_path, one_thread):
    out = tmp_path / "sweep"
    previous = os.umask(0o027)
    try:
        assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--save-images")) == 0
    finally:
        os.umask(previous)
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.name if p.suffix == ".json" else p.suffix for p in files}
    assert kinds == {"manifest.json", "selection.json", ".safetensors", ".png"}
    assert {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.relative_to(out).as_posix(): 0o640 for p in files}  # 0o666 less the umask, like any new file


def test_sweep_config_options_come_from_its_fields(monkeypatch):
    parser = cli.build_parser()
    (sweep,) = [a.choices["sweep"] for a in parser._actions if getattr(a, "choices", None) and "sweep" in a.choices]
    actions = {a.dest: a for a in sweep._actions}
    for f in config_options():
        if f.name == "traversal":
            continue
        assert actions[f.name].help == f.metadata["help"] and actions[f.name].default == f.default, f.name

    class Captured(Exception):
        pass

    def capture(config, *args, **kwargs):
        raise Captured(config)

    monkeypatch.setattr(lst_fast.sweep, "run_sweep", capture)
    argv = ["sweep", "--model", "m", "--data", "embedded", "--out", "x", "--mean", "0.1", "0.2", "0.3", "--std", "1",
            "1", "2", "--num-samples", "9", "--no-triangles", "--triangle-grid", "4", "--save-images", "--iters", "3",
            "--no-pretrained", "--precision", "bf16", "--log-every", "2", "--image-size", "64", "--num-classes", "7"]
    with pytest.raises(Captured) as got:
        cli.main(argv)
    want = SweepConfig(model="m", data="embedded", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 2.0), num_samples=9,
                       triangles=False, triangle_grid=4, save_images=True, iters=3, pretrained=False, precision="bf16",
                       log_every=2, image_size=64, num_classes=7)
    assert got.value.args[0] == want
    assert {f.name for f in SWEEP_SETTINGS} <= set(actions)
    with pytest.raises(SystemExit):  # a field's check refuses it before any work
        parser.parse_args(["sweep", "--model", "m", "--data", "embedded", "--out", "x", "--image-size", "4"])


def test_lpips_column_with_local_alexnet_weights(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    """LPIPS runs on given AlexNet weights (here a seeded random AlexNet's features: the values are meaningless,
    the wiring is real); a folder that computes LPIPS cannot be continued where LPIPS cannot run."""
    import torchvision

    from lst_fast import data, metrics
    from lst_fast.sweep.store import SweepStore

    torch.manual_seed(0)
    features = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    weights = tmp_path / "alexnet.pth"
    torch.save(features, weights)
    out = tmp_path / "sweep"
    args = _tiny_sweep_args(image_folder, tiny_checkpoint, out, "--no-triangles")
    args[args.index("--image-size") + 1] = "64"  # AlexNet needs more than 16x16 pixels
    assert cli.main(args + ["--lpips-weights", str(weights)]) == 0
    assert "Note" not in capsys.readouterr().out

    unit = load_file(str(out / "units" / "traverse" / "r000_b00000.safetensors"))
    selection = SweepStore(out).read_json(out / "selection.json")
    dataset = data.open_dataset(f"folder:{image_folder}", image_size=64)
    tgts = torch.stack([dataset[selection["indices"][t]][0] for t in unit["target"].tolist()])
    torch.testing.assert_close(unit["dist_lpips"], metrics.lpips(unit["outputs"], tgts, weights=weights))
    assert cli.main(["tables", str(out)]) == 0
    assert "| LPIPS |" in capsys.readouterr().out

    assert cli.main(args) == 2  # the same sweep, now without the weights
    assert "computes LPIPS, whose AlexNet weights are not on this machine" in capsys.readouterr().err
