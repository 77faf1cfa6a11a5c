"""Data sets of a sweep: spec parsing, ImageNet-style folders, CIFAR-10, plain folders, the bundled photos,
and loading groups of images in worker processes."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lst_fast import data


def _save(path, rng, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def test_parse_data_spec(tmp_path):
    assert data.parse_data_spec("embedded") == data.DataSpec("embedded")
    spec = data.parse_data_spec(f"folder:{tmp_path}")
    assert spec.kind == "folder" and spec.root == tmp_path.resolve()
    assert str(spec) == f"folder:{tmp_path.resolve()}"


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("imagenette", ValueError, "unknown data 'imagenette'"),
        ("imagenet", ValueError, "needs a folder"),
        ("embedded:/x", ValueError, "takes no folder"),
        ("cifar10:/no/such/folder", FileNotFoundError, "does not exist"),
        (3, TypeError, "data must be a string"),
    ],
)
def test_parse_data_spec_rejects(text, error, match):
    with pytest.raises(error, match=match):
        data.parse_data_spec(text)


def test_folder_dataset_matches_preprocess(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [_save(tmp_path / "b.png", rng, (60, 40)), _save(tmp_path / "sub" / "a.png", rng, (30, 70))]
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = data.open_dataset(f"folder:{tmp_path}", image_size=32)
    assert len(dataset) == 2  # sorted by path: b.png, sub/a.png; the text file is ignored
    for k, array in enumerate(arrays):
        image, label = dataset[k]
        assert label == data.UNLABELLED
        expected = data.preprocess(array, resize=round(32 * 256 / 224), crop=32)
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert image.shape == (3, 32, 32)


def test_default_image_size_is_imagenet_evaluation(tmp_path):
    _save(tmp_path / "x.png", np.random.default_rng(2), (300, 260))
    image, _ = data.open_dataset(f"folder:{tmp_path}")[0]
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
    assert data.crop_and_resize(224) == (256, 224)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        data.open_dataset(f"folder:{tmp_path}")


def test_imagenet_class_folders_use_imagenet_indices(tmp_path):
    rng = np.random.default_rng(3)
    # Only two classes present: their labels must still be the ImageNet-1k indices, not 0 and 1.
    _save(tmp_path / "val" / "n01443537" / "x1.JPEG", rng)  # 1 goldfish
    _save(tmp_path / "val" / "n01443537" / "x2.JPEG", rng)
    _save(tmp_path / "val" / "n15075141" / "y.JPEG", rng)  # 999 toilet tissue
    dataset = data.open_dataset(f"imagenet:{tmp_path}", image_size=32)  # ROOT/val layout
    assert [dataset[i][1] for i in range(len(dataset))] == [1, 1, 999]


def test_imagenet_flat_validation_folder(tmp_path):
    rng = np.random.default_rng(4)
    _save(tmp_path / "ILSVRC2012_val_00000001.JPEG", rng)  # label 65 in the official ground truth
    _save(tmp_path / "ILSVRC2012_val_00000002.JPEG", rng)  # label 970
    dataset = data.open_dataset(f"imagenet:{tmp_path}", image_size=32)
    assert [dataset[0][1], dataset[1][1]] == [65, 970]


def test_imagenet_rejects_other_layouts(tmp_path):
    _save(tmp_path / "cats" / "a.png", np.random.default_rng(5))
    with pytest.raises(ValueError, match="'cats' is not the WordNet id"):
        data.open_dataset(f"imagenet:{tmp_path}")
    with pytest.raises(ValueError, match="not an ImageNet folder"):
        _save(tmp_path / "flat" / "photo.png", np.random.default_rng(5))
        data.open_dataset(f"imagenet:{tmp_path / 'flat'}")


def _write_cifar(root, images, labels):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # the python version stores CHW rows
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": flat, "labels": list(labels)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_test_split(tmp_path, monkeypatch):
    # torchvision checks the MD5 sums of the real archive's files; these hand-made files cannot match them.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _write_cifar(tmp_path, images, [3, 1, 4])
    dataset = data.open_dataset(f"cifar10:{tmp_path}")
    assert len(dataset) == 3
    image, label = dataset[2]
    assert label == 4 and image.shape == (3, 32, 32)
    torch.testing.assert_close(image, torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    # the folder itself may be named too, and a size other than 32 resizes
    resized = data.open_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", image_size=16)
    assert resized[0][0].shape == (3, 16, 16)


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 under"):
        data.open_dataset(f"cifar10:{tmp_path}")


def test_embedded_dataset_is_the_bundled_photos():
    dataset = data.open_dataset("embedded")
    assert len(dataset) == len(data.EMBEDDED_PHOTOS)
    image, label = dataset[1]
    expected, _ = data.load_embedded_photos([data.EMBEDDED_PHOTOS[1]])
    assert label == data.UNLABELLED
    torch.testing.assert_close(image, expected[0], rtol=0, atol=0)


def test_group_loader_in_worker_processes(image_folder):
    dataset = data.open_dataset(f"folder:{image_folder}", image_size=16)
    groups = [[3, 1, 4], [1, 5]]
    batches = list(data.group_loader(dataset, groups, workers=2))
    assert len(batches) == 2
    for group, (images, labels) in zip(groups, batches):
        torch.testing.assert_close(images, torch.stack([dataset[i][0] for i in group]), rtol=0, atol=0)
        assert labels.tolist() == [data.UNLABELLED] * len(group)


def test_group_loader_rejects_bad_workers(image_folder):
    dataset = data.open_dataset(f"folder:{image_folder}", image_size=16)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        data.group_loader(dataset, [[0]], workers=-1)


# --- a folder given alone: its kind is detected ---------------------------------------------------------------


def test_bare_folder_kind_is_detected(tmp_path):
    rng = np.random.default_rng(7)
    _save(tmp_path / "classes" / "val" / "n01443537" / "a.JPEG", rng)
    (tmp_path / "classes" / "val" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    _save(tmp_path / "flat" / "ILSVRC2012_val_00000001.JPEG", rng)
    _save(tmp_path / "plain" / "cats" / "a.png", rng)
    _write_cifar(tmp_path / "cifar", rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), [3])
    expected = {"classes": ("imagenet", "ImageNet class folders in val/ (1 folders"),
                "flat": ("imagenet", "flat ImageNet validation images (1 files"),
                "plain": ("folder", "its folders (cats) are not WordNet ids"), "cifar": ("cifar10", "CIFAR-10")}
    for name, (kind, said) in expected.items():
        spec = data.parse_data_spec(str(tmp_path / name))
        assert (spec.kind, spec.root) == (kind, (tmp_path / name).resolve()) and said in spec.detected, name
        assert spec == data.parse_data_spec(f"{kind}:{tmp_path / name}")  # the same data set as the explicit kind
        assert data.parse_data_spec(f"{kind}:{tmp_path / name}").detected is None
    assert [label for _, label in data.open_dataset(str(tmp_path / "classes"), image_size=16)] == [1]
    assert data.open_dataset(str(tmp_path / "flat"), image_size=16)[0][1] == 65


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("/no/such/folder", FileNotFoundError, "data folder '/no/such/folder' does not exist"),
        ("imagenette", ValueError, "unknown data 'imagenette': expected a folder, 'embedded'"),
    ],
)
def test_bare_folder_that_is_not_there(text, error, match):
    with pytest.raises(error, match=match):
        data.parse_data_spec(text)


def test_bare_file_is_refused(tmp_path):
    _save(tmp_path / "a.png", np.random.default_rng(8))
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        data.parse_data_spec(str(tmp_path / "a.png"))


# --- unreadable files, pixel modes, small images ----------------------------------------------------------------


def _bad_files(folder, rng):
    """A text file named .jpg and a JPEG cut in half, next to a good image: their paths."""
    good = folder / "good.jpg"
    _save(good, rng, (64, 64))
    text = folder / "x.jpg"
    text.write_text("not an image, despite its name\n")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return good, text, truncated


def test_unreadable_files_are_named(tmp_path):
    good, text, truncated = _bad_files(tmp_path, np.random.default_rng(9))
    dataset = data.open_dataset(f"folder:{tmp_path}", image_size=16)
    assert dataset.files == [good, truncated, text]
    assert dataset[0][0].shape == (3, 16, 16)
    with pytest.raises(data.UnreadableImage, match=f"cannot read image '{text}': not an image file") as err:
        dataset[2]
    assert err.value.file == str(text)
    with pytest.raises(data.UnreadableImage, match=f"cannot read image '{truncated}': image file is truncated"):
        dataset[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_report_unreadable_files_in_the_main_process(tmp_path, workers):
    good, text, truncated = _bad_files(tmp_path, np.random.default_rng(10))
    dataset = data.open_dataset(f"folder:{tmp_path}", image_size=16)
    groups = list(data.readable_groups(dataset, [[2, 0, 1], [0]], workers=workers))
    assert [g.indices for g in groups] == [[0], [0]]
    assert [(i, f) for i, f, _ in groups[0].unreadable] == [(2, str(text)), (1, str(truncated))]
    torch.testing.assert_close(groups[0].images, dataset[0][0][None], rtol=0, atol=0)
    with pytest.raises(data.UnreadableImage) as err:  # whole groups: the first unreadable file, one line
        list(data.group_loader(dataset, [[0], [0, 2]], workers=workers))
    assert str(err.value) == f"cannot read image '{text}': " + err.value.reason and "\n" not in str(err.value)


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert np.array(image.convert("RGB")).min() == 255  # what PIL's own conversion makes of it: white
    image, _ = data.open_dataset(f"folder:{tmp_path}", image_size=32)[0]
    torch.testing.assert_close(image, torch.full((3, 32, 32), 40000 / 65535), rtol=0, atol=1e-6)  # 0.61036...


@pytest.mark.parametrize("mode, suffix", [("I;16B", ".tif"), ("I", ".tif"), ("I;16", ".png")])
def test_sixteen_bit_pixel_values(tmp_path, mode, suffix):
    values = np.array([[0, 1, 255], [256, 32768, 65535]], dtype=np.int64)
    path = tmp_path / f"grey{suffix}"
    image = Image.new(mode, (3, 2))
    image.putdata(values.ravel().tolist())
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
        pixels = data.image_pixels(reopened)
    torch.testing.assert_close(pixels, torch.from_numpy(values / 65535).float()[None], rtol=0, atol=1e-7)


def _palette_image():
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * 759)
    image.putdata([1, 2, 1, 2, 0, 0, 2, 1])
    return image


def test_palette_la_cmyk_and_bilevel_files(tmp_path):
    """Each saved as a real file and read back; expected RGB values computed by hand."""
    la = Image.new("LA", (4, 2), (100, 7))
    cmyk = Image.new("CMYK", (4, 2), (10, 200, 30, 40))
    bilevel = Image.new("1", (4, 2), 1)
    c, m, y, k = (10, 200, 30, 40)
    cmyk_rgb = [round(255 * (1 - v / 255) * (1 - k / 255)) for v in (c, m, y)]  # 207, 46, 190
    palette = [[10, 20, 30], [200, 100, 50], [10, 20, 30], [200, 100, 50]]
    cases = {
        "palette.png": (_palette_image(), [palette, [[0, 0, 0], [0, 0, 0], [200, 100, 50], [10, 20, 30]]]),
        "grey_alpha.png": (la, [[[100, 100, 100]] * 4] * 2),  # alpha dropped
        "cmyk.tif": (cmyk, [[cmyk_rgb] * 4] * 2),
        "bilevel.png": (bilevel, [[[255, 255, 255]] * 4] * 2),
    }
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as reopened:
            assert reopened.mode == image.mode, name
            pixels = data.image_pixels(reopened)
        assert pixels.dtype == np.uint8 and pixels.tolist() == expected, name


def test_palette_with_alpha_and_float_images():
    pa = Image.new("PA", (2, 1), (2, 50))
    pa.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * 759)
    assert data.image_pixels(pa).tolist() == [[[200, 100, 50]] * 2]
    floats = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    assert data.image_pixels(floats).tolist() == [[[0.0, 0.25, 1.0]]]


@pytest.mark.parametrize(
    "image, match",
    [
        (Image.fromarray(np.array([[0.0, 2.5]], dtype=np.float32)), r"float pixels in \[0.0, 2.5\]"),
        (Image.new("LAB", (2, 2), (50, 128, 128)), "pixel mode 'LAB' has no conversion"),
    ],
)
def test_pixels_without_a_conversion_are_refused(tmp_path, image, match):
    with pytest.raises(ValueError, match=match):
        data.image_pixels(image)
    image.save(tmp_path / "odd.tif")  # in a file: refused by name
    with pytest.raises(data.UnreadableImage, match=f"cannot read image '{tmp_path / 'odd.tif'}': {match}"):
        data.open_dataset(f"folder:{tmp_path}", image_size=16)[0]


def test_small_image_is_read_with_one_warning(tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((10, 10, 3), 100, dtype=np.uint8)).save(small)
    _save(tmp_path / "large.png", np.random.default_rng(11), (120, 130))  # not below half of 224: no warning
    dataset = data.open_dataset(f"folder:{tmp_path}")
    with pytest.warns(data.ImageWarning) as caught:
        image, _ = dataset[1]
        dataset[1]  # read again (as every round does): no second warning
        dataset[0]
        list(data.group_loader(dataset, [[0, 1], [1]], workers=2))  # read in worker processes: still none
    assert [str(w.message) for w in caught] == [
        f"image '{small}' is only 10x10 pixels: upscaled 25.6x for the 224x224 model input"]
    torch.testing.assert_close(image, torch.full((3, 224, 224), 100 / 255), rtol=0, atol=1e-6)


def test_small_image_warning_comes_from_the_main_process(tmp_path):
    """Read only in worker processes, the warning is still given (once) here."""
    Image.fromarray(np.full((12, 9, 3), 7, dtype=np.uint8)).save(tmp_path / "tiny.png")
    dataset = data.open_dataset(f"folder:{tmp_path}", image_size=64)
    with pytest.warns(data.ImageWarning) as caught:
        list(data.group_loader(dataset, [[0], [0], [0]], workers=2))
    assert [str(w.message) for w in caught] == [
        f"image '{tmp_path / 'tiny.png'}' is only 9x12 pixels: upscaled 8.1x for the 64x64 model input"]


# --- loader workers that fail: always an error in the main process, never a hang ----------------------------------

WORKER_FAILS = """
import os, sys
import torch
from torch.utils.data import Dataset, get_worker_info
from lst_fast import data

