"""What a sweep's unit files hold: every tensor of a unit, its dtype and shape, and the table column it feeds.

A traversal unit (one round x batch of B pairs) and a triangle unit (one batch of sources) are safetensors
files of the tensors listed in :data:`TRAVERSE` and :data:`TRIANGLES`. The runner writes units through
:meth:`UnitSchema.pack`, which refuses a tensor the schema does not list or one of another dtype or shape;
tables, evaluation and figures read fields through :meth:`UnitField.of`. A field that is not ``required``
may be absent: it is recorded only in some sweeps (``when``), or units written by an older lst_fast lack it,
and readers then get None. The unit's wall time is not a tensor: it is the ``seconds`` of the unit's
provenance (:mod:`lst_fast.sweep.provenance`).

Shapes are written with symbols that stand for the same length in every field of one unit: B pairs, C, H, W
the images' channels, height and width, L points recorded along the path, T triangles, S sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from lst_fast import metrics
from lst_fast.geometry import TABLE2_COLUMNS

ALWAYS = "every unit"
NEWER = "units written since lst_fast records it (older units of the same format lack it and still count)"


@dataclass(frozen=True)
class UnitField:
    """One tensor of a unit file."""

    name: str  # its key in the file
    dtype: torch.dtype
    shape: tuple[str, ...]  # symbols, see the module's docstring
    meaning: str
    when: str = ALWAYS  # which units hold it
    column: str | None = None  # the key of the table column it feeds (CSV column stem)
    title: str | None = None  # that column's title in ``lst-fast tables``

    @property
    def required(self) -> bool:
        return self.when == ALWAYS

    def of(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """This field of a unit's ``tensors``; None when an optional field is absent.

        Raises:
            KeyError: a required field is absent (the unit was not written from this schema).
        """
        if self.name in tensors:
            return tensors[self.name]
        if self.required:
            raise KeyError(f"unit lacks its field {self.name!r} ({self.meaning})")
        return None

    def describe(self) -> str:
        """One line for documentation: name, dtype, shape and meaning."""
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.name}: {dtype} ({', '.join(self.shape)}) {self.meaning}; in {self.when}"


@dataclass(frozen=True)
class UnitSchema:
    """The fields of one kind of unit file."""

    kind: str
    fields: tuple[UnitField, ...]

    def __getitem__(self, name: str) -> UnitField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"a {self.kind} unit has no field {name!r}; its fields are {[f.name for f in self.fields]}")

    def pack(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of one unit, checked against the schema (names, dtypes, shapes), ready to be written.

        Raises:
            ValueError: a tensor the schema does not list, a required field missing, or a tensor of another
                dtype or shape than its field's (a length symbol must mean one length across the unit).
        """
        unknown = sorted(set(tensors) - {f.name for f in self.fields})
        missing = [f.name for f in self.fields if f.required and f.name not in tensors]
        if unknown or missing:
            raise ValueError(f"a {self.kind} unit's tensors do not match its schema: unknown {unknown}, "
                             f"missing {missing}")
        lengths: dict[str, int] = {}
        for f in self.fields:
            value = tensors.get(f.name)
            if value is None:
                continue
            if value.dtype != f.dtype or value.dim() != len(f.shape):
                raise ValueError(f"{self.kind} unit field {f.name} must be {f.dtype} of shape ({', '.join(f.shape)}), "
                                 f"got {value.dtype} of shape {tuple(value.shape)}")
            for symbol, length in zip(f.shape, value.shape):
                if lengths.setdefault(symbol, length) != length:
                    raise ValueError(f"{self.kind} unit field {f.name}: {symbol} is {length} here but "
                                     f"{lengths[symbol]} in an earlier field")
        return dict(tensors)

    def columns(self) -> tuple[UnitField, ...]:
        """The fields that feed a table column, in table order."""
        return tuple(f for f in self.fields if f.column is not None)


def _pair(name, dtype, meaning, **more) -> UnitField:
    return UnitField(name, dtype, ("B",), meaning, **more)


# --- traversal units (units/traverse/rRRR_bBBBBB.safetensors) --------------------------------------------------

DISTANCE_TITLES = {"l2": "L2/sqrt(D)", "linf": "Linf", "ssim": "SSIM", "lpips": "LPIPS"}  # Table 1's titles

SOURCE = _pair("source", torch.int64, "the pair's source: its position in the sweep's selection")
TARGET = _pair("target", torch.int64, "the pair's target: its position in the sweep's selection")
LABELS = _pair("labels", torch.int64, "the source's class y")
TARGET_LABELS = _pair("target_labels", torch.int64, "the target's class")
VALID = _pair("valid", torch.bool, "whether the model predicted y on the source, i.e. LST ran (Table 1 counts "
              "only these)", column="pairs", title="pairs")
