"""The ``lst-fast`` command line: help for every option, bad input rejected before any work, tables output,
saved images, and a small sweep of the offline model."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lst_fast import cli


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
    for k, (s, t) in enumerate(zip(unit["source"].tolist(), unit["target"].tolist())):
        png = np.asarray(Image.open(out / "images" / "r001" / f"{s:05d}_to_{t:05d}.png"))
        expected = unit["outputs"][k].permute(1, 2, 0).numpy() * 255
        assert np.abs(png.astype(float) - expected).max() <= 0.5 + 1e-3  # 8-bit rounding only

    assert cli.main(["tables", str(out)]) == 0
    markdown = capsys.readouterr().out
    assert "| test_efficientnet |" in markdown and "covers 6 of 6 pairs (2 of 2 traversal units finished)" in markdown
    assert "Table 2" not in markdown
    assert cli.main(["tables", str(out), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("model,data,schedule,pairs,pairs_total,l2_mean,l2_std")


def test_offline_model_sweep_keeps_confident_photos(tmp_path, capsys, one_thread):
    """The offline EfficientNet on the bundled photos: only chelsea (p 0.38), coffee (0.95) and rocket (0.32)
    have a top-1 confidence above 0.3 (see shared/EMBEDDED.md)."""
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


def test_plot_of_an_empty_sweep_is_an_error(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert cli.main(_tiny_sweep_args(image_folder, tiny_checkpoint, out, "--phase", "triangles", "--wait", "0")) == 3
    capsys.readouterr()
    assert cli.main(["plot", str(out)]) == 2
    assert "has no finished LST unit yet" in capsys.readouterr().err


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