how = sys.argv[1]


class Fails(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if get_worker_info() is not None and index == 2:
            if how.startswith("exit"):
                os._exit(int(how[4:]))
        return torch.full((3, 4, 4), float(index)), index


def no_shared_memory(*args, **kwargs):  # what torch raises when /dev/shm is full
    raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2>: No space left on device (28)")


if how == "shm":
    torch.UntypedStorage._share_fd_cpu_ = torch.UntypedStorage._share_filename_cpu_ = no_shared_memory
try:
    for images, labels in data.group_loader(Fails(), [[0, 1], [2], [3]], workers=2, timeout=float(sys.argv[2])):
        print("loaded", labels.tolist(), flush=True)
except RuntimeError as err:  # as lst-fast does: torch may raise a worker's death wherever this process is
    failure = err if isinstance(err, data.LoaderError) else data.loader_failure(err)
    if failure is None:
        raise
    print("LoaderError:", failure)
"""


@pytest.mark.parametrize(
    "how, timeout, said",
    [
        ("exit1", 300, "a data loading worker died (DataLoader worker (pid(s) "),  # noticed at once (SIGCHLD)
        ("exit0", 3, "a data loading worker died (DataLoader worker (pid(s) "),  # exit status 0: at the timeout
        ("shm", 300, "could not put 2 images (0 MB) into shared memory (unable to allocate shared memory(shm)"),
    ],
)
def test_loader_worker_failure_is_one_line_in_the_main_process(tmp_path, how, timeout, said):
    script = tmp_path / "fails.py"
    script.write_text(WORKER_FAILS)
    run = subprocess.run([sys.executable, str(script), how, str(timeout)], capture_output=True, text=True,
                         timeout=120)  # a regression hangs: the timeout turns it into a failure
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines[-1]) < 400, run.stdout + run.stderr
    assert lines[-1].startswith("LoaderError: ") and said in lines[-1], run.stdout + run.stderr
    assert "loaded [2]" not in run.stdout


# --- bad files in a sweep: skipped, named once, recorded; the same on resume and in every shard ------------------


def _sweep_args(folder, tiny_checkpoint, out, *extra):
    path, arch, classes = tiny_checkpoint
    return ["sweep", "--model", arch, "--checkpoint", str(path), "--num-classes", str(classes), "--data", str(folder),
            "--out", str(out), "--image-size", "16", "--num-samples", "12", "--rounds", "2", "--batch-size", "5",
            "--iters", "1", "--min-conf", "0", "--no-progress", "--no-triangles", *extra]


def _stamps(out):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((out / "units").rglob("*.safetensors"))}


def test_sweep_skips_unreadable_files_and_records_them(image_folder, tiny_checkpoint, tmp_path, capsys, one_thread):
    import json
    import shutil

    from lst_fast import cli
    from lst_fast.sweep import run_sweep

    folder = tmp_path / "photos"
    shutil.copytree(image_folder, folder)  # 10 images
    (folder / "x.jpg").write_text("not an image\n")
    (folder / "cut.jpg").write_bytes((folder / "img_00.jpg").read_bytes()[:300])
    bad = {str(folder / "x.jpg"), str(folder / "cut.jpg")}

    out = tmp_path / "sweep"
    assert cli.main(_sweep_args(folder, tiny_checkpoint, out)) == 0  # default --workers 2
    err = capsys.readouterr().err
    assert f"lst-fast sweep: --data {folder}: plain images without labels" in err
    for file in bad:  # named once each, not once per worker
        assert err.count(f"skipped {file!r}, which cannot be read: ") == 1, err
    selection = json.loads((out / "selection.json").read_text())
    assert {s["file"] for s in selection["skipped"]} == bad and selection["scanned"] == 12
    files = data.open_dataset(str(folder)).files
    assert sorted(selection["indices"]) == [i for i, file in enumerate(files) if str(file) not in bad]
    assert cli.main(["info", str(out)]) == 0
    assert "skipped image files: 2 could not be read (listed in selection.json)" in capsys.readouterr().out

    finished = _stamps(out)
    assert cli.main(_sweep_args(folder, tiny_checkpoint, out)) == 0  # resumed: nothing redone, nothing said again
    resumed = capsys.readouterr()
    assert "0 units (0 pairs" in resumed.out and "skipped" not in resumed.err
    assert _stamps(out) == finished and json.loads((out / "selection.json").read_text()) == selection

    # a shard of its own (another machine, say) chooses the same images, skipping the same files
    other = tmp_path / "shard"
    run_sweep(cli.sweep_config(cli.build_parser().parse_args(_sweep_args(folder, tiny_checkpoint, other))), other,
              shard="1/2", workers=0, progress=False)
    assert json.loads((other / "selection.json").read_text()) == selection
    capsys.readouterr()

    # a selected file that becomes unreadable stops the other shard in one line; its finished units stay
    first_shard = _stamps(other)
    dataset = data.open_dataset(str(folder))
    victim = dataset.files[selection["indices"][0]]
    victim.write_text("overwritten\n")
    assert cli.main(_sweep_args(folder, tiny_checkpoint, other, "--shard", "0/2", "--workers", "0")) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"lst-fast sweep: error: cannot read image '{victim}'")
    assert _stamps(other) == first_shard


def test_strict_images_stops_at_the_first_unreadable_file(image_folder, tiny_checkpoint, tmp_path, capsys):
    import shutil

    from lst_fast import cli

    folder = tmp_path / "photos"
    shutil.copytree(image_folder, folder)
    (folder / "x.jpg").write_text("not an image\n")
    out = tmp_path / "sweep"
    assert cli.main(_sweep_args(folder, tiny_checkpoint, out, "--strict-images", "--workers", "0")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"lst-fast sweep: error: cannot read image '{folder / 'x.jpg'}': not an image file that PIL can "
                       "read (unknown format, or not an image at all)")
    assert not (out / "manifest.json").exists() and not (out / "selection.json").exists()