INIT_CONF = _pair("init_conf", torch.float32, "source-class confidence p(source)[y] before LST")
FINAL_CONF = _pair("final_conf", torch.float32, "source-class confidence p(output)[y] after LST (as the loop "
                   "computed it, in the sweep's precision)")
FINAL_TARGET_CONF = _pair("final_target_conf", torch.float32, "target-class confidence of the LST output, in "
                          "float32", when=NEWER)
ACCEPTED = _pair("accepted", torch.int64, "accepted steps")
EVALUATIONS = _pair("evaluations", torch.int64, "model evaluations of the traversal: its start point and every "
                    "candidate (0 for invalid pairs)", when=NEWER, column="evaluations", title="evaluations/pair")
FINAL_STEP_SIZE = _pair("final_step_size", torch.float64, "step size of the pair's last candidate (the paper's "
                        "schedule: step_size; 0 for invalid pairs)", when=NEWER)
OUTPUTS = UnitField("outputs", torch.float32, ("B", "C", "H", "W"), "the LST outputs, pixels in [0, 1]")
DISTANCE_FIELDS = {
    name: _pair(f"dist_{name}", torch.float32, f"{DISTANCE_TITLES[name]} between the LST output and its target",
                when="sweeps that chose this distance (the manifest's distances)", column=name,
                title=DISTANCE_TITLES[name])
    for name in metrics.DISTANCES
}
PATH_ITERS = UnitField("path_iters", torch.int64, ("L",), "iterations at which the path was recorded",
                       when="the paper's schedule")
PATH_CONF = UnitField("path_conf", torch.float32, ("B", "L"), "source-class confidence along the path",
                      when="the paper's schedule")
PATH_TARGET_CONF = UnitField("path_target_conf", torch.float32, ("B", "L"), "target-class confidence along the "
                             "path", when="the paper's schedule")

TRAVERSE = UnitSchema("traverse", (
    SOURCE, TARGET, LABELS, TARGET_LABELS, VALID, INIT_CONF, FINAL_CONF, FINAL_TARGET_CONF, ACCEPTED, EVALUATIONS,
    FINAL_STEP_SIZE, OUTPUTS, *DISTANCE_FIELDS.values(), PATH_ITERS, PATH_CONF, PATH_TARGET_CONF,
))


# --- triangle units (units/triangles/bBBBBB.safetensors) ------------------------------------------------------

# The statistics of one triangle (algorithm §5); Table 2 averages the first seven per source and edge_min is
# the per-source minimum.
TRIANGLE_STATS = (*TABLE2_COLUMNS, "edge_min")
TRIANGLE_TITLES = {
    "p_src": "p(source)", "mean": "mean p", "frac_0.0": "frac d=0", "frac_0.1": "frac d=0.1",
    "frac_0.2": "frac d=0.2", "frac_0.3": "frac d=0.3", "edge_mean": "edge mean", "edge_min": "edge min",
}
TRIANGLE_IDS = {
    "source": "the source of the triangle (position in the selection)",
    "round_a": "the round of its first LST output", "round_b": "the round of its second LST output",
}


def triangle_field(stat: str) -> UnitField:
    """The per-triangle field of ``stat`` (an id of :data:`TRIANGLE_IDS` or a statistic of :data:`TRIANGLE_STATS`)."""
    if stat in TRIANGLE_IDS:
        return UnitField(f"tri_{stat}", torch.int64, ("T",), TRIANGLE_IDS[stat])
    return UnitField(f"tri_{stat}", torch.float32, ("T",), f"{TRIANGLE_TITLES[stat]} of the triangle")


def source_field(stat: str) -> UnitField:
    """The per-source field of ``stat`` ("source" or a statistic of :data:`TRIANGLE_STATS`); sources ascending."""
    if stat == "source":
        return UnitField("src_source", torch.int64, ("S",), "the batch's sources with a valid triangle, ascending",
                         column="sources", title="sources")
    how = "minimum" if stat == "edge_min" else "average"
    in_table = stat in TABLE2_COLUMNS
    return UnitField(f"src_{stat}", torch.float32, ("S",), f"{TRIANGLE_TITLES[stat]}, {how} over the source's "
                     "triangles", column=stat if in_table else None, title=TRIANGLE_TITLES[stat] if in_table else None)


TRIANGLES = UnitSchema("triangles", (
    *(triangle_field(k) for k in (*TRIANGLE_IDS, *TRIANGLE_STATS)),
    *(source_field(k) for k in ("source", *TRIANGLE_STATS)),
))

SCHEMAS = {"traverse": TRAVERSE, "triangles": TRIANGLES}
