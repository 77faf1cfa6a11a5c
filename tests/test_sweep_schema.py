"""The unit schema of a sweep (lst_fast.sweep.schema) and the single sources of distance names: what a unit file
may hold, how a unit is checked before it is written, and how readers get optional fields."""

import pytest
import torch

from lst_fast import metrics
from lst_fast.sweep import evaluation, schema


def traversal_unit(batch: int = 3, **changes) -> dict[str, torch.Tensor]:
    """A traversal unit's tensors as the runner writes them (paper schedule, 2 recorded points)."""
    pair = {"dtype": torch.float32}
    tensors = {
        "source": torch.arange(batch), "target": torch.arange(batch).flip(0), "labels": torch.zeros(batch).long(),
        "target_labels": torch.ones(batch).long(), "valid": torch.ones(batch, dtype=torch.bool),
        "init_conf": torch.rand(batch, **pair), "final_conf": torch.rand(batch, **pair),
        "final_target_conf": torch.rand(batch, **pair), "accepted": torch.zeros(batch).long(),
        "evaluations": torch.full((batch,), 5), "final_step_size": torch.full((batch,), 0.01, dtype=torch.float64),
        "outputs": torch.rand(batch, 3, 8, 8), "dist_l2": torch.rand(batch), "path_iters": torch.tensor([0, 2]),
        "path_conf": torch.rand(batch, 2), "path_target_conf": torch.rand(batch, 2),
    }
    return tensors | changes


def test_distance_names_have_one_source():
    assert metrics.PIXEL_DISTANCES + metrics.LEARNED_DISTANCES == tuple(metrics.DISTANCES)
    assert list(schema.DISTANCE_FIELDS) == list(metrics.DISTANCES)
    assert [f.name for f in schema.DISTANCE_FIELDS.values()] == [f"dist_{d}" for d in metrics.DISTANCES]
    assert set(schema.DISTANCE_TITLES) == set(metrics.DISTANCES)


def test_a_new_sweep_without_lpips_weights_takes_the_pixel_distances(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    distances, note = evaluation.choose_distances()
    assert distances == ("l2", "linf", "ssim") and "LPIPS left out" in note


def test_pack_accepts_a_unit_as_the_runner_writes_it_with_or_without_optional_fields():
    unit = traversal_unit()
    assert schema.TRAVERSE.pack(unit) == unit
    older = {k: v for k, v in unit.items() if k not in ("evaluations", "final_step_size", "final_target_conf")}
    schema.TRAVERSE.pack(older)  # units written before lst_fast recorded them
    assert schema.EVALUATIONS.of(older) is None and torch.equal(schema.VALID.of(older), unit["valid"])
    with pytest.raises(KeyError, match="unit lacks its field 'outputs'"):
        schema.OUTPUTS.of({k: v for k, v in older.items() if k != "outputs"})


@pytest.mark.parametrize("change, message", [
    ({"dist_l3": torch.rand(3)}, r"unknown \['dist_l3'\]"),
    ({"valid": None}, r"missing \['valid'\]"),
    ({"evaluations": torch.full((3,), 5.0)}, "evaluations must be torch.int64 of shape \\(B\\)"),
    ({"outputs": torch.rand(3, 8, 8)}, "outputs must be torch.float32 of shape \\(B, C, H, W\\)"),
    ({"dist_l2": torch.rand(4)}, "dist_l2: B is 4 here but 3 in an earlier field"),
    ({"path_conf": torch.rand(3, 5)}, "path_conf: L is 5 here but 2 in an earlier field"),
])
def test_pack_refuses_what_the_schema_does_not_list(change, message):
    unit = {k: v for k, v in traversal_unit(**change).items() if v is not None}
    with pytest.raises(ValueError, match=message):
        schema.TRAVERSE.pack(unit)


def test_every_field_is_described_and_table_columns_have_titles():
    for unit_schema in schema.SCHEMAS.values():
        names = [f.name for f in unit_schema.fields]
        assert len(names) == len(set(names))
        for f in unit_schema.fields:
            assert f.meaning and f.describe().startswith(f"{f.name}: ")
            assert (f.column is None) == (f.title is None), f.name
    assert [f.column for f in schema.TRIANGLES.columns()] == ["sources", "p_src", "mean", "frac_0.0", "frac_0.1",
                                                              "frac_0.2", "frac_0.3", "edge_mean"]
    assert [f.title for f in schema.TRAVERSE.columns()] == ["pairs", "evaluations/pair", "L2/sqrt(D)", "Linf", "SSIM",
                                                            "LPIPS"]
