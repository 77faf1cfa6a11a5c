"""The offline demo (main job of the README) end to end, with few iterations."""

import csv
import json

from lst_fast.cli import main


def test_demo_writes_images_tables_and_grid(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "3", "--photos", "chelsea", "coffee", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "chelsea ->" in printed and str(out.resolve()) in printed
    assert sorted(p.name for p in (out / "images").iterdir()) == ["chelsea_to_coffee.png", "coffee_to_chelsea.png"]
    assert (out / "grid.png").stat().st_size > 10_000
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["target"]) for r in rows] == [("chelsea", "coffee"), ("coffee", "chelsea")]
    assert {r["label_name"] for r in rows} == {"tiger cat", "espresso"}
    summary = json.loads((out / "results.json").read_text())
    assert summary["iters"] == 3 and len(summary["pairs"]) == 2
    for row in summary["pairs"]:
        assert row["init_conf"] - row["final_conf"] < 0.2
        assert 0 < row["l2_to_target"] < 1
    assert (out / "interpolation.png").is_file() and not list(out.glob("triangle_*"))  # two photos: no triangle


def test_demo_with_one_photo_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "1", "--photos", "chelsea", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "lst-fast demo: error: at least 2 images are needed (every ordered pair of them runs LST), got " \
                  "['chelsea']\n"
    assert not out.exists()
